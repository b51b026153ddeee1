"""POCL difficulty ranking of a base-to-new dataset's training images, for `train --curriculum pocl`.

    python -m base_to_new_classification.rank_difficulty --dataset caltech101 --root data/coop \
        --teacher-model-path checkpoints/clip-vit-large-patch14 --student-model-path checkpoints/clip-vit-base-patch16 \
        --teacher-ckpt results/promptkd/teacher/caltech101/teacher_prompts.pt --seed 1 \
        --ranking results/promptkd/caltech101/pocl/ranking.jsonl

Each training image (base and new classes, as `train` uses them), resized and centre-cropped
without augmentation, is scored by the student's cross-entropy on its label over all classes and
by D(teacher || student) (--divergence, default fkl, at --kd-temperature, default 1) between the
logits `train` distils; the two ranks are fused by reciprocal rank fusion, k = 60
(abkd/curriculum.py, abkd/pocl.py). The student is the one `train --seed S` starts from (the same
prompts and projector), or --student-ckpt (a `student_prompts.pt`). Writes `ranking.jsonl` (easy
to hard) and `ranking.meta.json`; a ranking whose meta matches is reused.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from abkd import engine as E
from abkd.curriculum import add_ranking_args, check_ranking_args, rank_and_write, ranking_settings, reuse_ranking, student_origin
from base_to_new_classification.clip_prompts import StudentPromptLearner, load_frozen_clip, load_tokenizer
from base_to_new_classification.datasets import DATASETS, ImageDataset, load_dataset
from base_to_new_classification.preprocess import EvalTransform
from base_to_new_classification.train import RANK_COMMAND, load_teacher, ranking_identity


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m {RANK_COMMAND}",
        description="POCL: rank a base-to-new training set from easy to hard (the CLIP student's cross-entropy and the teacher-student divergence, fused by RRF).",
    )
    models = parser.add_argument_group("models and data (as the train run's)")
    models.add_argument("--dataset", required=True, help=f"dataset name, one of: {', '.join(DATASETS)}")
    models.add_argument("--root", required=True, help="directory holding the CoOp dataset folders (e.g. <root>/oxford_pets/)")
    models.add_argument("--teacher-model-path", required=True, help="the run's teacher CLIP (local Hugging Face directory with its tokenizer)")
    models.add_argument("--student-model-path", required=True, help="the run's student CLIP (local Hugging Face directory)")
    models.add_argument("--teacher-ckpt", required=True, help="the run's teacher prompts (train_teacher's teacher_prompts.pt or a PromptSRC checkpoint)")
    models.add_argument("--n-ctx-vision", type=int, default=4, help="the run's student vision prompt tokens per layer")
    models.add_argument("--prompt-depth-vision", type=int, default=9, help="the run's student encoder layers with vision prompts")
    models.add_argument("--seed", type=int, default=1, help="the run's --seed: the student's prompts and projector are initialised as train initialises them")
    models.add_argument("--student-ckpt", help="rank with this student (train's student_prompts.pt) instead of the run's initialisation")
    add_ranking_args(parser, temperature=1.0, batch_size=100)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.dataset not in DATASETS:
        parser.error(f"unknown dataset '{args.dataset}'; valid names: {', '.join(DATASETS)}")
    check_ranking_args(parser, args)
    return args


def load_models(args: argparse.Namespace, data, device: torch.device):
    """(teacher, class text features [C, d_t], student), built in the order train.main builds
    them after seeding, so that the student starts from the run's initialisation."""
    E.set_seed(args.seed)
    teacher_clip = load_frozen_clip(args.teacher_model_path, "--teacher-model-path", device)
    tokenizer = load_tokenizer(args.teacher_model_path, "--teacher-model-path")
    teacher = load_teacher(args.teacher_ckpt, teacher_clip, tokenizer, data).to(device)
    student_clip = load_frozen_clip(args.student_model_path, "--student-model-path", device)
    with torch.no_grad():
        class_text_features = teacher.text_features()
    student = StudentPromptLearner(
        student_clip, class_text_features.shape[1], n_ctx_vision=args.n_ctx_vision, depth_vision=args.prompt_depth_vision
    ).to(device)
    if args.student_ckpt:
        checkpoint = torch.load(args.student_ckpt, map_location=device, weights_only=True)
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise ValueError(f"--student-ckpt {args.student_ckpt}: expected train's student_prompts.pt ({{'state_dict': ..., ...}})")
        student.load_state_dict(checkpoint["state_dict"])
    return teacher, class_text_features, student.eval()


def rank(args: argparse.Namespace) -> Path:
    data = load_dataset(args.dataset, args.root)
    origin = student_origin(args, student=str(Path(args.student_model_path).resolve()), prompt_depth_vision=args.prompt_depth_vision,
                             n_ctx_vision=args.n_ctx_vision)
    meta = {**ranking_identity(args, data), **origin, **ranking_settings(args)}
    if reuse_ranking(args.ranking, meta, args.overwrite):
        return Path(args.ranking)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teacher, class_text_features, student = load_models(args, data, device)

    def logits(pixel_values):
        teacher_logits = teacher.logit_scale() * teacher.image_features(pixel_values) @ class_text_features.t()
        return student(pixel_values, class_text_features), teacher_logits

    size = student.clip.config.vision_config.image_size
    loader = DataLoader(ImageDataset(data.train, EvalTransform(size)), batch_size=args.batch_size, shuffle=False)
    batches = ((list(range(i * args.batch_size, i * args.batch_size + len(labels))), pixel_values.to(device), labels.to(device))
               for i, (pixel_values, labels) in enumerate(loader))
    ids = rank_and_write(args, meta, batches, logits, total=len(loader))
    print(f"ranked {len(ids)} {args.dataset} training images by the student's cross-entropy and {args.divergence} to the teacher -> {args.ranking}")
    return Path(args.ranking)


def main(argv: list[str] | None = None) -> Path:
    return rank(parse_args(argv))


if __name__ == "__main__":
    main()
