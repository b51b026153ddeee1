"""Distil a CIFAR-100 teacher into a student: CE plus one distillation term (plus an optional second).

    python -m standard_classification.train_student --teacher-ckpt save/models/resnet56_vanilla/ckpt_epoch_240.pth \
        --model resnet20 --distill ab --ab_alpha 0.8 --ab_beta 0.3 --kd-weight 64 --data-folder data/cifar100

loss = ce_weight * CE(student, labels) + kd_ratio * D [+ add_weight * A], with D one of
(abkd/classification.py, abkd/feature_distillation.py):
  kd, fkl  T^2 KL(teacher || student) at --kd-temperature (Hinton et al., 2015)
  rkl, jsd, tvd, sfkl, srkl
         T^2 times that divergence of abkd.losses (--jsd-lam, --skew-alpha), kd's convention
  ab     alpha-beta divergence at --kd-temperature, --ab_alpha, --ab_beta, without T^2 (ABKD, Wang et al., ICML 2025)
  dkd    decoupled KD, --tckd-weight TCKD + --nckd-weight NCKD, warm-up --dkd-warmup (Zhao et al., CVPR 2022)
  abdkd  ABKD's DKD: NCKD's KL replaced by the alpha-beta divergence
  ls     KD between z-scored logits (logit standardisation, Sun et al., CVPR 2024)
  abls   the alpha-beta divergence between z-scored logits
  ttm, wttm
         KL(teacher^gamma normalised || student), gamma = --ttm-exponent, WTTM weighted by sum p^gamma
         (Zheng & Yang, ICLR 2024); abttm: ABKD's alpha-beta variant
  dist   DIST's inter- and intra-class Pearson relations at --dist-temperature (Huang et al., NeurIPS 2022)
  crd    contrastive representation distillation with a memory bank (Tian et al., ICLR 2020)
  itrd   information-theoretic representation distillation (Miles et al., ICLR 2022)
and A, with --add-weight (-a) > 0, one of kd, ttm, wttm (--add): ABKD's and RepDistiller's additional
loss, e.g. CRD + KD.

Defaults per term follow the reference code: kd and the other abkd.losses divergences 0.1 CE + 0.9 KD
at T = 4 (RepDistiller); ab, ttm, wttm, abttm 1 CE + --kd-weight (required: ABKD's scripts give it per
pair) at T = 4; dkd/abdkd 1 CE + 1 DKD at T = 4 with mdistiller's per-pair NCKD weight
(DKD_NCKD_WEIGHTS, else 8); ls/abls 0.1 CE + 9 KD at T = 2 (the logit-standardisation recipe); dist
1 CE + 1 DIST at tau = 4; crd 1 CE + 0.8 CRD (RepDistiller's README); itrd 1 CE + 1 ITRD.
The reference's loss weights -r (CE), -b (main term) and -a (additional term) are aliases of
--ce-weight, --kd-ratio (= --kd-weight) and --add-weight.

The teacher is a zoo checkpoint `{"model": state_dict}`, read with weights_only=True; its
architecture is parsed from `<name>_vanilla/...` (or `<name>_best.pth`) or given with --teacher-model.
The CRD/RepDistiller/ABKD spellings (--path_t, --model_s, --model_t, --kd_T, --dkd_alpha, --ttm_l,
--dist_beta, --nce_k, --lambda_corr, ...) are aliases.
Training recipe, outputs and --resume are those of train_teacher (standard_classification/train.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from abkd.classification import ADD_LOSSES, DISTILL_LOSSES, build_distill_loss
from abkd.curriculum import add_curriculum_args, load_ranking, resolve_curriculum_args
from abkd.feature_distillation import FEATURE_LOSSES, build_feature_loss
from abkd.run import Run, parser_defaults
from standard_classification.data import ContrastiveIndices, load_cifar100
from standard_classification.models import build_model, model_dict
from standard_classification.train import RANK_COMMAND, add_training_args, input_fingerprints, ranking_identity, resolve_training_args, train

# (ce_weight, kd_ratio, temperature) when not given. kd: RepDistiller's README (-r 0.1 -a 0.9, kd_T 4).
# ab: ABKD's train_ab.sh (-r 1, -b from the command line: no default). dkd, abdkd: mdistiller's
# CFG.DKD (CE_WEIGHT 1, T 4) and ABKD's train_dkd.sh (-r 1 -b 1). ls, abls: ABKD's train_ls.sh and
# the logit-standardisation recipe (-r 0.1 -b 9, kd_T 2).
# The other abkd.losses divergences take kd's recipe, so that only the divergence changes. ttm, wttm,
# abttm: ABKD's train_ttm.sh (-r 1 -a 0, -b per pair; T only matters for --add kd). dist: ABKD's CLI
# defaults (-r 1, --dist_tau 4; no script). crd: RepDistiller's README (-a 0 -b 0.8, -r default 1).
# itrd: ABKD's CLI (-r 1; no script), weight 1.
DEFAULT_WEIGHTS = {
    "kd": (0.1, 0.9, 4.0), "ab": (1.0, None, 4.0), "dkd": (1.0, 1.0, 4.0), "abdkd": (1.0, 1.0, 4.0),
    "ls": (0.1, 9.0, 2.0), "abls": (0.1, 9.0, 2.0),
    **{name: (0.1, 0.9, 4.0) for name in ("fkl", "rkl", "jsd", "tvd", "sfkl", "srkl")},
    "ttm": (1.0, None, 4.0), "wttm": (1.0, None, 4.0), "abttm": (1.0, None, 4.0), "dist": (1.0, 1.0, 4.0),
    "crd": (1.0, 0.8, 4.0), "itrd": (1.0, 1.0, 4.0),
}  # fmt: skip
METHODS = (*DISTILL_LOSSES, *FEATURE_LOSSES)

# DKD's NCKD weight (the paper's beta) per (teacher, student): mdistiller's configs/cifar100/dkd/*.yaml;
# the pairs not listed use CFG.DKD.BETA = 8. ABKD's train_dkd.sh takes the same weight per pair.
DKD_NCKD_WEIGHTS = {
    ("resnet56", "resnet20"): 2.0, ("resnet110", "resnet32"): 2.0,
    ("vgg13", "vgg8"): 6.0, ("vgg13", "MobileNetV2"): 6.0, ("wrn_40_2", "wrn_16_2"): 6.0, ("wrn_40_2", "wrn_40_1"): 6.0,
}  # fmt: skip
DKD_NCKD_DEFAULT = 8.0

# The terms whose temperature is --kd-temperature, the one POCL's stages raise.
POCL_TERMS = ("kd", "fkl", "rkl", "jsd", "tvd", "sfkl", "srkl", "ab", "dkd", "abdkd", "ls", "abls")


# Directory names of published teachers that differ from the zoo's model names.
TEACHER_ALIASES = {"ResNet50": "resnet50"}


def teacher_name(path_t: str | Path) -> str | None:
    """Architecture from `.../<name>_vanilla[...]/file.pth` or `.../<name>_best.pth`, else None."""
    path = Path(path_t)
    candidates = [path.parent.name.split("_vanilla")[0] if "_vanilla" in path.parent.name else None]
    if path.stem.endswith("_best"):
        candidates.append(path.stem[: -len("_best")])
    candidates = [TEACHER_ALIASES.get(name, name) for name in candidates]
    return next((name for name in candidates if name in model_dict), None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m standard_classification.train_student",
        description="Distil a CIFAR-100 teacher into a student with KD and the abkd.losses divergences, ABKD, DKD, logit standardisation, "
                    "TTM/WTTM, DIST, CRD or ITRD.",
    )
    models = parser.add_argument_group("models")
    models.add_argument("--teacher-ckpt", "--path_t", required=True, help="teacher checkpoint in the zoo format {'model': state_dict}")
    models.add_argument("--teacher-model", "--model_t", choices=list(model_dict), metavar="NAME", help="teacher architecture (default: parsed from --teacher-ckpt)")
    models.add_argument("--model", "--model_s", required=True, choices=list(model_dict), metavar="NAME", help=f"student architecture: {', '.join(model_dict)}")
    distill = parser.add_argument_group("distillation")
    distill.add_argument("--distill", required=True, choices=list(METHODS), help="distillation term added to the cross-entropy")
    distill.add_argument("--ce-weight", "-r", type=float,
                         help="weight gamma of the cross-entropy (default 0.1 for kd and the other divergences, ls, abls; 1.0 for the others)")
    distill.add_argument("--kd-ratio", "--kd-weight", "-b", type=float,
                         help="weight of the --distill term, independent of --ce-weight (default 0.9 for kd and the other divergences, 9 for ls/abls, "
                              "0.8 for crd, 1 for dkd/abdkd/dist/itrd; required for ab, ttm, wttm, abttm)")
    distill.add_argument("--kd-temperature", "--kd_T", type=float,
                         help="temperature T of the logit terms (default 4; 2 for ls/abls); every term but ab, ttm, wttm, abttm, dist is scaled by T^2")
    distill.add_argument("--add", choices=ADD_LOSSES, default="kd",
                         help="the additional term weighted by --add-weight: kd (at --kd-temperature, T^2), ttm or wttm (at --ttm-exponent)")
    distill.add_argument("--add-weight", "-a", type=float, default=0.0,
                         help="weight of the --add term beside the --distill term (0: none; RepDistiller's CRD + KD uses 1)")
    distill.add_argument("--ab_alpha", type=float, default=0.5, help="alpha of the alpha-beta divergence (ab, abls, abdkd, abttm)")
    distill.add_argument("--ab_beta", type=float, default=0.5, help="beta of the alpha-beta divergence (ab, abls, abdkd, abttm)")
    distill.add_argument("--jsd-lam", type=float, default=0.1, help="jsd: the student's weight lam in the mixture m = (1 - lam) p + lam q")
    distill.add_argument("--skew-alpha", type=float, default=0.1, help="sfkl/srkl: skew lam, the share of the first argument in the mixture (the teacher's in sfkl, the student's in srkl)")
    distill.add_argument("--tckd-weight", "--dkd_alpha", type=float, default=1.0, help="DKD weight of the target-class term TCKD (the paper's alpha)")
    distill.add_argument("--nckd-weight", "--dkd_beta", type=float,
                         help="DKD weight of the non-target-class term NCKD (the paper's beta; default: mdistiller's value for the pair, else 8)")
    distill.add_argument("--dkd-warmup", "--dkd_warmup", type=int, default=20, help="DKD: epochs over which its term is ramped in linearly")
    distill.add_argument("--ttm-exponent", "--ttm_l", type=float, default=1.0,
                         help="ttm/wttm/abttm (and --add ttm/wttm): the power gamma of the teacher's probabilities (1/gamma is a teacher temperature)")
    distill.add_argument("--dist-temperature", "--dist_tau", type=float, default=4.0, help="dist: the softmax temperature tau (the term is scaled by tau^2)")
    distill.add_argument("--dist-inter-weight", "--dist_beta", type=float, default=1.0, help="dist: weight of the inter-class relation (the paper's beta)")
    distill.add_argument("--dist-intra-weight", "--dist_gamma", type=float, default=1.0, help="dist: weight of the intra-class relation (the paper's gamma)")
    distill.add_argument("--feat-dim", "--feat_dim", type=int, default=128, help="crd: dimension of the contrastive embedding")
    distill.add_argument("--nce-k", "--nce_k", type=int, default=16384, help="crd: negatives per image")
    distill.add_argument("--nce-t", "--nce_t", type=float, default=0.07, help="crd: temperature of the embedding dot products")
    distill.add_argument("--nce-m", "--nce_m", type=float, default=0.5, help="crd: momentum of the memory-bank update")
    distill.add_argument("--crd-mode", "--mode", choices=("exact", "relax"), default="exact",
                         help="crd: the positive is the image itself (exact) or a random image of its class (relax)")
    distill.add_argument("--itrd-corr-weight", "--lambda_corr", type=float, default=2.0, help="itrd: weight of the correlation loss")
    distill.add_argument("--itrd-mutual-weight", "--lambda_mutual", type=float, default=1.0, help="itrd: weight of the mutual-information loss")
    distill.add_argument("--itrd-order", "--alpha_it", type=float, default=1.5, help="itrd: Renyi order alpha of the correlation loss")
    add_curriculum_args(parser, RANK_COMMAND)
    add_training_args(parser)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    resolve_training_args(parser, args, args.model)
    if args.teacher_model is None:
        args.teacher_model = teacher_name(args.teacher_ckpt)
        if args.teacher_model is None:
            parser.error(f"cannot tell the teacher architecture from --teacher-ckpt {args.teacher_ckpt} (expected <name>_vanilla/...); pass --teacher-model")
    default_ce, default_kd, default_t = DEFAULT_WEIGHTS[args.distill]
    args.ce_weight = default_ce if args.ce_weight is None else args.ce_weight
    args.kd_ratio = default_kd if args.kd_ratio is None else args.kd_ratio
    args.kd_temperature = default_t if args.kd_temperature is None else args.kd_temperature
    if args.nckd_weight is None:
        args.nckd_weight = DKD_NCKD_WEIGHTS.get((args.teacher_model, args.model), DKD_NCKD_DEFAULT)
    if args.kd_ratio is None:
        parser.error(f"--distill {args.distill} needs --kd-weight (-b): ABKD's train_{'ttm' if 'ttm' in args.distill else 'ab'}.sh passes it "
                     "per teacher-student pair, and the term carries no T^2")
    for flag in ("kd_temperature", "ttm_exponent", "dist_temperature", "nce_t"):
        if not getattr(args, flag) > 0:
            parser.error(f"--{flag.replace('_', '-')} must be > 0, got {getattr(args, flag)}")
    for flag in ("feat_dim", "nce_k"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if not 0 <= args.nce_m < 1:
        parser.error(f"--nce-m must lie in [0, 1), got {args.nce_m}")
    if args.add_weight < 0:
        parser.error(f"--add-weight must be >= 0, got {args.add_weight}")
    if args.curriculum == "pocl" and args.distill not in POCL_TERMS:
        parser.error(
            f"--curriculum pocl schedules the KD temperature (--kd-temperature), which --distill {args.distill} does not use "
            f"(ttm/wttm: --ttm-exponent; dist: --dist-temperature; crd: --nce-t is contrastive); use one of {', '.join(POCL_TERMS)}"
        )
    try:
        resolve_curriculum_args(args, RANK_COMMAND)
    except ValueError as error:
        parser.error(str(error))
    if args.save is None:
        tag = f"_a{args.ab_alpha}_b{args.ab_beta}" if args.distill in ("ab", "abls", "abdkd", "abttm") else ""
        tag += f"_l{args.ttm_exponent}" if "ttm" in args.distill else ""
        tag += f"_add_{args.add}{args.add_weight}" if args.add_weight else ""
        args.save = str(Path("save/student_model") / f"S_{args.model}_T_{args.teacher_model}_{args.distill}{tag}_r{args.ce_weight}_k{args.kd_ratio}_{args.trial}")
    return args


def load_teacher(path: str | Path, name: str, num_classes: int) -> torch.nn.Module:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--teacher-ckpt {path}: no such file (see scripts/fetch_pretrained_teachers.sh)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise ValueError(f"--teacher-ckpt {path}: expected the zoo format {{'model': state_dict, ...}}")
    teacher = build_model(name, num_classes=num_classes)
    try:
        teacher.load_state_dict(checkpoint["model"], strict=True)
    except RuntimeError as error:
        raise ValueError(f"--teacher-ckpt {path} is not a {name} with {num_classes} classes (--teacher-model / dataset mismatch): {error}") from None
    return teacher.eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    run = Run.start(args, defaults=parser_defaults(build_parser()), fingerprints=lambda: input_fingerprints(args))
    train_set, test_set = load_cifar100(args.data_folder, "train"), load_cifar100(args.data_folder, "test")
    teacher = load_teacher(args.teacher_ckpt, args.teacher_model, len(train_set.classes))
    student = build_model(args.model, num_classes=len(train_set.classes))
    options = {key: getattr(args, key) for key in (
        "ab_alpha", "ab_beta", "tckd_weight", "nckd_weight", "dkd_warmup", "jsd_lam", "skew_alpha", "ttm_exponent",
        "dist_temperature", "dist_inter_weight", "dist_intra_weight",
    )}  # fmt: skip
    contrast = None
    if args.distill in FEATURE_LOSSES:
        student_dim, teacher_dim = feature_dim(student), feature_dim(teacher)
        distill = build_feature_loss(
            args.distill, student_dim=student_dim, teacher_dim=teacher_dim, num_data=len(train_set), feat_dim=args.feat_dim, nce_k=args.nce_k,
            nce_t=args.nce_t, nce_m=args.nce_m, seed=args.seed, itrd_corr_weight=args.itrd_corr_weight, itrd_mutual_weight=args.itrd_mutual_weight,
            itrd_order=args.itrd_order,
        )
        if args.distill == "crd":
            contrast = ContrastiveIndices(train_set.labels, args.nce_k, args.crd_mode)
    else:
        distill = build_distill_loss(args.distill, temperature=args.kd_temperature, **options)
    add = build_distill_loss(args.add, temperature=args.kd_temperature, **options) if args.add_weight else None
    extra = f" + {args.add_weight} * {add!r}" if add is not None else ""
    run.log.info(
        f"teacher {args.teacher_model} from {args.teacher_ckpt}; student {args.model} ({sum(p.numel() for p in student.parameters()) / 1e6:.2f}M params); "
        f"loss {args.ce_weight} * CE + {args.kd_ratio} * {distill!r}{extra}; lr {args.lr}"
    )
    ranked_ids = None
    if args.curriculum == "pocl":
        ranked_ids = load_ranking(args.ranking, ranking_identity(args.data_folder, train_set, args.teacher_ckpt), RANK_COMMAND)
    return train(run, args.model, student, train_set, test_set, teacher, distill, ce_weight=args.ce_weight, kd_ratio=args.kd_ratio,
                 add=add, add_weight=args.add_weight, contrast=contrast, ranked_ids=ranked_ids)


@torch.no_grad()
def feature_dim(model: torch.nn.Module) -> int:
    """Width of the pooled features `model(x, is_feat=True)[0][-1]`, from one eval-mode pass on
    zeros (no RNG drawn, BatchNorm statistics untouched)."""
    was_training = model.training
    model.eval()
    features, _ = model(torch.zeros(2, 3, 32, 32, device=next(model.parameters()).device), is_feat=True)
    model.train(was_training)
    return features[-1].flatten(1).shape[1]


if __name__ == "__main__":
    main()
