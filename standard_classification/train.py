"""The CIFAR-100 training loop shared by `train_teacher` (cross-entropy only) and
`train_student` (cross-entropy plus a distillation term from a frozen teacher), on the run
lifecycle of `abkd.run`.

Per step: loss = ce_weight * CE(student) + kd_ratio * distill(student_logits, teacher_logits)
(`abkd.classification.LogitDistillation`), through a DeepSpeed engine (ZeRO-1 by default). The
weights are float32 (as in RepDistiller and ABKD; the fp16/bf16 sections of --deepspeed_config are
ignored); `--precision bf16` runs the forward passes under bf16 autocast, with BatchNorm and the
losses in float32. Per epoch: train loss/CE/KD/accuracy, test top-1/top-5 and
timings go to `<save>/log.txt`; the best test top-1 is kept in `<save>/<model>_best.pth` and
every `--save-freq` epochs (and the last) in `ckpt_epoch_<n>.pth`, both `{"model": state_dict,
"epoch": n, "accuracy": top1}` (the zoo's format); `<save>/checkpoints/` holds the resumable
DeepSpeed checkpoint.

Batching follows the reference (a torch DataLoader with shuffle=True and drop_last=False): each
epoch is a fresh permutation, and the examples that do not fill a global batch form one last,
smaller step (`abkd.sampling.GlobalBatchSampler(drop_last=False)`), split evenly over ranks.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from abkd import engine as E
from abkd.classification import PRECISIONS, LogitDistillation, autocast_context, fp32_deepspeed_config, trained_module
from abkd.curriculum import Curriculum, digest, set_temperature
from abkd.run import Run, all_reduce_sum, atomic_save
from abkd.sampling import GlobalBatchSampler
from abkd.schedules import build_step_decay_scheduler
from standard_classification.data import ARCHIVE, DIRECTORY, CifarSplit, ContrastiveIndices, eval_batches, train_batches

DEFAULT_DS_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "deepspeed" / "ds_config.json"
RANK_COMMAND = "standard_classification.rank_difficulty"  # the POCL ranking of a run's training images
# Depthwise/grouped students are trained at a smaller learning rate in the CRD recipe.
SMALL_LR_MODELS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")


def add_training_args(parser: argparse.ArgumentParser) -> None:
    """Flags shared by teacher and student training. Canonical names are those of the LLM
    recipe; the CRD/RepDistiller spellings are kept as aliases."""
    data = parser.add_argument_group("data")
    data.add_argument("--data-folder", default="data/cifar100", help="folder with cifar-100-python/ or cifar-100-python.tar.gz")
    optim = parser.add_argument_group("optimisation (SGD with step decay)")
    optim.add_argument("--epochs", type=int, default=240, help="number of training epochs")
    optim.add_argument("--lr", "--learning_rate", type=float, help="initial SGD learning rate (default 0.05; 0.01 for MobileNetV2/ShuffleV1/ShuffleV2)")
    optim.add_argument("--lr-decay-epochs", "--lr_decay_epochs", default="150,180,210", help="comma-separated epochs after which the learning rate is decayed")
    optim.add_argument("--lr-decay-rate", "--lr_decay_rate", type=float, default=0.1, help="factor applied to the learning rate at each --lr-decay-epochs")
    optim.add_argument("--weight-decay", "--weight_decay", type=float, default=5e-4, help="SGD weight decay (L2) on every parameter")
    optim.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    optim.add_argument("--batch-size", "--batch_size", type=int, default=64,
                       help="training images per process and step (the global batch is this times the number of processes)")
    optim.add_argument("--eval-batch-size", type=int, default=256, help="test images per process and forward pass")
    optim.add_argument("--precision", choices=list(PRECISIONS), default="fp32",
                       help="fp32 (the reference's); bf16: forward passes under bf16 autocast, weights and BatchNorm in float32")
    run = parser.add_argument_group("run")
    run.add_argument("--seed", type=int, default=0, help="seed of initialisation, shuffling and augmentation")
    run.add_argument("--trial", default="0", help="free-form trial id appended to the default --save directory")
    run.add_argument("--save", help="output directory (default: under save/, named after the models)")
    run.add_argument("--save-freq", "--save_freq", type=int, default=40, help="write ckpt_epoch_<n>.pth every this many epochs (and at the last)")
    run.add_argument("--resume", action="store_true", help="continue from the last resumable checkpoint in <save>/checkpoints")
    run.add_argument("--resume-with-changes", action="store_true", help="with --resume: accept a longer run or other eval/save/log intervals, logged in <save>/args_history.jsonl")
    run.add_argument("--stop-after-epochs", type=int, help="end cleanly after this many epochs in this invocation (continue with --resume)")
    run.add_argument("--stop-after-iters", type=int, help="end cleanly after this many optimizer steps in this invocation (continue with --resume)")
    run.add_argument("--keep-checkpoints", type=int, default=1, help="resumable checkpoints to keep in <save>/checkpoints (one is written per epoch)")
    run.add_argument("--log-interval", type=int, default=100, help="log the training loss every N steps (0: per epoch only)")
    run.add_argument("--deepspeed_config", default=str(DEFAULT_DS_CONFIG), help="DeepSpeed JSON config (ZeRO stage 0-2)")
    run.add_argument("--report-to", choices=("none", "tensorboard"), default="none", help="also log the metrics to TensorBoard")


def resolve_training_args(parser: argparse.ArgumentParser, args: argparse.Namespace, model_name: str) -> None:
    """Validate the shared flags and fill in model-dependent defaults (in place)."""
    if args.lr is None:
        args.lr = 0.01 if model_name in SMALL_LR_MODELS else 0.05
    try:
        args.lr_decay_epochs = [int(e) for e in str(args.lr_decay_epochs).split(",") if e.strip()]
    except ValueError:
        parser.error(f"--lr-decay-epochs must be comma-separated integers, got '{args.lr_decay_epochs}'")
    for flag in ("epochs", "batch_size", "eval_batch_size", "save_freq", "keep_checkpoints"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.lr <= 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    for flag in ("stop_after_epochs", "stop_after_iters", "log_interval"):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == "log_interval" else 1):
            parser.error(f"--{flag.replace('_', '-')} must be >= {0 if flag == 'log_interval' else 1}, got {value}")


def zoo_checkpoint(module: nn.Module, epoch: int, accuracy: float) -> dict:
    state = {key: value.detach().float().cpu() if value.is_floating_point() else value.detach().cpu() for key, value in module.state_dict().items()}
    return {"model": state, "epoch": epoch, "accuracy": accuracy}


@torch.no_grad()
def evaluate(model: nn.Module, split: CifarSplit, batch_size: int, device: torch.device, precision: str = "fp32") -> dict[str, float]:
    """Test loss, top-1 and top-5 accuracy (%) over the whole split, summed over ranks."""
    was_training = model.training
    model.eval()
    loss = top1 = top5 = count = 0.0
    for images, labels in eval_batches(split, batch_size, E.rank(), E.world_size(), device):
        with autocast_context(device, precision):
            logits = model(images).float()
        loss += F.cross_entropy(logits, labels, reduction="sum").item()
        ranked = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        hits = ranked == labels[:, None]
        top1 += hits[:, 0].sum().item()
        top5 += hits.any(dim=-1).sum().item()
        count += len(labels)
    model.train(was_training)
    loss, top1, top5, count = all_reduce_sum([loss, top1, top5, count], device)
    return {"test_loss": loss / count, "test_acc": 100.0 * top1 / count, "test_acc_top5": 100.0 * top5 / count}


def input_fingerprints(args: argparse.Namespace) -> dict[str, str]:
    """The SHA-256 of the CIFAR-100 files and, for a student, of --teacher-ckpt: recorded in the
    run's run.json and compared by --resume (abkd.run), which refuses other contents at the same path."""
    folder = Path(args.data_folder)
    prints = {f"--data-folder {name}": E.file_sha256(folder / name) for name in (f"{DIRECTORY}/train", f"{DIRECTORY}/test", ARCHIVE) if (folder / name).is_file()}
    if getattr(args, "teacher_ckpt", None) and Path(args.teacher_ckpt).is_file():  # a missing one is reported by the loader
        prints["--teacher-ckpt"] = E.file_sha256(Path(args.teacher_ckpt))
    return prints


