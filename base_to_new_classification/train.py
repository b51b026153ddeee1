"""PromptKD with the shared divergences: distil a prompted CLIP teacher into a smaller CLIP student.

    python -m base_to_new_classification.train --dataset oxford_pets --root data/coop \
        --teacher-model-path checkpoints/clip-vit-large-patch14 --student-model-path checkpoints/clip-vit-base-patch16 \
        --teacher-ckpt results/teacher/oxford_pets/seed1/teacher_prompts.pt --distill ab --ab_alpha 0.8 --ab_beta 0.2 \
        --save results/promptkd/oxford_pets/ab/seed10 --seed 10

The teacher (deep text + vision prompts, from `train_teacher`) and both encoders are frozen. The
student learns deep vision prompts and a projector on the unlabeled training images of all
classes (base and new), minimising kd_weight * T^2 * mean_B D(teacher || student) / C against
the teacher's class text features, computed once. Outputs in --save: args.json, log.txt,
results.json (base/new/HM test accuracy), student_prompts.pt (the learned parameters) and
checkpoints/ (resumable DeepSpeed checkpoints of the prompts, projector, optimizer, scheduler,
data position and RNG; the frozen encoders are never saved).

`fit` and the shared flags are also used by `train_teacher`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from abkd import engine as E
from abkd.runlog import RunLog
from abkd.schedules import build_scheduler
from base_to_new_classification.clip_prompts import (
    StudentPromptLearner, TeacherPromptLearner, load_frozen_clip, load_tokenizer,
)
from base_to_new_classification.datasets import DATASETS, ImageDataset, load_dataset
from base_to_new_classification.evaluate import evaluate
from base_to_new_classification.losses import LOSSES, build_objective
from base_to_new_classification.preprocess import EvalTransform, TrainTransform
from abkd.sampling import GlobalBatchSampler

CHECKPOINTS = "checkpoints"
DEFAULT_DS_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "deepspeed" / "ds_config.json")
TEACHER_FORMAT = "abkd-promptsrc-teacher/1"


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Data, optimisation and run-control flags shared by `train` and `train_teacher`."""
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", required=True, help=f"dataset name, one of: {', '.join(DATASETS)}")
    data.add_argument("--root", required=True, help="directory holding the CoOp dataset folders (e.g. <root>/oxford_pets/)")
    data.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes per rank")

    optim = parser.add_argument_group("optimisation (SGD, cosine schedule)")
    optim.add_argument("--epochs", type=int, default=20, help="training epochs")
    optim.add_argument("--batch-size", type=int, default=8, help="training images per process and step")
    optim.add_argument("--eval-batch-size", type=int, default=100, help="test images per forward pass")
    optim.add_argument("--lr", type=float, default=0.005, help="peak SGD learning rate")
    optim.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    optim.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay")
    optim.add_argument("--warmup-epochs", type=int, default=1, help="epochs of linear learning-rate warm-up")

    run = parser.add_argument_group("run control")
    run.add_argument("--save", required=True, help="output directory: args.json, log.txt, results.json, checkpoints/")
    run.add_argument("--seed", type=int, default=1, help="seed of prompt initialisation, data order and augmentation")
    run.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in <save>/checkpoints")
    run.add_argument("--stop-after-iters", type=int, default=None, help="stop this invocation after N optimizer steps with a resumable checkpoint")
    run.add_argument("--keep-checkpoints", type=int, default=2, help="resumable checkpoints to keep (one is written per epoch)")
    run.add_argument("--log-interval", type=int, default=20, help="log the training loss every N steps")
    run.add_argument("--deepspeed_config", default=DEFAULT_DS_CONFIG, help="DeepSpeed JSON configuration (ZeRO stage, precision)")


