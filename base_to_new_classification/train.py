"""PromptKD with the shared divergences: distil a prompted CLIP teacher into a smaller CLIP student.

    python -m base_to_new_classification.train --dataset oxford_pets --root data/coop \
        --teacher-model-path checkpoints/clip-vit-large-patch14 --student-model-path checkpoints/clip-vit-base-patch16 \
        --teacher-ckpt results/teacher/oxford_pets/seed1/teacher_prompts.pt --distill ab --ab_alpha 0.8 --ab_beta 0.2 \
        --save results/promptkd/oxford_pets/ab/seed10 --seed 10

The teacher (deep text + vision prompts, from `train_teacher` or one of PromptKD's published PromptSRC
teachers, converted at load time by `promptsrc_checkpoint`) and both encoders are frozen. The
student learns deep vision prompts and a projector on the training images of all classes (base
and new), minimising kd_ratio * D(teacher || student) against the teacher's class text features,
computed once, with the reduction of ABKD's PromptKD trainer for each term
(`abkd.classification.PromptKDLoss`; only dkd uses the labels). Training is float32 (ABKD's
`PREC: fp32`; `--precision bf16` is an autocast opt-in) with Dassl's schedule: SGD at a constant
--warmup-lr for --warmup-epochs, then a per-epoch cosine from --lr. Outputs in --save: args.json,
log.txt, results.json (base/new/HM test accuracy), student_prompts.pt (the learned parameters) and
checkpoints/ (resumable DeepSpeed checkpoints of the prompts, projector, optimizer, scheduler,
data position and RNG; the frozen encoders are never saved).

--final-model best_val reproduces Dassl's TEST.FINAL_MODEL "best_val" of the reference: after
every epoch the base-class test images are scored, and the epoch with the best base accuracy is
the one reported. The reference's "val" split is those test images (ABKD's datasets/*.py pass
val=test_base in base2novel mode), so this selects on test data; the default is the last epoch.

`fit` (the run lifecycle of `abkd.run` with PromptKD's data and optimiser) and the shared flags
are also used by `train_teacher`. Batching follows Dassl (PromptKD's trainer): the images that do
not fill a global batch are left out of each epoch (drop_last), which also keeps the student
projector's BatchNorm from seeing a batch of one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from abkd import engine as E
from abkd.classification import PRECISIONS, PROMPTKD_LOSSES, PromptKDLoss, autocast_context, fp32_deepspeed_config
from abkd.curriculum import Curriculum, add_curriculum_args, digest, load_ranking, resolve_curriculum_args, set_temperature
from abkd.run import Run, atomic_save, ignore_stop_signals, parser_defaults
from abkd.sampling import GlobalBatchSampler
from abkd.schedules import build_scheduler, lr_multiplier, on_clock
from base_to_new_classification import promptsrc_checkpoint
from base_to_new_classification.clip_prompts import (
    StudentPromptLearner,
    TeacherPromptLearner,
    load_frozen_clip,
    load_tokenizer,
)
from base_to_new_classification.datasets import DATASETS, ImageDataset, load_dataset
from base_to_new_classification.evaluate import evaluate
from base_to_new_classification.preprocess import EvalTransform, TrainTransform

DEFAULT_DS_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "deepspeed" / "ds_config.json")
RANK_COMMAND = "base_to_new_classification.rank_difficulty"  # the POCL ranking of a run's training images
TEACHER_FORMAT = "abkd-promptsrc-teacher/1"


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


LR_SCHEDULES = ("dassl", "step-cosine")


def dassl_lr_factor(step: int, *, steps_per_epoch: int, warmup_epochs: int, epochs: int, warmup_ratio: float) -> float:
    """Learning-rate factor before optimizer step `step` (0-based) of Dassl's "cosine" scheduler
    with a "constant" warm-up (Dassl.pytorch/dassl/optim/lr_scheduler.py, WARMUP_RECOUNT True):
    the lr is warmup_ratio * lr during the first `warmup_epochs` epochs, then changes once per
    epoch as lr * (1 + cos(pi * (epoch - warmup_epochs) / epochs)) / 2 (epoch 0-based; the cosine
    period is all `epochs`, so it does not reach 0)."""
    epoch = step // steps_per_epoch
    if epoch < warmup_epochs:
        return warmup_ratio
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / epochs))


def add_common_args(parser: argparse.ArgumentParser, lr: float = 0.005) -> None:
    """Data, optimisation and run-control flags shared by `train` and `train_teacher` (`lr`: the
    default peak learning rate)."""
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", required=True, help=f"dataset name, one of: {', '.join(DATASETS)}")
    data.add_argument("--root", required=True, help="directory holding the CoOp dataset folders (e.g. <root>/oxford_pets/)")
    data.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes per rank")

    optim = parser.add_argument_group("optimisation (SGD, cosine schedule)")
    optim.add_argument("--epochs", type=int, default=20, help="training epochs")
    optim.add_argument("--batch-size", "--batch_size", type=int, default=8,
                       help="training images per process and step (the global batch is this times the number of processes)")
    optim.add_argument("--eval-batch-size", type=int, default=100, help="test images per process and forward pass")
    optim.add_argument("--lr", "--learning_rate", type=float, default=lr, help=f"peak SGD learning rate (default {lr})")
    optim.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    optim.add_argument("--weight-decay", "--weight_decay", type=float, default=5e-4, help="SGD weight decay")
    optim.add_argument("--warmup-epochs", type=int, default=1, help="warm-up epochs at the start of the schedule")
    optim.add_argument("--warmup-lr", type=float, default=1e-5, help="dassl schedule: the constant learning rate of the warm-up epochs")
    optim.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="dassl",
                       help="dassl: constant --warmup-lr warm-up, then a per-epoch cosine (the reference's); "
                            "step-cosine: per-step linear warm-up to --lr, then a per-step cosine to 0")
    optim.add_argument("--precision", choices=list(PRECISIONS), default="fp32",
                       help="fp32 (the reference's); bf16: forward passes under bf16 autocast, weights and BatchNorm in float32")

    run = parser.add_argument_group("run control")
    run.add_argument("--save", required=True, help="output directory: args.json, log.txt, results.json, checkpoints/")
    run.add_argument("--seed", type=int, default=1, help="seed of prompt initialisation, data order and augmentation")
    run.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in <save>/checkpoints")
    run.add_argument("--resume-with-changes", action="store_true", help="with --resume: accept a longer run or other eval/save/log intervals, logged in <save>/args_history.jsonl")
    run.add_argument("--stop-after-iters", type=int, default=None, help="stop this invocation after N optimizer steps with a resumable checkpoint")
    run.add_argument("--stop-after-epochs", type=int, default=None, help="stop this invocation after N epochs with a resumable checkpoint")
    run.add_argument("--keep-checkpoints", type=int, default=2, help="resumable checkpoints to keep (one is written per epoch)")
    run.add_argument("--log-interval", type=int, default=20, help="log the training loss every N steps")
    run.add_argument("--deepspeed_config", default=DEFAULT_DS_CONFIG, help="DeepSpeed JSON configuration (ZeRO stage, precision)")


def check_common_args(args: argparse.Namespace) -> None:
    for flag in ("epochs", "batch_size", "eval_batch_size"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.lr <= 0:
        raise ValueError(f"--lr must be positive, got {args.lr}")
    for flag in ("stop_after_iters", "stop_after_epochs"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
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
    models.add_argument("--teacher-ckpt", required=True,
                        help="teacher prompts: train_teacher's teacher_prompts.pt, or a PromptKD/PromptSRC teacher "
                             "(model-best.pth.tar / model.pth.tar-<epoch>, or the <Dataset>/ or VLPromptLearner/ directory holding it)")
    models.add_argument("--final-model", choices=("last", "best_val"), default="last",
                        help="model reported: the last epoch's, or (the reference's) the epoch with the best base-class test accuracy")
    models.add_argument("--n-ctx-vision", type=int, default=4, help="student vision prompt tokens per layer")
    models.add_argument("--prompt-depth-vision", type=int, default=9, help="student encoder layers that receive fresh vision prompts")

    kd = parser.add_argument_group("distillation")
    kd.add_argument("--distill", required=True, help=f"distillation loss, one of: {', '.join(PROMPTKD_LOSSES)}")
    kd.add_argument("--kd-ratio", "--kd-weight", type=float, default=1000.0,
                    help="weight of the distillation loss, which is the whole objective (PromptKD's KD_WEIGHT)")
    kd.add_argument("--kd-temperature", "--temperature", type=float, default=1.0,
                    help="softmax temperature T of teacher and student (kd, the other divergences, ls and dkd are scaled by T^2, ab is not; "
                         "ttm and dist have their own)")
    kd.add_argument("--ab_alpha", type=float, default=None, help="alpha of the alpha-beta divergence (--distill ab)")
    kd.add_argument("--ab_beta", type=float, default=None, help="beta of the alpha-beta divergence (--distill ab)")
    kd.add_argument("--jsd-lam", type=float, default=0.1, help="jsd: the student's weight lam in the mixture m = (1 - lam) p + lam q")
    kd.add_argument("--skew-alpha", type=float, default=0.1, help="sfkl/srkl: skew lam, the share of the first argument in the mixture (the teacher's in sfkl, the student's in srkl)")
    kd.add_argument("--ttm-exponent", "--ttm_l", type=float, default=0.1,
                    help="ttm: the power gamma of the teacher's probabilities, p^gamma / sum p^gamma (ABKD's PromptKD default 0.1)")
    kd.add_argument("--dist-temperature", "--dist_tau", type=float, default=1.0, help="dist: the softmax temperature tau (the term is scaled by tau^2)")
    kd.add_argument("--dist-inter-weight", "--dist_beta", type=float, default=1.0, help="dist: weight of the inter-class relation (the paper's beta)")
    kd.add_argument("--dist-intra-weight", "--dist_gamma", type=float, default=1.0, help="dist: weight of the intra-class relation (the paper's gamma)")
    kd.add_argument("--tckd-weight", "--dkd-alpha", type=float, default=1.0, help="weight of DKD's target-class term TCKD, the paper's alpha (--distill dkd)")
    kd.add_argument("--nckd-weight", "--dkd-beta", type=float, default=1.0, help="weight of DKD's non-target-class term NCKD, the paper's beta (--distill dkd)")
    kd.add_argument("--dkd-warmup", type=float, default=2, help="DKD: epochs over which its term is ramped in linearly (--distill dkd)")
    add_curriculum_args(parser, RANK_COMMAND)
    add_common_args(parser, lr=1e-4)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    check_common_args(args)
    distillation_loss(args, num_classes=1)  # validates the name and its parameters (ValueError listing valid names)
    if args.batch_size < 2:
        raise ValueError("--batch-size must be at least 2: the student projector's batch norm needs two images per step")
    if args.kd_ratio <= 0:
        raise ValueError(f"--kd-ratio must be positive, got {args.kd_ratio}")
    if args.curriculum == "pocl" and not hasattr(distillation_loss(args, num_classes=1).loss, "temperature"):
        raise ValueError(f"--curriculum pocl schedules the KD temperature (--temperature), which --distill {args.distill} does not use")
    resolve_curriculum_args(args, RANK_COMMAND)
    return args


def distillation_loss(args: argparse.Namespace, num_classes: int) -> PromptKDLoss:
    return PromptKDLoss(args.distill, temperature=args.kd_temperature, kd_ratio=args.kd_ratio, num_classes=num_classes, dkd_warmup=args.dkd_warmup,
                        ab_alpha=args.ab_alpha, ab_beta=args.ab_beta, tckd_weight=args.tckd_weight, nckd_weight=args.nckd_weight,
                        jsd_lam=args.jsd_lam, skew_alpha=args.skew_alpha, ttm_exponent=args.ttm_exponent, dist_temperature=args.dist_temperature,
                        dist_inter_weight=args.dist_inter_weight, dist_intra_weight=args.dist_intra_weight)


# ---------------------------------------------------------------------------------------------
# The training loop (student distillation and teacher prompt tuning)
# ---------------------------------------------------------------------------------------------


def build_lr_scheduler(optimizer: torch.optim.Optimizer, args: argparse.Namespace, steps_per_epoch: int, clock: Callable[[int], int] | None = None):
    """The --lr-schedule of `args` as a per-step LambdaLR (a pure function of the step, so
    resuming restores it from the step count). `clock` maps the step to the step of a run of
    `steps_per_epoch`-step epochs at the same point of training, where epochs differ in length
    (a POCL curriculum's: `abkd.curriculum.Curriculum.full_data_step`)."""
    if args.lr_schedule == "step-cosine":
        if clock is None:
            return build_scheduler(optimizer, warmup=args.warmup_epochs * steps_per_epoch, total=args.epochs * steps_per_epoch, style="cosine")
        factor = partial(lr_multiplier, warmup=args.warmup_epochs * steps_per_epoch, total=args.epochs * steps_per_epoch, style="cosine")
    else:
        factor = partial(dassl_lr_factor, steps_per_epoch=steps_per_epoch, warmup_epochs=args.warmup_epochs, epochs=args.epochs,
                         warmup_ratio=args.warmup_lr / args.lr)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor if clock is None else on_clock(factor, clock))


