"""Learning-rate schedules as pure functions of the optimizer step (saved with the scheduler)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import torch

LR_DECAY_STYLES = ("constant", "cosine", "linear")


def lr_multiplier(step: int, *, warmup: int, total: int, style: str, min_ratio: float = 0.0) -> float:
    """Factor applied to the peak learning rate before optimizer step `step` (0-based).

    Linear warm-up over `warmup` steps from 1/warmup to 1, then `style` decay from 1 to
    `min_ratio` at step `total`: constant stays at 1, linear and cosine reach `min_ratio`.
    """
    if style not in LR_DECAY_STYLES:
        raise ValueError(f"unknown lr decay style '{style}'; valid: {', '.join(LR_DECAY_STYLES)}")
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if style == "constant":
        return 1.0
    progress = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
    if style == "linear":
        decay = 1.0 - progress
    else:
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * decay


def build_scheduler(optimizer: torch.optim.Optimizer, *, warmup: int, total: int, style: str, min_ratio: float = 0.0):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(lr_multiplier, warmup=warmup, total=total, style=style, min_ratio=min_ratio)
    )


def step_decay_multiplier(step: int, *, steps_per_epoch: int, decay_epochs: Sequence[int], rate: float) -> float:
    """Factor applied to the initial learning rate before optimizer step `step` (0-based):
    `rate` to the power of the number of `decay_epochs` already reached, the epoch being
    step // steps_per_epoch (the CRD/RepDistiller CIFAR recipe: x0.1 after epochs 150, 180, 210)."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    epoch = step // steps_per_epoch
    return rate ** sum(epoch >= decay for decay in decay_epochs)


def build_step_decay_scheduler(optimizer: torch.optim.Optimizer, *, steps_per_epoch: int, decay_epochs: Sequence[int], rate: float,
                               clock: Callable[[int], int] | None = None):
    """`step_decay_multiplier` per optimizer step. `clock` maps the step to the step of a run of
    `steps_per_epoch`-step epochs at the same point of training, where epochs differ in length
    (a POCL curriculum's: `abkd.curriculum.Curriculum.full_data_step`)."""
    factor = partial(step_decay_multiplier, steps_per_epoch=steps_per_epoch, decay_epochs=tuple(decay_epochs), rate=rate)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor if clock is None else on_clock(factor, clock))


def on_clock(factor: Callable[[int], float], clock: Callable[[int], int]) -> Callable[[int], float]:
    """`factor` read at `clock(step)` (a plain function, which LambdaLR's state_dict leaves out)."""
    def at_clock(step: int) -> float:
        return factor(clock(step))
    return at_clock
