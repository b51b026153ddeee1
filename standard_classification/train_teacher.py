"""Train a CIFAR-100 model from scratch with cross-entropy (a teacher, or a student baseline).

    python -m standard_classification.train_teacher --model resnet56 --data-folder data/cifar100

CRD/RepDistiller recipe by default: SGD lr 0.05 (0.01 for MobileNetV2/ShuffleV1/ShuffleV2),
momentum 0.9, weight decay 5e-4, batch 64, 240 epochs, x0.1 after epochs 150, 180 and 210.
Writes `<save>/<model>_best.pth` and `ckpt_epoch_<n>.pth` in the zoo's `{"model": ...}` format;
the default `--save` is `save/models/<model>_vanilla`, the path `train_student` parses the
teacher's architecture from. Runs as one process or under torchrun/deepspeed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from abkd.run import Run, parser_defaults
from standard_classification.data import load_cifar100
from standard_classification.models import build_model, model_dict
from standard_classification.train import add_training_args, input_fingerprints, resolve_training_args, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m standard_classification.train_teacher", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, choices=list(model_dict), metavar="NAME", help=f"architecture: {', '.join(model_dict)}")
    add_training_args(parser)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    resolve_training_args(parser, args, args.model)
    if args.save is None:
        suffix = "" if args.trial == "0" else f"_trial_{args.trial}"
        args.save = str(Path("save/models") / f"{args.model}_vanilla{suffix}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    run = Run.start(args, defaults=parser_defaults(build_parser()), fingerprints=lambda: input_fingerprints(args))
    train_set, test_set = load_cifar100(args.data_folder, "train"), load_cifar100(args.data_folder, "test")
    model = build_model(args.model, num_classes=len(train_set.classes))
    run.log.info(f"model {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params); lr {args.lr}")
    return train(run, args.model, model, train_set, test_set)


if __name__ == "__main__":
    main()
