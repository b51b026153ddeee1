"""The CIFAR-100 training loop shared by `train_teacher` (cross-entropy only) and
`train_student` (cross-entropy plus a distillation term from a frozen teacher).

Per step: loss = ce_weight * CE(student) + kd_weight * distill(student_logits, teacher_logits),
through a DeepSpeed engine (ZeRO-1 by default; gloo/fp32 on CPU, bf16 on CUDA). Per epoch: train
loss/CE/KD/accuracy, test top-1/top-5 and timings go to `<save>/log.txt`; the best test top-1 is
kept in `<save>/<model>_best.pth` and every `--save_freq` epochs (and the last) in
`ckpt_epoch_<n>.pth`, both `{"model": state_dict, "epoch": n, "accuracy": top1}` (the zoo's
format); `<save>/checkpoints/` holds the resumable DeepSpeed checkpoint of the last epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from abkd import engine as E
from abkd.runlog import RunLog
from standard_classification.data import EpochBatches, load_cifar100

CHECKPOINTS = "checkpoints"
DEFAULT_DS_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "deepspeed" / "ds_config.json"
# Depthwise/grouped students are trained at a smaller learning rate in the CRD recipe.
SMALL_LR_MODELS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")


def add_training_args(parser: argparse.ArgumentParser) -> None:
    """Flags shared by teacher and student training (names as in CRD/RepDistiller)."""
    data = parser.add_argument_group("data")
    data.add_argument("--data-folder", default="data/cifar100", help="folder with cifar-100-python/ or cifar-100-python.tar.gz")
    optim = parser.add_argument_group("optimisation (SGD with step decay)")
    optim.add_argument("--epochs", type=int, default=240, help="number of training epochs")
    optim.add_argument("--learning_rate", type=float, help="initial SGD learning rate (default 0.05; 0.01 for MobileNetV2/ShuffleV1/ShuffleV2)")
    optim.add_argument("--lr_decay_epochs", default="150,180,210", help="comma-separated epochs after which the learning rate is decayed")
    optim.add_argument("--lr_decay_rate", type=float, default=0.1, help="factor applied to the learning rate at each --lr_decay_epochs")
    optim.add_argument("--weight_decay", type=float, default=5e-4, help="SGD weight decay (L2) on every parameter")
    optim.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    optim.add_argument("--batch_size", type=int, default=64, help="global training batch size (split evenly over processes)")
    run = parser.add_argument_group("run")
    run.add_argument("--seed", type=int, default=0, help="seed of initialisation, shuffling and augmentation")
    run.add_argument("--trial", default="0", help="free-form trial id appended to the default --save directory")
    run.add_argument("--save", help="output directory (default: under save/, named after the models)")
    run.add_argument("--save_freq", type=int, default=40, help="write ckpt_epoch_<n>.pth every this many epochs (and at the last)")
    run.add_argument("--resume", action="store_true", help="continue from the last resumable checkpoint in <save>/checkpoints")
    run.add_argument("--stop-after-epochs", type=int, help="end cleanly after this many epochs in this invocation (continue with --resume)")
    run.add_argument("--deepspeed_config", default=str(DEFAULT_DS_CONFIG), help="DeepSpeed JSON config (ZeRO stage 0-2)")
    run.add_argument("--report-to", choices=("none", "tensorboard"), default="none", help="also log the metrics to TensorBoard")


def resolve_training_args(parser: argparse.ArgumentParser, args: argparse.Namespace, model_name: str) -> None:
    """Validate the shared flags and fill in model-dependent defaults (in place)."""
    if args.learning_rate is None:
        args.learning_rate = 0.01 if model_name in SMALL_LR_MODELS else 0.05
    try:
        args.lr_decay_epochs = [int(e) for e in str(args.lr_decay_epochs).split(",") if e.strip()]
    except ValueError:
        parser.error(f"--lr_decay_epochs must be comma-separated integers, got '{args.lr_decay_epochs}'")
    for flag, value, minimum in (("--epochs", args.epochs, 1), ("--batch_size", args.batch_size, 1), ("--save_freq", args.save_freq, 1)):
        if value < minimum:
            parser.error(f"{flag} must be >= {minimum}, got {value}")
    if args.learning_rate <= 0:
        parser.error(f"--learning_rate must be > 0, got {args.learning_rate}")
    if args.stop_after_epochs is not None and args.stop_after_epochs < 1:
        parser.error(f"--stop-after-epochs must be >= 1, got {args.stop_after_epochs}")


def epoch_step_decay(steps_per_epoch: int, decay_epochs: list[int], rate: float):
    """LR factor as a function of the optimizer step: rate^(number of decay epochs reached).
    DeepSpeed steps the scheduler once per optimizer step, so epochs are counted in steps."""

    def factor(step: int) -> float:
        epoch = step // steps_per_epoch
        return rate ** sum(epoch >= decay for decay in decay_epochs)

    return factor


@dataclass
class Objective:
    """What a step optimises: ce_weight * CE + kd_weight * distill(student, teacher)."""

    ce_weight: float = 1.0
    kd_weight: float = 0.0
    teacher: nn.Module | None = None
    distill: nn.Module | None = None

    def __call__(self, engine, images: torch.Tensor, labels: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        student_logits = engine(images)
        ce = F.cross_entropy(student_logits.float(), labels)
        out = {"ce": ce, "loss": self.ce_weight * ce, "logits": student_logits}
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(images)
            out["kd"] = self.distill(student_logits, teacher_logits, labels, epoch)
            out["loss"] = out["loss"] + self.kd_weight * out["kd"]
        return out


def zoo_checkpoint(module: nn.Module, epoch: int, accuracy: float) -> dict:
    state = {key: value.detach().float().cpu() if value.is_floating_point() else value.detach().cpu() for key, value in module.state_dict().items()}
    return {"model": state, "epoch": epoch, "accuracy": accuracy}


def save_atomic(payload: dict, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    torch.save(payload, temporary)
    os.replace(temporary, path)


def _all_reduce(values: list[float], device: torch.device) -> list[float]:
    totals = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_initialized() and E.world_size() > 1:
        torch.distributed.all_reduce(totals)
    return totals.tolist()


@torch.no_grad()
def average_buffers(module: nn.Module) -> None:
    """Average BatchNorm running statistics over ranks. DeepSpeed, unlike DDP, does not keep
    buffers in sync, so each rank's statistics drift towards its own shard of the data."""
    if E.world_size() == 1:
        return
    for buffer in module.buffers():
        if buffer.is_floating_point():
            torch.distributed.all_reduce(buffer)
            buffer.div_(E.world_size())