def fit(run: Run, module: torch.nn.Module, objective, train_set: ImageDataset, on_epoch_end=None,
        make_curriculum: Callable[[GlobalBatchSampler], Curriculum] | None = None):
    """Train the learnable parameters of `module` with SGD and --lr-schedule through DeepSpeed (in
    float32) on the run's lifecycle; returns (engine, finished).

    `objective(engine, epoch)` builds the objective of `abkd.run` (called on (pixel_values,
    labels) on the device, returning (loss, parts)) around the engine; `epoch()` is the 0-based
    epoch being trained. `on_epoch_end(engine, epochs_done)` runs after each epoch.
    `make_curriculum(sampler)`: POCL's stages over the training set (abkd/curriculum.py), in this
    one run with its one optimizer and learning-rate schedule.
    """
    args, device = run.args, run.device
    ds_config = fp32_deepspeed_config(E.load_deepspeed_config(args.deepspeed_config, micro_batch_size=args.batch_size, gradient_accumulation_steps=1))
    sampler = GlobalBatchSampler(len(train_set), args.batch_size, 1, E.world_size(), E.rank(), args.seed)
    curriculum = None if make_curriculum is None else make_curriculum(sampler)
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=args.num_workers,
                        worker_init_fn=ignore_stop_signals if args.num_workers else None)
    learnable = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(learnable, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    scheduler = build_lr_scheduler(optimizer, args, sampler.steps_per_epoch, None if curriculum is None else curriculum.full_data_step)
    engine = E.initialize(module, optimizer, scheduler, ds_config, f"--deepspeed_config {args.deepspeed_config}")
    run.log.info(f"{sum(p.numel() for p in learnable)} learnable parameters; precision {args.precision}; lr schedule {args.lr_schedule}")
    if curriculum is not None:
        run.state.update(curriculum=None)
    run.resume(engine)
    current = {"epoch": 0}

    def epoch_batches(epoch: int):
        current["epoch"] = epoch
        train_set.set_epoch(epoch)
        return ((pixel_values.to(device), labels.to(device)) for pixel_values, labels in loader)

    train_objective = objective(engine, lambda: current["epoch"])

    def objective_in_precision(batch):
        with autocast_context(device, args.precision):
            return train_objective(batch)

    end = None if on_epoch_end is None else (lambda done, metrics: on_epoch_end(engine, done))
    return engine, run.fit(engine, objective_in_precision, sampler, epoch_batches, end, curriculum)


# ---------------------------------------------------------------------------------------------
# Teacher checkpoints
# ---------------------------------------------------------------------------------------------


def load_teacher(path: str | Path, clip, tokenizer, dataset, log=print) -> TeacherPromptLearner:
    """The frozen teacher prompt learner from --teacher-ckpt, checked against `dataset` and `clip`.

    Either a `train_teacher` checkpoint (teacher_prompts.pt) or one of PromptKD's published
    PromptSRC teachers (a Dassl file or its directory), converted by `promptsrc_checkpoint`.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"--teacher-ckpt {path}: no such file or directory (train one with python -m base_to_new_classification.train_teacher, "
            "or download PromptKD's PromptSRC teachers: see base_to_new_classification/README.md)"
        )
    path = promptsrc_checkpoint.find_checkpoint(path)
    checkpoint = promptsrc_checkpoint.safe_load(path)
    if promptsrc_checkpoint.is_promptsrc(checkpoint):
        prompt_config, prompts = promptsrc_checkpoint.convert(checkpoint["state_dict"], clip, dataset.num_classes, dataset.num_base, path)
        log(f"teacher: PromptSRC checkpoint {path} (epoch {checkpoint.get('epoch')}), converted: {prompt_config}")
    elif isinstance(checkpoint, dict) and checkpoint.get("format") == TEACHER_FORMAT:
        _check_teacher_classes(checkpoint, dataset, path)
        prompt_config, prompts = checkpoint["prompt_config"], checkpoint["prompts"]
        log(f"teacher: train_teacher checkpoint {path} ({checkpoint['dataset']})")
    else:
        raise ValueError(
            f"--teacher-ckpt {path}: neither a teacher prompt checkpoint written by train_teacher nor a PromptSRC "
            f"checkpoint (a Dassl file whose state_dict holds '{promptsrc_checkpoint.TEXT_CTX}')"
        )
    teacher = TeacherPromptLearner(clip, tokenizer, dataset.classnames, **prompt_config)
    try:
        teacher.load_state_dict(prompts)
    except RuntimeError as error:
        raise ValueError(f"--teacher-ckpt {path} does not fit --teacher-model-path (was it trained with another CLIP?): {error}") from None
    return teacher.eval().requires_grad_(False)


def _check_teacher_classes(checkpoint: dict, dataset, path: Path) -> None:
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


def ranking_identity(args: argparse.Namespace, data) -> dict:
    """What a POCL ranking must have been made for to train this run (`abkd.curriculum.load_ranking`):
    the training images (their paths under --root and labels, their number) and the teacher (its
    prompt checkpoint and its CLIP's config)."""
    items = [[os.path.relpath(path, args.root), label] for path, label in data.train]
    checkpoint = promptsrc_checkpoint.find_checkpoint(Path(args.teacher_ckpt))
    config = Path(args.teacher_model_path) / "config.json"
    return {
        "dataset": f"{args.dataset} under {Path(args.root).resolve()}", "examples": len(items),
        "dataset_fingerprint": digest(args.dataset, json.dumps(items)),
        "teacher": str(checkpoint.resolve()),
        "teacher_fingerprint": digest(E.file_sha256(checkpoint), config.read_bytes() if config.is_file() else b""),
    }


# ---------------------------------------------------------------------------------------------
# Student distillation
# ---------------------------------------------------------------------------------------------


def input_fingerprints(args: argparse.Namespace) -> dict[str, str]:
    """The SHA-256 of the run's inputs, recorded in run.json and compared by --resume (abkd.run): the
    CLIP weights, the teacher's prompt checkpoint and the dataset's split file. The images are not
    hashed (thousands of files): an image replaced under the same name is not noticed."""
    from base_to_new_classification.datasets import spec
    from distillation_llm.models import weights_fingerprint

    prints = {}
    for flag in ("--teacher-model-path", "--student-model-path"):  # a missing input is reported by its loader
        if (path := getattr(args, flag[2:].replace("-", "_"), None)) and Path(path).is_dir():
            prints[f"{flag} weights"] = weights_fingerprint(path)["sha256"]
    if getattr(args, "teacher_ckpt", None) and Path(args.teacher_ckpt).exists():
        prints["--teacher-ckpt"] = E.file_sha256(promptsrc_checkpoint.find_checkpoint(Path(args.teacher_ckpt)))
    entry = spec(args.dataset)
    if (split_file := Path(args.root) / entry.directory / entry.split_file).is_file():
        prints["--dataset split file"] = E.file_sha256(split_file)
    return prints


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    run = Run.start(args, defaults=parser_defaults(build_parser()), fingerprints=lambda: input_fingerprints(args))
    device = run.device

    data = load_dataset(args.dataset, args.root)
    teacher_clip = load_frozen_clip(args.teacher_model_path, "--teacher-model-path", device)
    tokenizer = load_tokenizer(args.teacher_model_path, "--teacher-model-path")
    teacher = load_teacher(args.teacher_ckpt, teacher_clip, tokenizer, data, run.log.info).to(device)
    student_clip = load_frozen_clip(args.student_model_path, "--student-model-path", device)
    size = student_clip.config.vision_config.image_size
    if teacher_clip.config.vision_config.image_size != size:
        raise ValueError(f"teacher and student CLIP must share an input size (teacher {teacher_clip.config.vision_config.image_size}, student {size})")
    with torch.no_grad():
        class_text_features = teacher.text_features()  # [C, d_t], fixed for the whole run
    student = StudentPromptLearner(
        student_clip, class_text_features.shape[1], n_ctx_vision=args.n_ctx_vision, depth_vision=args.prompt_depth_vision
    ).to(device)
    run.log.info(f"{args.dataset}: {data.num_classes} classes ({data.num_base} base); distill {args.distill} at T={args.kd_temperature}, kd_ratio {args.kd_ratio}")
    loss = distillation_loss(args, data.num_classes)
    make_curriculum = None
    if args.curriculum == "pocl":
        ranked_ids = load_ranking(args.ranking, ranking_identity(args, data), RANK_COMMAND)

        def set_stage(temperature: float, kd_ratio: float) -> None:
            set_temperature(loss.loss, temperature)
            loss.kd_ratio = kd_ratio

        make_curriculum = partial(Curriculum.from_args, args, ranked_ids, apply=set_stage, log=run.log.info)

    def objective(engine, epoch):
        def distill(batch):  # labels are used by dkd only (its target class, as in ABKD's trainer)
            pixel_values, labels = batch
            with torch.no_grad():
                teacher_logits = teacher.logit_scale() * teacher.image_features(pixel_values) @ class_text_features.t()
            kd = loss(engine(pixel_values, class_text_features).float(), teacher_logits.float(), labels, epoch())
            return kd, {}

        return distill

    def test_accuracy(module, items):
        module.eval()
        with autocast_context(device, args.precision):
            results = evaluate(lambda pixels: module(pixels, class_text_features).float(), ImageDataset(items, EvalTransform(size)),
                               data.num_base, args.eval_batch_size, device)
        module.train()
        return results

    best_path = run.save_dir / "best_val_student.pt"
    run.state.setdefault("best_val", -1.0)
    run.state.setdefault("best_val_epoch", 0)

    def select_best(engine, done: int) -> dict:
        """Dassl's best_val: base-class test images, classified among the base classes."""
        val = test_accuracy(engine.module, data.base(data.test))["base_acc"]
        if not math.isfinite(val):
            run.log.info(f"warning: base accuracy {val} after epoch {done}: not a candidate for best_val")
        elif val > run.state["best_val"]:
            run.state["best_val"], run.state["best_val_epoch"] = val, done
            if E.is_main_process():
                atomic_save(engine.module.state_dict(), best_path)
        return {"val_base_acc": val}

    engine, finished = fit(run, student, objective, ImageDataset(data.train, TrainTransform(size), seed=args.seed),
                           select_best if args.final_model == "best_val" else None, make_curriculum)
    if not finished:
        run.close()
        return None

    if args.final_model == "best_val":
        E.barrier()
        if run.state["best_val_epoch"] == 0:
            raise ValueError(f"--final-model best_val: no epoch had a finite base accuracy, so there is no best model (see {run.save_dir / 'log.txt'})")
        engine.module.load_state_dict(torch.load(best_path, map_location=device, weights_only=True))
        run.log.info(f"reporting the epoch-{run.state['best_val_epoch']} model (best base accuracy {run.state['best_val']:.2f})")
    results = test_accuracy(engine.module, data.test)
    engine.module.eval()
    results = {"dataset": args.dataset, "distill": args.distill, "seed": args.seed, "final_model": args.final_model, **results}
    run.log.info(f"test: base {results['base_acc']:.2f} new {results['new_acc']:.2f} HM {results['hm']:.2f}")
    if E.is_main_process():
        run.log.json("results.json", results)
        atomic_save({"state_dict": engine.module.state_dict(), "prompt_config": engine.module.prompt_config,
                     "dataset": args.dataset, "classnames": data.classnames}, run.save_dir / "student_prompts.pt")
    run.close()
    return results


if __name__ == "__main__":
    main()
