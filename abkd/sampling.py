"""Data-parallel batch sampling shared by the three training loops."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch


class GlobalBatchSampler:
    """Seeded per-epoch shuffling that makes a data-parallel run reproducible across layouts.

    Each optimizer step consumes one global batch of micro_batch x grad_accum x world examples.
    Micro-batch m of rank r takes slice (m * world + r) of it, so 2 processes x 1 accumulation
    step see exactly the micro-batches that 1 process x 2 accumulation steps sees.

    The trailing examples that do not fill a global batch: with `drop_last` (the default) they are
    left out of the epoch (`dropped` says how many). Without it they form one last, smaller step,
    cut into grad_accum x world nearly equal micro-batches in the same slice order, like a torch
    DataLoader with drop_last=False; a tail shorter than grad_accum x world examples, which would
    leave some micro-batch empty, is still dropped.

    `select(examples)` restricts the sampler to a subset of the dataset (a curriculum stage's
    easiest examples): the epoch's permutation is then drawn over the subset and yields its
    dataset indices.
    """

    def __init__(self, size: int, micro_batch: int, grad_accum: int, world: int, rank: int, seed: int, shuffle: bool = True,
                 drop_last: bool = True):
        self.micro_batch, self.grad_accum = micro_batch, grad_accum
        self.world, self.rank, self.seed, self.shuffle, self.drop_last = world, rank, seed, shuffle, drop_last
        self.global_batch = micro_batch * grad_accum * world
        self.examples: list[int] | None = None
        self.epoch = 0
        self.skip_steps = 0
        self._layout(size)

    def _layout(self, size: int) -> None:
        self.size = size
        self.steps_per_epoch = size // self.global_batch
        tail = size - self.steps_per_epoch * self.global_batch
        self.tail = 0 if self.drop_last or tail < self.grad_accum * self.world else tail
        self.steps_per_epoch += self.tail > 0
        self.dropped = tail - self.tail
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"the training set has {size} examples, fewer than one global batch "
                f"({self.micro_batch} x {self.grad_accum} accumulation x {self.world} processes)"
            )

    def select(self, examples: Sequence[int]) -> None:
        """Draw only these dataset indices from now on (all of them again: `select(range(n))`)."""
        self.examples = list(examples)
        self._layout(len(self.examples))

    def set_epoch(self, epoch: int, skip_steps: int = 0) -> None:
        """Select the epoch's order; `skip_steps` resumes part-way through it."""
        self.epoch, self.skip_steps = epoch, skip_steps

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size)) if self.examples is None else list(self.examples)
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        return order if self.examples is None else [self.examples[i] for i in order]

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order()
        pieces = self.grad_accum * self.world
        for step in range(self.skip_steps, self.steps_per_epoch):
            base = step * self.global_batch
            length = min(self.global_batch, self.size - self.dropped - base)
            for micro in range(self.grad_accum):
                piece = micro * self.world + self.rank
                yield order[base + piece * length // pieces : base + (piece + 1) * length // pieces]

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.skip_steps) * self.grad_accum


def shard_indices(size: int, world: int, rank: int) -> list[int]:
    """Evaluation sharding without padding: rank r takes r, r + world, ..."""
    return list(range(rank, size, world))


def batches(indices: Sequence[int], batch_size: int) -> list[list[int]]:
    return [list(indices[i : i + batch_size]) for i in range(0, len(indices), batch_size)]


def num_batches(size: int, batch_size: int) -> int:
    return math.ceil(size / batch_size)