@torch.no_grad()
def evaluate(model: nn.Module, batches: EpochBatches, device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """Test loss, top-1 and top-5 accuracy (%) over the whole split, summed over ranks."""
    was_training = model.training
    model.eval()
    loss = top1 = top5 = count = 0.0
    for images, labels in batches.epoch(0, device):
        logits = model(images.to(dtype)).float()
        loss += F.cross_entropy(logits, labels, reduction="sum").item()
        ranked = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        hits = ranked == labels[:, None]
        top1 += hits[:, 0].sum().item()
        top5 += hits.any(dim=-1).sum().item()
        count += len(labels)
    model.train(was_training)
    loss, top1, top5, count = _all_reduce([loss, top1, top5, count], device)
    return {"test_loss": loss / count, "test_acc": 100.0 * top1 / count, "test_acc_top5": 100.0 * top5 / count}


def train_epoch(engine, objective: Objective, batches: EpochBatches, epoch: int, device, dtype, args) -> dict[str, float]:
    engine.train()
    lr = engine.get_lr()[0]  # the rate used during this epoch (DeepSpeed steps the scheduler per step)
    sums = {"loss": 0.0, "ce": 0.0, "kd": 0.0, "correct": 0.0, "count": 0.0}
    started = time.perf_counter()
    bar = tqdm(total=batches.steps_per_epoch, desc=f"epoch {epoch + 1}/{args.epochs}", disable=not E.is_main_process(), leave=False, dynamic_ncols=True)
    for images, labels in batches.epoch(epoch, device):
        out = objective(engine, images.to(dtype), labels, epoch)
        engine.backward(out["loss"])
        engine.step()
        n = len(labels)
        for key in ("loss", "ce", "kd"):
            if key in out:
                sums[key] += out[key].item() * n
        sums["correct"] += (out["logits"].argmax(dim=-1) == labels).sum().item()
        sums["count"] += n
        bar.update(1)
        bar.set_postfix(loss=f"{out['loss'].item():.4f}")
    bar.close()
    elapsed = time.perf_counter() - started
    loss, ce, kd, correct, count = _all_reduce([sums[k] for k in ("loss", "ce", "kd", "correct", "count")], device)
    metrics = {"train_loss": loss / count, "train_ce": ce / count}
    if objective.teacher is not None:
        metrics["train_kd"] = kd / count
    metrics.update(train_acc=100.0 * correct / count, lr=lr, epoch_s=elapsed, images_per_s=count / elapsed)
    return metrics


def setup(args: argparse.Namespace, save_dir: Path) -> tuple[torch.device, RunLog]:
    """Distributed init, seeding, output directory, args.json and the log (collective)."""
    device = E.init_distributed()
    E.set_seed(args.seed)
    if E.is_main_process():
        save_dir.mkdir(parents=True, exist_ok=True)
        (save_dir / "args.json").write_text(json.dumps(vars(args), indent=2, sort_keys=True, default=str) + "\n")
    E.barrier()
    return device, RunLog(save_dir, enabled=E.is_main_process(), tensorboard=args.report_to == "tensorboard")


def run(args: argparse.Namespace, model_name: str, student: nn.Module, objective: Objective, save_dir: Path, device, log: RunLog, train_set, test_set) -> dict:
    """Train `student` for args.epochs (resuming if asked). Returns the final state (epoch,
    best_accuracy, best_epoch) with `history`, the per-epoch metrics of this invocation."""
    world = E.world_size()
    if args.batch_size % world:
        raise ValueError(f"--batch_size {args.batch_size} must be divisible by the number of processes ({world})")
    local_batch = args.batch_size // world
    train_batches = EpochBatches(train_set, local_batch, train=True, seed=args.seed, rank=E.rank(), world_size=world)
    test_batches = EpochBatches(test_set, max(local_batch, 256), train=False, rank=E.rank(), world_size=world)
    ds_config = E.load_deepspeed_config(args.deepspeed_config, micro_batch_size=local_batch, gradient_accumulation_steps=1)
    if E.zero_stage(ds_config) > 2:
        raise ValueError(f"--deepspeed_config {args.deepspeed_config}: ZeRO stage 3 is not supported for the CIFAR models (use 0-2)")
    dtype = E.training_dtype(ds_config)
    optimizer = torch.optim.SGD(student.parameters(), lr=args.learning_rate, momentum=args.momentum, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, epoch_step_decay(train_batches.steps_per_epoch, args.lr_decay_epochs, args.lr_decay_rate)
    )
    engine = E.initialize(student.to(device), optimizer, scheduler, ds_config)
    if objective.teacher is not None:
        objective.teacher = objective.teacher.to(device=device, dtype=dtype).eval().requires_grad_(False)
    log.info(
        f"world size {world} on {device.type}; dtype {dtype}; ZeRO stage {E.zero_stage(ds_config)}; {len(train_set)} train / "
        f"{len(test_set)} test images, {len(train_set.classes)} classes; {train_batches.steps_per_epoch} steps per epoch of {args.batch_size}"
    )

    state = {"epoch": 0, "best_accuracy": 0.0, "best_epoch": 0}
    if args.resume:
        tag = E.latest_checkpoint(save_dir / CHECKPOINTS)
        if tag is None:
            log.info(f"--resume: no checkpoint in {save_dir / CHECKPOINTS} yet, starting from scratch")
        else:
            client = E.load_checkpoint(engine, save_dir / CHECKPOINTS, tag)
            state.update({key: client[key] for key in state})
            log.info(f"resumed from {tag}: {state['epoch']} epochs done, best top-1 {state['best_accuracy']:.2f} at epoch {state['best_epoch']}")

    history = []
    last = args.epochs if args.stop_after_epochs is None else min(args.epochs, state["epoch"] + args.stop_after_epochs)
    for epoch in range(state["epoch"], last):
        metrics = train_epoch(engine, objective, train_batches, epoch, device, dtype, args)
        average_buffers(engine.module)
        metrics.update(evaluate(engine.module, test_batches, device, dtype))
        state["epoch"] = done = epoch + 1
        history.append({"epoch": done, **metrics})
        log.info(f"epoch {done}/{args.epochs} | " + " | ".join(f"{key} {value:.4g}" for key, value in metrics.items()))
        if log.writer is not None:
            for key, value in metrics.items():
                log.writer.add_scalar(f"epoch/{key}", value, done)
        if E.is_main_process():
            if metrics["test_acc"] > state["best_accuracy"] or state["best_epoch"] == 0:
                state["best_accuracy"], state["best_epoch"] = metrics["test_acc"], done
                save_atomic(zoo_checkpoint(engine.module, done, metrics["test_acc"]), save_dir / f"{model_name}_best.pth")
                log.info(f"best top-1 {metrics['test_acc']:.2f} at epoch {done}: saved {save_dir / f'{model_name}_best.pth'}")
            if done % args.save_freq == 0 or done == args.epochs:
                save_atomic(zoo_checkpoint(engine.module, done, metrics["test_acc"]), save_dir / f"ckpt_epoch_{done}.pth")
        # Every rank takes the best-accuracy decision from rank 0, so the saved states agree.
        best = _all_reduce([state["best_accuracy"], state["best_epoch"]] if E.is_main_process() else [0.0, 0.0], device)
        state["best_accuracy"], state["best_epoch"] = best[0], int(best[1])
        E.save_checkpoint(engine, save_dir / CHECKPOINTS, f"epoch{done}", client_state=dict(state), keep_last=1)
    if state["epoch"] < args.epochs:
        log.info(f"stopped after epoch {state['epoch']} of {args.epochs} (--stop-after-epochs); continue with --resume")
    else:
        log.info(f"finished {args.epochs} epochs; best top-1 {state['best_accuracy']:.2f} at epoch {state['best_epoch']}")
        log.json("best.json", {"model": model_name, "best_accuracy": state["best_accuracy"], "best_epoch": state["best_epoch"]})
    log.close()
    return {**state, "history": history}
