"""Processed instruction and language-modelling datasets, their collation and batch sampling.

The processed format is written by `tools.process_data_dolly` / `tools.process_data_pretrain`:
a `datasets.DatasetDict` on disk (Arrow, memory-mapped) with `train`/`valid` splits and a
`meta.json` beside it.

Labels are aligned with the positions that predict them: `labels[t]` is the token the model should
emit after reading `input_ids[: t + 1]` (i.e. `input_ids[t + 1]`), or -100. Prompt and padding
positions are -100, so the loss never needs to shift logits.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from abkd.fused import IGNORE_INDEX


def load_processed(data_dir: str | Path, tokenizer=None, *, flag: str = "--data-dir"):
    """Load a processed DatasetDict and its meta.json, checking it matches `tokenizer`."""
    import datasets

    data_dir = Path(data_dir)
    meta_path = data_dir / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{flag} {data_dir}: no processed dataset here (missing meta.json); run tools/process_data_dolly.py first"
        )
    meta = json.loads(meta_path.read_text())
    if tokenizer is not None and meta.get("vocab_size") != len(tokenizer):
        raise ValueError(
            f"{flag} {data_dir} was tokenised with a vocabulary of {meta.get('vocab_size')} tokens "
            f"({meta.get('tokenizer')}), but the model's tokenizer has {len(tokenizer)}: re-process the data"
        )
    return datasets.load_from_disk(str(data_dir)), meta


class InstructionCollator:
    """Right-padded prompt + response batches with next-token labels on the response only."""

    def __init__(self, pad_token_id: int, max_length: int):
        self.pad_token_id = pad_token_id
        self.max_length = max_length

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        sequences, first_target = [], []
        for row in rows:
            tokens = (list(row["prompt_ids"]) + list(row["response_ids"]))[: self.max_length]
            sequences.append(tokens)
            first_target.append(len(row["prompt_ids"]))  # index of the first response token
        length = max(len(s) for s in sequences)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        for i, (tokens, start) in enumerate(zip(sequences, first_target)):
            n = len(tokens)
            input_ids[i, :n] = torch.tensor(tokens)
            attention_mask[i, :n] = 1
            # Position t predicts token t + 1; response tokens are the targets.
            first = max(start - 1, 0)
            if first < n - 1:
                labels[i, first : n - 1] = input_ids[i, first + 1 : n]
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if "id" in rows[0]:
            batch["ids"] = torch.tensor([row["id"] for row in rows])
        return batch


class LMCollator:
    """Packed language-modelling blocks: every position predicts the next token."""

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        input_ids = torch.tensor([list(row["input_ids"]) for row in rows], dtype=torch.long)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        labels[:, :-1] = input_ids[:, 1:]
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


class GlobalBatchSampler:
    """Seeded per-epoch shuffling that makes a data-parallel run reproducible across layouts.

    Each optimizer step consumes one global batch of micro_batch x grad_accum x world examples.
    Micro-batch m of rank r takes slice (m * world + r) of it, so 2 processes x 1 accumulation
    step see exactly the micro-batches that 1 process x 2 accumulation steps sees. The trailing
    examples that do not fill a global batch are dropped each epoch (`dropped` says how many).
    """

    def __init__(self, size: int, micro_batch: int, grad_accum: int, world: int, rank: int, seed: int, shuffle: bool = True):
        self.size, self.micro_batch, self.grad_accum = size, micro_batch, grad_accum
        self.world, self.rank, self.seed, self.shuffle = world, rank, seed, shuffle
        self.global_batch = micro_batch * grad_accum * world
        self.steps_per_epoch = size // self.global_batch
        self.dropped = size - self.steps_per_epoch * self.global_batch
        self.epoch = 0
        self.skip_steps = 0
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"the training set has {size} examples, fewer than one global batch "
                f"({micro_batch} x {grad_accum} accumulation x {world} processes)"
            )

    def set_epoch(self, epoch: int, skip_steps: int = 0) -> None:
        """Select the epoch's order; `skip_steps` resumes part-way through it."""
        self.epoch, self.skip_steps = epoch, skip_steps

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order()
        for step in range(self.skip_steps, self.steps_per_epoch):
            base = step * self.global_batch
            for micro in range(self.grad_accum):
                start = base + (micro * self.world + self.rank) * self.micro_batch
                yield order[start : start + self.micro_batch]

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.skip_steps) * self.grad_accum


def shard_indices(size: int, world: int, rank: int) -> list[int]:
    """Evaluation sharding without padding: rank r takes r, r + world, ..."""
    return list(range(rank, size, world))


def batches(indices: Sequence[int], batch_size: int) -> list[list[int]]:
    return [list(indices[i : i + batch_size]) for i in range(0, len(indices), batch_size)]


def num_batches(size: int, batch_size: int) -> int:
    return math.ceil(size / batch_size)
