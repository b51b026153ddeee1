"""Train the teacher's deep text and vision prompts (PromptSRC/IVLP) on the BASE classes.

    python -m base_to_new_classification.train_teacher --dataset oxford_pets --root data/coop \
        --teacher-model-path checkpoints/clip-vit-large-patch14 --num-shots 16 --save results/teacher/oxford_pets/seed1

Supervised cross-entropy over the base classes' prompted text features (PromptSRC without its
self-regularising terms). Writes <save>/teacher_prompts.pt, the checkpoint `train --teacher-ckpt`
loads (the prompts, their configuration and the dataset's class names), results.json (the
teacher's base/new/HM test accuracy) and resumable checkpoints/ (prompts only, never the encoders).
"""

from __future__ import annotations

import argparse

import torch

from abkd import engine as E
from abkd.run import Run, atomic_save, parser_defaults
from base_to_new_classification.clip_prompts import TeacherPromptLearner, load_frozen_clip, load_tokenizer
from base_to_new_classification.datasets import ImageDataset, few_shot, load_dataset
from base_to_new_classification.evaluate import evaluate
from base_to_new_classification.preprocess import EvalTransform, TrainTransform
from base_to_new_classification.train import TEACHER_FORMAT, add_common_args, check_common_args, fit, input_fingerprints

TEACHER_CKPT = "teacher_prompts.pt"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m base_to_new_classification.train_teacher",
        description="Tune the deep text and vision prompts of a CLIP teacher on the base classes (cross-entropy).",
    )
    models = parser.add_argument_group("teacher")
    models.add_argument("--teacher-model-path", required=True, help="local Hugging Face directory of the teacher CLIP with its tokenizer")
    models.add_argument("--n-ctx-text", type=int, default=4, help="text context tokens per layer")
    models.add_argument("--n-ctx-vision", type=int, default=4, help="vision prompt tokens per layer")
    models.add_argument("--prompt-depth-text", type=int, default=9, help="text encoder layers that receive fresh prompts")
    models.add_argument("--prompt-depth-vision", type=int, default=9, help="vision encoder layers that receive fresh prompts")
    models.add_argument("--ctx-init", default="a photo of a", help="words whose embeddings initialise the first text context ('' for random)")
    models.add_argument("--num-shots", type=int, default=16, help="training images per base class (-1: all)")
    add_common_args(parser)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    check_common_args(args)
    return args


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    run = Run.start(args, defaults=parser_defaults(build_parser()), fingerprints=lambda: input_fingerprints(args))
    device, log, save_dir = run.device, run.log, run.save_dir

    data = load_dataset(args.dataset, args.root)
    clip = load_frozen_clip(args.teacher_model_path, "--teacher-model-path", device)
    tokenizer = load_tokenizer(args.teacher_model_path, "--teacher-model-path")
    prompt_config = {
        "n_ctx_text": args.n_ctx_text, "n_ctx_vision": args.n_ctx_vision, "depth_text": args.prompt_depth_text,
        "depth_vision": args.prompt_depth_vision, "ctx_init": args.ctx_init,
    }
    teacher = TeacherPromptLearner(clip, tokenizer, data.classnames, **prompt_config).to(device)
    base = slice(0, data.num_base)
    train_items = few_shot(data.base(data.train), args.num_shots, args.seed)
    log.info(f"{args.dataset}: {data.num_classes} classes, training on the {data.num_base} base classes ({len(train_items)} images)")

    def objective(engine, epoch):  # epoch() unused: cross-entropy has no schedule of its own
        def cross_entropy(batch):
            pixel_values, labels = batch
            logits = engine(pixel_values, base)
            return torch.nn.functional.cross_entropy(logits.float(), labels), {"acc": 100.0 * (logits.argmax(-1) == labels).float().mean()}

        return cross_entropy

    size = clip.config.vision_config.image_size
    engine, finished = fit(run, teacher, objective, ImageDataset(train_items, TrainTransform(size), seed=args.seed))
    if not finished:
        run.close()
        return None

    engine.module.eval()
    with torch.no_grad():
        text_features = engine.module.text_features()
    results = evaluate(
        lambda pixels: engine.module.logit_scale() * engine.module.image_features(pixels) @ text_features.t(),
        ImageDataset(data.test, EvalTransform(size)), data.num_base, args.eval_batch_size, device,
    )
    results = {"dataset": args.dataset, "model": "teacher", "seed": args.seed, **results}
    log.info(f"teacher test: base {results['base_acc']:.2f} new {results['new_acc']:.2f} HM {results['hm']:.2f}")
    if E.is_main_process():
        log.json("results.json", results)
        atomic_save({
            "format": TEACHER_FORMAT, "dataset": args.dataset, "num_classes": data.num_classes, "num_base": data.num_base,
            "classnames": list(data.classnames), "prompt_config": prompt_config,
            "prompts": {key: value.detach().cpu() for key, value in engine.module.state_dict().items()},
        }, save_dir / TEACHER_CKPT)
        log.info(f"teacher prompts written to {save_dir / TEACHER_CKPT}")
    run.close()
    return results


if __name__ == "__main__":
    main()