def ranking_identity(data_folder: str | Path, train_set: CifarSplit, teacher_ckpt: str | Path) -> dict:
    """What a POCL ranking must have been made for to train this run (`abkd.curriculum.load_ranking`):
    the training set (the SHA-256 of its images and labels, its size) and the teacher checkpoint."""
    return {
        "dataset": str(Path(data_folder).resolve()), "examples": len(train_set),
        "dataset_fingerprint": digest(train_set.images.numpy().tobytes(), train_set.labels.numpy().tobytes()),
        "teacher": str(Path(teacher_ckpt).resolve()), "teacher_fingerprint": E.file_sha256(Path(teacher_ckpt)),
    }


def train(run: Run, model_name: str, student: nn.Module, train_set: CifarSplit, test_set: CifarSplit,
          teacher: nn.Module | None = None, distill: nn.Module | None = None, ce_weight: float = 1.0, kd_ratio: float = 0.0,
          add: nn.Module | None = None, add_weight: float = 0.0, contrast: ContrastiveIndices | None = None,
          ranked_ids: list[int] | None = None) -> dict:
    """Train `student` for --epochs (resuming if asked) on ce_weight * CE + kd_ratio * distill
    (+ add_weight * add). A term with parameters or buffers (CRD, ITRD) is trained, saved and
    resumed with the student; `contrast` adds CRD's indices to the batches. With `ranked_ids`
    (easy to hard) the run follows POCL's Baby Step stages (abkd/curriculum.py: one SGD and one
    step-decay schedule over the whole curriculum, which sets the kd_ratio and the term's
    temperature per stage). Returns the final state (epoch, best_accuracy, best_epoch) with
    `history`, the per-epoch metrics of this invocation."""
    args, device = run.args, run.device
    sampler = GlobalBatchSampler(len(train_set), args.batch_size, 1, E.world_size(), E.rank(), args.seed, drop_last=False)
    curriculum = None
    if ranked_ids is not None:
        def set_stage(temperature: float, stage_kd_ratio: float) -> None:  # called by run.fit, once `objective` exists
            set_temperature(distill, temperature)
            objective.kd_ratio = stage_kd_ratio

        curriculum = Curriculum.from_args(args, ranked_ids, sampler, apply=set_stage, log=run.log.info)
    ds_config = fp32_deepspeed_config(E.load_deepspeed_config(args.deepspeed_config, micro_batch_size=args.batch_size, gradient_accumulation_steps=1))
    if E.zero_stage(ds_config) > 2:
        raise ValueError(f"--deepspeed_config {args.deepspeed_config}: ZeRO stage 3 is not supported for the CIFAR models (use 0-2)")
    model = trained_module(student, distill)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    scheduler = build_step_decay_scheduler(optimizer, steps_per_epoch=sampler.steps_per_epoch, decay_epochs=args.lr_decay_epochs, rate=args.lr_decay_rate,
                                           clock=None if curriculum is None else curriculum.full_data_step)
    engine = E.initialize(model.to(device), optimizer, scheduler, ds_config, f"--deepspeed_config {args.deepspeed_config}")
    if teacher is not None:
        teacher = teacher.to(device).eval().requires_grad_(False)
    objective = LogitDistillation(engine, ce_weight=ce_weight, kd_ratio=kd_ratio, teacher=teacher, distill=distill, precision=args.precision,
                                  add=add, add_weight=add_weight)
    run.log.info(f"precision {args.precision}; ZeRO stage {E.zero_stage(ds_config)}; {len(test_set)} test images, {len(train_set.classes)} classes")
    run.state.update(best_accuracy=0.0, best_epoch=0)
    if curriculum is not None:
        run.state.update(curriculum=None)
    run.resume(engine)

    def epoch_batches(epoch: int):
        objective.epoch = epoch  # DKD's warm-up
        return train_batches(train_set, sampler, device, contrast)

    def on_epoch_end(done: int, metrics: dict) -> dict:
        """Test, then the zoo-format model files; every rank reaches the same best-accuracy
        decision from the all-reduced test accuracy."""
        scores = evaluate(student, test_set, args.eval_batch_size, device, args.precision)
        state = run.state
        files = []
        if not math.isfinite(scores["test_acc"]):  # NaN would become the best and then compare False with every later epoch
            run.log.info(f"warning: test accuracy {scores['test_acc']} after epoch {done}: not a candidate for {model_name}_best.pth")
        elif scores["test_acc"] > state["best_accuracy"] or state["best_epoch"] == 0:
            state["best_accuracy"], state["best_epoch"] = scores["test_acc"], done
            files.append(run.save_dir / f"{model_name}_best.pth")
        if done % args.save_freq == 0 or done == args.epochs:
            files.append(run.save_dir / f"ckpt_epoch_{done}.pth")
        if E.is_main_process():
            for path in files:
                atomic_save(zoo_checkpoint(student, done, scores["test_acc"]), path)
        return scores

    finished = run.fit(engine, objective, sampler, epoch_batches, on_epoch_end, curriculum)
    state = {key: run.state[key] for key in ("epoch", "best_accuracy", "best_epoch")}
    if finished:
        run.log.info(f"finished {args.epochs} epochs; best top-1 {state['best_accuracy']:.2f} at epoch {state['best_epoch']}")
        run.log.json("best.json", {"model": model_name, "best_accuracy": state["best_accuracy"], "best_epoch": state["best_epoch"]})
    run.close()
    return {**state, "history": run.history}
