"""POCL difficulty ranking of the CIFAR training images, for `train_student --curriculum pocl`.

    python -m standard_classification.rank_difficulty --teacher-ckpt save/models/resnet56_vanilla/ckpt_epoch_240.pth \
        --model resnet20 --seed 0 --data-folder data/cifar100 --ranking save/pocl/resnet56_resnet20/ranking.jsonl

Each training image, unaugmented, is scored by the student's cross-entropy on its label and by
D(teacher || student) (--divergence, default fkl, at --kd-temperature, default 4); the two ranks
are fused by reciprocal rank fusion, k = 60 (abkd/curriculum.py, abkd/pocl.py). The student is
the one `train_student --model M --seed S` starts from (the same initialisation), or
--student-ckpt. Writes `ranking.jsonl` (easy to hard) and `ranking.meta.json`; a ranking whose
meta matches is reused.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from abkd import engine as E
from abkd.curriculum import add_ranking_args, check_ranking_args, rank_and_write, ranking_settings, reuse_ranking, student_origin
from abkd.sampling import batches
from standard_classification.data import load_cifar100, normalize
from standard_classification.models import build_model, model_dict
from standard_classification.train import RANK_COMMAND, ranking_identity
from standard_classification.train_student import load_teacher, teacher_name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m {RANK_COMMAND}",
        description="POCL: rank the CIFAR training images from easy to hard (the student's cross-entropy and the teacher-student divergence, fused by RRF).",
    )
    models = parser.add_argument_group("models and data (as the train_student run's)")
    models.add_argument("--teacher-ckpt", "--path_t", required=True, help="the run's teacher checkpoint in the zoo format {'model': state_dict}")
    models.add_argument("--teacher-model", "--model_t", choices=list(model_dict), metavar="NAME", help="teacher architecture (default: parsed from --teacher-ckpt)")
    models.add_argument("--model", "--model_s", required=True, choices=list(model_dict), metavar="NAME", help="the run's student architecture")
    models.add_argument("--seed", type=int, default=0, help="the run's --seed: the student is initialised as train_student initialises it")
    models.add_argument("--student-ckpt", help="rank with this student checkpoint (zoo format) instead of the run's initialisation")
    models.add_argument("--data-folder", default="data/cifar100", help="folder with cifar-100-python/ or cifar-100-python.tar.gz")
    add_ranking_args(parser, temperature=4.0, batch_size=256)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.teacher_model is None:
        args.teacher_model = teacher_name(args.teacher_ckpt)
        if args.teacher_model is None:
            parser.error(f"cannot tell the teacher architecture from --teacher-ckpt {args.teacher_ckpt} (expected <name>_vanilla/...); pass --teacher-model")
    check_ranking_args(parser, args)
    return args


def load_models(args: argparse.Namespace, num_classes: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(teacher, student) of the run, the student initialised as in train_student.main (seed,
    then the teacher's construction, then the student's), or with --student-ckpt's weights."""
    E.set_seed(args.seed)
    teacher = load_teacher(args.teacher_ckpt, args.teacher_model, num_classes)
    student = build_model(args.model, num_classes=num_classes)
    if args.student_ckpt:
        checkpoint = torch.load(args.student_ckpt, map_location="cpu", weights_only=True)
        if not isinstance(checkpoint, dict) or "model" not in checkpoint:
            raise ValueError(f"--student-ckpt {args.student_ckpt}: expected the zoo format {{'model': state_dict, ...}}")
        student.load_state_dict(checkpoint["model"], strict=True)
    return teacher, student


def rank(args: argparse.Namespace) -> Path:
    train_set = load_cifar100(args.data_folder, "train")
    meta = {**ranking_identity(args.data_folder, train_set, args.teacher_ckpt), **student_origin(args, student=args.model), **ranking_settings(args)}
    if reuse_ranking(args.ranking, meta, args.overwrite):
        return Path(args.ranking)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teacher, student = load_models(args, len(train_set.classes))
    teacher, student = teacher.to(device).eval(), student.to(device).eval()

    def logits(images):
        return student(images), teacher(images)

    index_batches = batches(range(len(train_set)), args.batch_size)
    inputs = ((index, normalize(train_set.images[index].to(device)), train_set.labels[index].to(device)) for index in index_batches)
    ids = rank_and_write(args, meta, inputs, logits, total=len(index_batches))
    print(f"ranked {len(ids)} training images by {args.model}'s cross-entropy and {args.divergence} to {args.teacher_model} -> {args.ranking}")
    return Path(args.ranking)


def main(argv: list[str] | None = None) -> Path:
    return rank(parse_args(argv))


if __name__ == "__main__":
    main()