def check_common_args(args: argparse.Namespace) -> None:
    for flag in ("epochs", "batch_size", "eval_batch_size"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.lr <= 0:
        raise ValueError(f"--lr must be positive, got {args.lr}")
    if args.stop_after_iters is not None and args.stop_after_iters < 1:
        raise ValueError(f"--stop-after-iters must be at least 1, got {args.stop_after_iters}")
    if args.dataset not in DATASETS:
        raise ValueError(f"unknown dataset '{args.dataset}'; valid names: {', '.join(DATASETS)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m base_to_new_classification.train",
        description="PromptKD: distil a prompted CLIP teacher into a CLIP student with deep vision prompts (base-to-new).",
    )
    models = parser.add_argument_group("models")
    models.add_argument("--teacher-model-path", required=True, help="local Hugging Face directory of the teacher CLIP (ViT-L/14) with its tokenizer")
    models.add_argument("--student-model-path", required=True, help="local Hugging Face directory of the student CLIP (ViT-B/16)")
    models.add_argument("--teacher-ckpt", required=True, help="teacher prompt checkpoint written by train_teacher (teacher_prompts.pt)")
    models.add_argument("--n-ctx-vision", type=int, default=4, help="student vision prompt tokens per layer")
    models.add_argument("--prompt-depth-vision", type=int, default=9, help="student encoder layers that receive fresh vision prompts")

    kd = parser.add_argument_group("distillation")
    kd.add_argument("--distill", required=True, help=f"distillation loss, one of: {', '.join(LOSSES)}")
    kd.add_argument("--kd-weight", type=float, default=1000.0, help="weight of the distillation loss (PromptKD's KD_WEIGHT; the loss is divided by the class count)")
    kd.add_argument("--temperature", type=float, default=1.0, help="softmax temperature T of teacher and student; the loss is scaled by T^2")
    kd.add_argument("--ab_alpha", type=float, default=None, help="alpha of the alpha-beta divergence (--distill ab)")
    kd.add_argument("--ab_beta", type=float, default=None, help="beta of the alpha-beta divergence (--distill ab)")
    kd.add_argument("--dkd-alpha", type=float, default=1.0, help="weight of DKD's target-class term TCKD (--distill dkd)")
    kd.add_argument("--dkd-beta", type=float, default=8.0, help="weight of DKD's non-target-class term NCKD (--distill dkd)")
    add_common_args(parser)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    check_common_args(args)
    objective(args, num_classes=1)  # validates the name and its parameters (ValueError listing valid names)
    if args.batch_size < 2:
        raise ValueError("--batch-size must be at least 2: the student projector's batch norm needs two images per step")
    if args.kd_weight <= 0:
        raise ValueError(f"--kd-weight must be positive, got {args.kd_weight}")
    return args


def objective(args: argparse.Namespace, num_classes: int):
    return build_objective(args.distill, temperature=args.temperature, kd_weight=args.kd_weight, num_classes=num_classes,
                           ab_alpha=args.ab_alpha, ab_beta=args.ab_beta, dkd_alpha=args.dkd_alpha, dkd_beta=args.dkd_beta)


def write_args(args: argparse.Namespace, save_dir: Path) -> None:
    if E.is_main_process():
        save_dir.mkdir(parents=True, exist_ok=True)
        (save_dir / "args.json").write_text(json.dumps(vars(args), indent=2, sort_keys=True, default=str) + "\n")
    E.barrier()


def atomic_torch_save(payload, path: Path) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    torch.save(payload, staging)
    os.replace(staging, path)


# ---------------------------------------------------------------------------------------------
# The training loop (student distillation and teacher prompt tuning)
# ---------------------------------------------------------------------------------------------


def sync_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (the projector's BatchNorm statistics, which each rank
    updates from its own images), so that what is saved, resumed and evaluated is one model."""
    if torch.distributed.is_initialized() and E.world_size() > 1:
        for buffer in module.buffers():
            torch.distributed.broadcast(buffer, 0)


def fit(args, module: torch.nn.Module, loss_step, train_set: ImageDataset, log: RunLog, device: torch.device):
    """Train the learnable `module` with SGD through DeepSpeed; returns (engine, finished).

    `loss_step(engine, pixel_values, labels)` returns the scalar loss of one micro-batch. One
    resumable checkpoint is written at every epoch end and when --stop-after-iters stops the run.
    """
    save_dir = Path(args.save)
    ds_config = E.load_deepspeed_config(args.deepspeed_config, micro_batch_size=args.batch_size, gradient_accumulation_steps=1)
    sampler = GlobalBatchSampler(len(train_set), args.batch_size, 1, E.world_size(), E.rank(), args.seed)
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=args.num_workers)
    total_steps = args.epochs * sampler.steps_per_epoch
    learnable = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(learnable, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    scheduler = build_scheduler(optimizer, warmup=args.warmup_epochs * sampler.steps_per_epoch, total=total_steps, style="cosine")
    engine = E.initialize(module, optimizer, scheduler, ds_config)
    log.info(f"world size {E.world_size()} on {device.type}; {sum(p.numel() for p in learnable)} learnable parameters; "
             f"{len(train_set)} training images, {sampler.steps_per_epoch} steps per epoch, {total_steps} steps")

    state = {"step": 0, "epoch": 0, "step_in_epoch": 0, "epoch_loss": 0.0}
    if args.resume:
        tag = E.latest_checkpoint(save_dir / CHECKPOINTS)
        if tag is None:
            log.info(f"--resume: no checkpoint in {save_dir / CHECKPOINTS} yet, starting from scratch")
        else:
            client = E.load_checkpoint(engine, save_dir / CHECKPOINTS, tag)
            state.update({key: client[key] for key in state})
            log.info(f"resumed from {tag}: step {state['step']}, epoch {state['epoch']} (+{state['step_in_epoch']} steps)")

    stop_at = min(total_steps, state["step"] + args.stop_after_iters) if args.stop_after_iters else total_steps
    engine.train()
    while state["step"] < stop_at:
        sampler.set_epoch(state["epoch"], skip_steps=state["step_in_epoch"])
        train_set.set_epoch(state["epoch"])
        started = time.perf_counter()
        for pixel_values, labels in loader:
            loss = loss_step(engine, pixel_values.to(device), labels.to(device))
            engine.backward(loss)
            engine.step()
            state["step"] += 1
            state["step_in_epoch"] += 1
            state["epoch_loss"] += loss.item()
            if state["step"] % args.log_interval == 0:
                log.metrics(state["step"], {"loss": loss.item(), "lr": engine.get_lr()[0], "epoch": state["epoch"]})
            if state["step"] == stop_at:
                break
        epoch_end = state["step_in_epoch"] == sampler.steps_per_epoch
        if epoch_end:
            log.metrics(state["epoch"] + 1, {
                "mean_loss": state["epoch_loss"] / sampler.steps_per_epoch, "lr": engine.get_lr()[0],
                "s": time.perf_counter() - started, "step": state["step"],
            }, prefix="epoch")
            state.update(epoch=state["epoch"] + 1, step_in_epoch=0, epoch_loss=0.0)
        tag = f"epoch{state['epoch']}" if epoch_end else f"step{state['step']}"
        sync_buffers(engine.module)
        E.save_checkpoint(engine, save_dir / CHECKPOINTS, tag, client_state=dict(state), keep_last=args.keep_checkpoints)
    finished = state["step"] >= total_steps
    if not finished:
        log.info(f"stopped after step {state['step']} of {total_steps} (--stop-after-iters); continue with --resume")
    return engine, finished


# ---------------------------------------------------------------------------------------------
# Teacher checkpoints
# ---------------------------------------------------------------------------------------------


def load_teacher(path: str | Path, clip, tokenizer, dataset) -> TeacherPromptLearner:
    """The teacher prompt learner from a `train_teacher` checkpoint, checked against `dataset`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--teacher-ckpt {path}: no such file (train one with python -m base_to_new_classification.train_teacher)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != TEACHER_FORMAT:
        raise ValueError(f"--teacher-ckpt {path}: not a teacher prompt checkpoint written by train_teacher")
    if checkpoint["num_classes"] != dataset.num_classes:
        raise ValueError(
            f"--teacher-ckpt {path} was trained on '{checkpoint['dataset']}' with {checkpoint['num_classes']} classes, "
            f"but --dataset {dataset.name} has {dataset.num_classes} classes: use the teacher trained on this dataset"
        )
    if list(checkpoint["classnames"]) != list(dataset.classnames):
        differ = next(i for i, (a, b) in enumerate(zip(checkpoint["classnames"], dataset.classnames)) if a != b)
        raise ValueError(
            f"--teacher-ckpt {path}: class {differ} is '{checkpoint['classnames'][differ]}' in the checkpoint "
            f"but '{dataset.classnames[differ]}' in --dataset {dataset.name}"
        )
    teacher = TeacherPromptLearner(clip, tokenizer, dataset.classnames, **checkpoint["prompt_config"])
    try:
        teacher.load_state_dict(checkpoint["prompts"])
    except RuntimeError as error:
        raise ValueError(f"--teacher-ckpt {path} does not fit --teacher-model-path (was it trained with another CLIP?): {error}") from None
    return teacher.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# Student distillation
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    device = E.init_distributed()
    E.set_seed(args.seed)
    save_dir = Path(args.save)
    write_args(args, save_dir)
    log = RunLog(save_dir, enabled=E.is_main_process())

    data = load_dataset(args.dataset, args.root)
    teacher_clip = load_frozen_clip(args.teacher_model_path, "--teacher-model-path", device)
    tokenizer = load_tokenizer(args.teacher_model_path, "--teacher-model-path")
    teacher = load_teacher(args.teacher_ckpt, teacher_clip, tokenizer, data).to(device)
    student_clip = load_frozen_clip(args.student_model_path, "--student-model-path", device)
    size = student_clip.config.vision_config.image_size
    if teacher_clip.config.vision_config.image_size != size:
        raise ValueError(f"teacher and student CLIP must share an input size (teacher {teacher_clip.config.vision_config.image_size}, student {size})")
    with torch.no_grad():
        class_text_features = teacher.text_features()  # [C, d_t], fixed for the whole run
    student = StudentPromptLearner(
        student_clip, class_text_features.shape[1], n_ctx_vision=args.n_ctx_vision, depth_vision=args.prompt_depth_vision
    ).to(device)
    log.info(f"{args.dataset}: {data.num_classes} classes ({data.num_base} base); distill {args.distill} at T={args.temperature}, kd_weight {args.kd_weight}")

    distillation_loss = objective(args, data.num_classes)

    def loss_step(engine, pixel_values, labels):  # labels unused: PromptKD distils on unlabeled images
        with torch.no_grad():
            teacher_logits = teacher.logit_scale() * teacher.image_features(pixel_values) @ class_text_features.t()
        student_logits = engine(pixel_values, class_text_features)
        return distillation_loss(student_logits, teacher_logits)

    train_set = ImageDataset(data.train, TrainTransform(size), seed=args.seed)
    engine, finished = fit(args, student, loss_step, train_set, log, device)
    if not finished:
        log.close()
        return None

    engine.module.eval()
    results = evaluate(lambda pixels: engine.module(pixels, class_text_features), ImageDataset(data.test, EvalTransform(size)),
                       data.num_base, args.eval_batch_size, device)
    results = {"dataset": args.dataset, "distill": args.distill, "seed": args.seed, **results}
    log.info(f"test: base {results['base_acc']:.2f} new {results['new_acc']:.2f} HM {results['hm']:.2f}")
    if E.is_main_process():
        log.json("results.json", results)
        atomic_torch_save({"state_dict": engine.module.state_dict(), "prompt_config": engine.module.prompt_config,
                           "dataset": args.dataset, "classnames": data.classnames}, save_dir / "student_prompts.pt")
    log.close()
    return results


if __name__ == "__main__":
    main()
