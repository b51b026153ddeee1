"""Distil a CIFAR-100 teacher into a student: CE plus one distillation term.

    python -m standard_classification.train_student --teacher-ckpt save/models/resnet56_vanilla/ckpt_epoch_240.pth \
        --model resnet20 --distill ab --ab_alpha 0.8 --ab_beta 0.3 --kd-weight 64 --data-folder data/cifar100

loss = ce_weight * CE(student, labels) + kd_ratio * D, with D one of (abkd/classification.py):
  kd     T^2 KL(teacher || student) at --kd-temperature (Hinton et al., 2015)
  ab     alpha-beta divergence at --kd-temperature, --ab_alpha, --ab_beta, without T^2 (ABKD, Wang et al., ICML 2025)
  dkd    decoupled KD, --tckd-weight TCKD + --nckd-weight NCKD, warm-up --dkd-warmup (Zhao et al., CVPR 2022)
  abdkd  ABKD's DKD: NCKD's KL replaced by the alpha-beta divergence
  ls     KD between z-scored logits (logit standardisation, Sun et al., CVPR 2024)
  abls   the alpha-beta divergence between z-scored logits

Defaults per term follow the reference code: kd 0.1 CE + 0.9 KD at T = 4 (RepDistiller); ab
1 CE + --kd-weight (required: ABKD's scripts give it per pair) at T = 4; dkd/abdkd 1 CE + 1 DKD at
T = 4 with mdistiller's per-pair NCKD weight (DKD_NCKD_WEIGHTS, else 8); ls/abls 0.1 CE + 9 KD at
T = 2 (the logit-standardisation recipe).

The teacher is a zoo checkpoint `{"model": state_dict}`, read with weights_only=True; its
architecture is parsed from `<name>_vanilla/...` (or `<name>_best.pth`) or given with --teacher-model.
The CRD/RepDistiller spellings (--path_t, --model_s, --model_t, --kd_T, --dkd_alpha, ...) are aliases.
Training recipe, outputs and --resume are those of train_teacher (standard_classification/train.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from abkd.classification import DISTILL_LOSSES, build_distill_loss
from abkd.curriculum import add_curriculum_args, load_ranking, resolve_curriculum_args
from abkd.run import Run, parser_defaults
from standard_classification.data import load_cifar100
from standard_classification.models import build_model, model_dict
from standard_classification.train import RANK_COMMAND, add_training_args, ranking_identity, resolve_training_args, train

# (ce_weight, kd_ratio, temperature) when not given. kd: RepDistiller's README (-r 0.1 -a 0.9, kd_T 4).
# ab: ABKD's train_ab.sh (-r 1, -b from the command line: no default). dkd, abdkd: mdistiller's
# CFG.DKD (CE_WEIGHT 1, T 4) and ABKD's train_dkd.sh (-r 1 -b 1). ls, abls: ABKD's train_ls.sh and
# the logit-standardisation recipe (-r 0.1 -b 9, kd_T 2).
DEFAULT_WEIGHTS = {
    "kd": (0.1, 0.9, 4.0), "ab": (1.0, None, 4.0), "dkd": (1.0, 1.0, 4.0), "abdkd": (1.0, 1.0, 4.0),
    "ls": (0.1, 9.0, 2.0), "abls": (0.1, 9.0, 2.0),
}  # fmt: skip

# DKD's NCKD weight (the paper's beta) per (teacher, student): mdistiller's configs/cifar100/dkd/*.yaml;
# the pairs not listed use CFG.DKD.BETA = 8. ABKD's train_dkd.sh takes the same weight per pair.
DKD_NCKD_WEIGHTS = {
    ("resnet56", "resnet20"): 2.0, ("resnet110", "resnet32"): 2.0,
    ("vgg13", "vgg8"): 6.0, ("vgg13", "MobileNetV2"): 6.0, ("wrn_40_2", "wrn_16_2"): 6.0, ("wrn_40_2", "wrn_40_1"): 6.0,
}  # fmt: skip
DKD_NCKD_DEFAULT = 8.0


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
        description="Distil a CIFAR-100 teacher into a student with KD, ABKD, DKD or logit standardisation.",
    )
    models = parser.add_argument_group("models")
    models.add_argument("--teacher-ckpt", "--path_t", required=True, help="teacher checkpoint in the zoo format {'model': state_dict}")
    models.add_argument("--teacher-model", "--model_t", choices=list(model_dict), metavar="NAME", help="teacher architecture (default: parsed from --teacher-ckpt)")
    models.add_argument("--model", "--model_s", required=True, choices=list(model_dict), metavar="NAME", help=f"student architecture: {', '.join(model_dict)}")
    distill = parser.add_argument_group("distillation")
    distill.add_argument("--distill", required=True, choices=list(DISTILL_LOSSES), help="distillation term added to the cross-entropy")
    distill.add_argument("--ce-weight", type=float, help="weight gamma of the cross-entropy (default 0.1 for kd, ls, abls; 1.0 for ab, dkd, abdkd)")
    distill.add_argument("--kd-ratio", "--kd-weight", type=float,
                         help="weight of the distillation term, independent of --ce-weight (default 0.9 for kd, 9 for ls/abls, 1 for dkd/abdkd; required for ab)")
    distill.add_argument("--kd-temperature", "--kd_T", type=float,
                         help="temperature T of the distillation term (default 4; 2 for ls/abls); every term but ab is scaled by T^2")
    distill.add_argument("--ab_alpha", type=float, default=0.5, help="alpha of the alpha-beta divergence (ab, abls, abdkd)")
    distill.add_argument("--ab_beta", type=float, default=0.5, help="beta of the alpha-beta divergence (ab, abls, abdkd)")
    distill.add_argument("--tckd-weight", "--dkd_alpha", type=float, default=1.0, help="DKD weight of the target-class term TCKD (the paper's alpha)")
    distill.add_argument("--nckd-weight", "--dkd_beta", type=float,
                         help="DKD weight of the non-target-class term NCKD (the paper's beta; default: mdistiller's value for the pair, else 8)")
    distill.add_argument("--dkd-warmup", "--dkd_warmup", type=int, default=20, help="DKD: epochs over which its term is ramped in linearly")
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
        parser.error(f"--distill {args.distill} needs --kd-weight (ABKD's train_ab.sh passes it per teacher-student pair; D_AB carries no T^2)")
    if args.kd_temperature <= 0:
        parser.error(f"--kd-temperature must be > 0, got {args.kd_temperature}")
    try:
        resolve_curriculum_args(args, RANK_COMMAND)
    except ValueError as error:
        parser.error(str(error))
    if args.save is None:
        tag = f"_a{args.ab_alpha}_b{args.ab_beta}" if args.distill in ("ab", "abls", "abdkd") else ""
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
    run = Run.start(args, defaults=parser_defaults(build_parser()))
    train_set, test_set = load_cifar100(args.data_folder, "train"), load_cifar100(args.data_folder, "test")
    teacher = load_teacher(args.teacher_ckpt, args.teacher_model, len(train_set.classes))
    student = build_model(args.model, num_classes=len(train_set.classes))
    distill = build_distill_loss(
        args.distill, temperature=args.kd_temperature, ab_alpha=args.ab_alpha, ab_beta=args.ab_beta,
        tckd_weight=args.tckd_weight, nckd_weight=args.nckd_weight, dkd_warmup=args.dkd_warmup,
    )
    run.log.info(
        f"teacher {args.teacher_model} from {args.teacher_ckpt}; student {args.model} ({sum(p.numel() for p in student.parameters()) / 1e6:.2f}M params); "
        f"loss {args.ce_weight} * CE + {args.kd_ratio} * {distill!r}; lr {args.lr}"
    )
    ranked_ids = None
    if args.curriculum == "pocl":
        ranked_ids = load_ranking(args.ranking, ranking_identity(args.data_folder, train_set, args.teacher_ckpt), RANK_COMMAND)
    return train(run, args.model, student, train_set, test_set, teacher, distill, ce_weight=args.ce_weight, kd_ratio=args.kd_ratio,
                 ranked_ids=ranked_ids)


if __name__ == "__main__":
    main()
