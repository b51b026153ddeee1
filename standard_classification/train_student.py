"""Distil a CIFAR-100 teacher into a student: CE plus one distillation term.

    python -m standard_classification.train_student --path_t save/models/resnet56_vanilla/ckpt_epoch_240.pth \
        --model_s resnet20 --distill ab --ab_alpha 0.8 --ab_beta 0.2 --kd_T 4 --data-folder data/cifar100

loss = ce_weight * CE(student, labels) + kd_weight * D, with D one of (standard_classification/losses.py):
  kd    T^2 KL(teacher || student) at --kd_T (Hinton et al., 2015)
  ab    T^2 alpha-beta divergence at --kd_T, --ab_alpha, --ab_beta (ABKD, Wang et al., ICML 2025)
  dkd   decoupled KD, --dkd_alpha TCKD + --dkd_beta NCKD, warm-up --dkd_warmup (Zhao et al., CVPR 2022)
  ls    KD between z-scored logits (logit standardisation, Sun et al., CVPR 2024)
  abls  the alpha-beta divergence between z-scored logits

The teacher is a zoo checkpoint `{"model": state_dict}`, read with weights_only=True; its
architecture is parsed from `<name>_vanilla/...` (or `<name>_best.pth`) or given with --model_t.
Training recipe, outputs and --resume are those of train_teacher (standard_classification/train.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from standard_classification.data import load_cifar100
from standard_classification.losses import DISTILL_LOSSES, build_distill_loss
from standard_classification.models import build_model, model_dict
from standard_classification.train import Objective, add_training_args, resolve_training_args, run, setup

# (ce_weight, kd_weight) when not given: CRD's KD setting (0.1, 0.9) for the KL-type terms, and
# DKD's own (1.0, 1.0), whose alpha/beta already weight its two parts.
DEFAULT_WEIGHTS = {"kd": (0.1, 0.9), "ab": (0.1, 0.9), "ls": (0.1, 0.9), "abls": (0.1, 0.9), "dkd": (1.0, 1.0)}


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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m standard_classification.train_student",
        description="Distil a CIFAR-100 teacher into a student with KD, ABKD, DKD or logit standardisation.",
    )
    models = parser.add_argument_group("models")
    models.add_argument("--path_t", required=True, help="teacher checkpoint in the zoo format {'model': state_dict}")
    models.add_argument("--model_t", choices=list(model_dict), metavar="NAME", help="teacher architecture (default: parsed from --path_t)")
    models.add_argument("--model_s", required=True, choices=list(model_dict), metavar="NAME", help=f"student architecture: {', '.join(model_dict)}")
    distill = parser.add_argument_group("distillation")
    distill.add_argument("--distill", required=True, choices=list(DISTILL_LOSSES), help="distillation term added to the cross-entropy")
    distill.add_argument("--ce-weight", type=float, help="weight gamma of the cross-entropy (default 0.1; 1.0 for dkd)")
    distill.add_argument("--kd-weight", type=float, help="weight of the distillation term (default 0.9; 1.0 for dkd)")
    distill.add_argument("--kd_T", type=float, default=4.0, help="temperature T of every distillation term (losses are scaled by T^2)")
    distill.add_argument("--ab_alpha", type=float, default=0.8, help="alpha of the alpha-beta divergence (ab, abls)")
    distill.add_argument("--ab_beta", type=float, default=0.2, help="beta of the alpha-beta divergence (ab, abls)")
    distill.add_argument("--dkd_alpha", type=float, default=1.0, help="DKD weight of the target-class term TCKD")
    distill.add_argument("--dkd_beta", type=float, default=8.0, help="DKD weight of the non-target-class term NCKD")
    distill.add_argument("--dkd_warmup", type=int, default=20, help="DKD: epochs over which its term is ramped in linearly")
    add_training_args(parser)
    args = parser.parse_args(argv)
    resolve_training_args(parser, args, args.model_s)
    if args.model_t is None:
        args.model_t = teacher_name(args.path_t)
        if args.model_t is None:
            parser.error(f"cannot tell the teacher architecture from --path_t {args.path_t} (expected <name>_vanilla/...); pass --model_t")
    default_ce, default_kd = DEFAULT_WEIGHTS[args.distill]
    args.ce_weight = default_ce if args.ce_weight is None else args.ce_weight
    args.kd_weight = default_kd if args.kd_weight is None else args.kd_weight
    if args.kd_T <= 0:
        parser.error(f"--kd_T must be > 0, got {args.kd_T}")
    if args.save is None:
        tag = f"_a{args.ab_alpha}_b{args.ab_beta}" if args.distill in ("ab", "abls") else ""
        args.save = str(Path("save/student_model") / f"S_{args.model_s}_T_{args.model_t}_{args.distill}{tag}_r{args.ce_weight}_k{args.kd_weight}_{args.trial}")
    return args


def load_teacher(path: str | Path, name: str, num_classes: int) -> torch.nn.Module:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--path_t {path}: no such file (see scripts/fetch_pretrained_teachers.sh)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise ValueError(f"--path_t {path}: expected the zoo format {{'model': state_dict, ...}}")
    teacher = build_model(name, num_classes=num_classes)
    try:
        teacher.load_state_dict(checkpoint["model"], strict=True)
    except RuntimeError as error:
        raise ValueError(f"--path_t {path} is not a {name} with {num_classes} classes (--model_t / dataset mismatch): {error}") from None
    return teacher.eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    save_dir = Path(args.save)
    device, log = setup(args, save_dir)
    train_set, test_set = load_cifar100(args.data_folder, "train"), load_cifar100(args.data_folder, "test")
    teacher = load_teacher(args.path_t, args.model_t, len(train_set.classes))
    student = build_model(args.model_s, num_classes=len(train_set.classes))
    distill = build_distill_loss(
        args.distill, temperature=args.kd_T, ab_alpha=args.ab_alpha, ab_beta=args.ab_beta,
        dkd_alpha=args.dkd_alpha, dkd_beta=args.dkd_beta, dkd_warmup=args.dkd_warmup,
    )
    log.info(
        f"teacher {args.model_t} from {args.path_t}; student {args.model_s} ({sum(p.numel() for p in student.parameters()) / 1e6:.2f}M params); "
        f"loss {args.ce_weight} * CE + {args.kd_weight} * {distill!r}; lr {args.learning_rate}"
    )
    objective = Objective(ce_weight=args.ce_weight, kd_weight=args.kd_weight, teacher=teacher, distill=distill)
    return run(args, args.model_s, student, objective, save_dir, device, log, train_set, test_set)


if __name__ == "__main__":
    main()
