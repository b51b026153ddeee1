"""Where a training batch comes from. SFT, KD, SeqKD, ImitKD, GKD and DistiLLM differ only here and
in the loss, so the training loop takes a batch source and never branches on the method.

A source turns the dataset rows of one micro-batch into the collated batch that is trained on:

- `DatasetSource`: the rows as they are (SFT, word-level KD, SeqKD on teacher-generated data).
- `StudentGeneratedSource`: with probability `threshold` (1 for ImitKD, lambda for GKD, DistiLLM's
  adaptive threshold), the responses are replaced by the student's own samples (student-generated
  outputs, SGO), either freshly generated or, with probability `replay_ratio`, replayed from a
  buffer of earlier generations (DistiLLM's off-policy replay).

Sources keep their state (buffer, threshold) in `state_dict()`, saved per rank in checkpoints.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence

import torch

from distillation_llm.data import InstructionCollator
from distillation_llm.generation import GenerationSettings, generate

REPLAY_SCHEDULES = ("constant", "increasing", "decreasing")


class DatasetSource:
    def __init__(self, collate: InstructionCollator):
        self.collate = collate

    def __call__(self, rows: Sequence[dict], progress: float = 0.0) -> dict[str, torch.Tensor]:
        return self.collate(rows)

    def on_validation(self, valid_loss: float) -> str | None:
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class AdaptiveThreshold:
    """DistiLLM's adaptive SGO probability (Ko et al. 2024, sec. 3.2): starts at `initial` and rises
    by `step` (capped at 1) whenever the validation loss gets worse by more than `loss_eps`."""

    def __init__(self, initial: float, loss_eps: float, step: float = 0.1):
        if not 0.0 <= initial <= 1.0:
            raise ValueError(f"--init-threshold must lie in [0, 1], got {initial}")
        self.value, self.loss_eps, self.step = initial, loss_eps, step
        self.previous_loss: float | None = None

    def update(self, valid_loss: float) -> float:
        if self.previous_loss is not None and valid_loss > self.previous_loss + self.loss_eps:
            self.value = min(1.0, self.value + self.step)
        self.previous_loss = valid_loss
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value, "previous_loss": self.previous_loss}

    def load_state_dict(self, state: dict) -> None:
        self.value, self.previous_loss = float(state["value"]), state["previous_loss"]


def replay_ratio(schedule: str, progress: float, constant: float = 0.5) -> float:
    """Probability that an SGO batch is replayed rather than freshly generated, at training
    `progress` in [0, 1]: fixed, rising from 0 to 1, or falling from 1 to 0."""
    if schedule == "constant":
        return constant
    if schedule == "increasing":
        return progress
    if schedule == "decreasing":
        return 1.0 - progress
    raise ValueError(f"unknown --replay-ratio '{schedule}'; valid: {', '.join(REPLAY_SCHEDULES)}")


class StudentGeneratedSource:
    """Replace responses with the student's samples with probability `threshold` (a constant, or
    DistiLLM's `AdaptiveThreshold`, whose state is saved with the source's).

    `model` is the student being trained (generation switches it to eval mode and back).
    `capacity` > 0 keeps a FIFO replay buffer of generated rows; `replay` gives the probability,
    as a function of training progress, of drawing an SGO batch from it instead of generating.
    """

    def __init__(
        self,
        collate: InstructionCollator,
        model: torch.nn.Module,
        tokenizer,
        settings: GenerationSettings,
        *,
        max_prompt_length: int,
        threshold: float | AdaptiveThreshold,
        capacity: int = 0,
        replay: Callable[[float], float] = lambda progress: 0.0,
        seed: int = 0,
    ):
        self.collate, self.model, self.tokenizer, self.settings = collate, model, tokenizer, settings
        self.max_prompt_length, self.threshold, self.replay = max_prompt_length, threshold, replay
        self.buffer: deque[dict] = deque(maxlen=capacity) if capacity > 0 else deque(maxlen=0)
        self.rng = random.Random(seed)
        self.counts = {"dataset": 0, "generated": 0, "replayed": 0}
        self.calls = 0

    @property
    def probability(self) -> float:
        return self.threshold.value if isinstance(self.threshold, AdaptiveThreshold) else self.threshold

    def choose(self, batch_size: int, progress: float) -> str:
        """The origin of the next batch: dataset, generated or replayed."""
        if self.rng.random() >= self.probability:
            return "dataset"
        if len(self.buffer) >= batch_size and self.rng.random() < self.replay(progress):
            return "replayed"
        return "generated"

    def __call__(self, rows: Sequence[dict], progress: float = 0.0) -> dict[str, torch.Tensor]:
        origin = self.choose(len(rows), progress)
        self.counts[origin] += 1
        if origin == "replayed":
            rows = self.rng.sample(list(self.buffer), len(rows))
        elif origin == "generated":
            rows = self._generate(rows)
            self.buffer.extend(rows)
        return self.collate(rows)

    def on_validation(self, valid_loss: float) -> str | None:
        """Adapt DistiLLM's threshold to a new validation loss; returns a line for the log."""
        if not isinstance(self.threshold, AdaptiveThreshold):
            return None
        self.threshold.update(valid_loss)
        return f"student-generated batch probability {self.threshold.value:.2f}; batches so far {self.counts}"

    def _generate(self, rows: Sequence[dict]) -> list[dict]:
        self.calls += 1
        settings = GenerationSettings(**{**vars(self.settings), "seed": self.settings.seed + self.calls})
        output = generate(
            self.model, self.tokenizer, [list(row["prompt_ids"]) for row in rows], settings,
            batch_size=len(rows), max_prompt_length=self.max_prompt_length, backend="hf", progress=False,
        )
        eos = self.tokenizer.eos_token_id
        generated = []
        for row, ids in zip(rows, output.token_ids):
            response = list(ids) + ([eos] if len(ids) < settings.max_new_tokens else [])
            generated.append({"id": row["id"], "prompt_ids": list(row["prompt_ids"]), "response_ids": response})
        return generated

    def state_dict(self) -> dict:
        state = {"buffer": list(self.buffer), "rng": self.rng.getstate(), "counts": dict(self.counts), "calls": self.calls}
        if isinstance(self.threshold, AdaptiveThreshold):
            state["threshold"] = self.threshold.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.buffer.clear()
        self.buffer.extend(state["buffer"])
        self.rng.setstate(state["rng"])
        self.counts, self.calls = dict(state["counts"]), int(state["calls"])
        if isinstance(self.threshold, AdaptiveThreshold):
            self.threshold.load_state_dict(state["threshold"])
