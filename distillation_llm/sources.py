"""Where a training batch comes from. SFT, KD, SeqKD, ImitKD, GKD and DistiLLM differ only here and
in the loss, so the training loop takes a batch source and never branches on the method.

A source turns the dataset rows of one micro-batch into the collated batch that is trained on:

- `DatasetSource`: the rows as they are (SFT, word-level KD, SeqKD on teacher-generated data).
- `StudentGeneratedSource`: with probability `threshold` (1 for ImitKD, lambda for GKD, DistiLLM's
  adaptive threshold), the responses are replaced by the student's own samples (student-generated
  outputs, SGO), either freshly generated or replayed from a buffer of earlier generations
  (DistiLLM's off-policy replay; its GKD and ImitKD also train on random buffer batches).

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

    needs_initial_validation = False
    validates_at_epoch_ends = True

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class AdaptiveThreshold:
    """DistiLLM's adaptive SGO probability (Ko et al. 2024, sec. 3.2), as its finetune.py does it.

    The first validation loss (DistiLLM evaluates at step 0, before any update) is the reference.
    The probability starts at `initial` and rises by `step` (capped at 1) at each validation whose
    loss is at least the reference plus `loss_eps` (`>=`); only such an increase moves the
    reference to the new loss, so it is the loss at the last increase, not the previous validation.
    """

    def __init__(self, initial: float, loss_eps: float, step: float = 0.1):
        if not 0.0 <= initial <= 1.0:
            raise ValueError(f"--init-threshold must lie in [0, 1], got {initial}")
        self.value, self.loss_eps, self.step = initial, loss_eps, step
        self.reference_loss: float | None = None

    def update(self, valid_loss: float) -> float:
        if self.reference_loss is None:
            self.reference_loss = valid_loss
        elif valid_loss >= self.reference_loss + self.loss_eps:
            self.value = min(1.0, self.value + self.step)
            self.reference_loss = valid_loss
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value, "reference_loss": self.reference_loss}

    def load_state_dict(self, state: dict) -> None:
        self.value, self.reference_loss = float(state["value"]), state["reference_loss"]


def fresh_share(schedule: str, progress: float) -> float:
    """DistiLLM's `--replay-ratio`: the share of student-generated batches that are freshly
    generated rather than replayed from the buffer, at training `progress` in (0, 1]. The
    reference multiplies it by the threshold (`samp_threshold` in its finetune.py): "constant"
    0.5, "increasing" progress, "decreasing" (its default) 1 - progress, so that with
    "decreasing" replay takes a growing share of the student-generated batches."""
    if schedule == "constant":
        return 0.5
    if schedule == "increasing":
        return progress
    if schedule == "decreasing":
        return 1.0 - progress
    raise ValueError(f"unknown --replay-ratio '{schedule}'; valid: {', '.join(REPLAY_SCHEDULES)}")


class StudentGeneratedSource:
    """Replace responses with the student's samples with probability `threshold` (a constant, or
    DistiLLM's `AdaptiveThreshold`, whose state is saved with the source's).

    `model` is the student being trained (generation switches it to eval mode and back).
    `capacity` > 0 keeps a FIFO buffer of the generated rows, used one of two ways, as DistiLLM's
    finetune.py does:
    - `fresh` given (its adaptive-* types): a student-generated batch is freshly generated with
      probability `fresh(progress)` (`fresh_share`) and otherwise replayed from the buffer, but
      replay starts only once the buffer is full; until then every such batch is generated.
    - `fresh` None (its mixed-* types, i.e. GKD and ImitKD): every generation goes into the buffer
      and the batch trained on is a random draw of rows from it.
    `capacity` 0 trains on each fresh generation itself.
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
        fresh: Callable[[float], float] | None = None,
        seed: int = 0,
    ):
        if capacity < 0:
            raise ValueError(f"--capacity must be >= 0, got {capacity}")
        self.collate, self.model, self.tokenizer, self.settings = collate, model, tokenizer, settings
        self.max_prompt_length, self.threshold, self.fresh, self.capacity = max_prompt_length, threshold, fresh, capacity
        self.buffer: deque[dict] = deque(maxlen=capacity)
        self.rng = random.Random(seed)
        self.counts = {"dataset": 0, "generated": 0, "replayed": 0}
        self.calls = 0

    @property
    def probability(self) -> float:
        return self.threshold.value if isinstance(self.threshold, AdaptiveThreshold) else self.threshold

    def choose(self, batch_size: int, progress: float) -> str:
        """The origin of the next batch: dataset, generated or replayed. One uniform draw decides,
        as in the reference: below threshold x fresh share, generate; below the threshold, replay
        if the buffer is full (else generate); otherwise the dataset batch."""
        draw, probability = self.rng.random(), self.probability
        if draw >= probability:
            return "dataset"
        full = self.capacity > 0 and len(self.buffer) >= self.capacity
        if self.fresh is not None and full and draw >= probability * self.fresh(progress):
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
            if self.fresh is None and self.capacity > 0:
                rows = self.rng.sample(list(self.buffer), len(rows))
        return self.collate(rows)

    def on_validation(self, valid_loss: float) -> str | None:
        """Adapt DistiLLM's threshold to a new validation loss (the first one, at step 0, is its
        reference); returns a line for the log."""
        if not isinstance(self.threshold, AdaptiveThreshold):
            return None
        self.threshold.update(valid_loss)
        return f"student-generated batch probability {self.threshold.value:.2f}; batches so far {self.counts}"

    validates_at_epoch_ends = True

    @property
    def needs_initial_validation(self) -> bool:
        """DistiLLM's threshold takes its reference loss from a validation before training."""
        return isinstance(self.threshold, AdaptiveThreshold) and self.threshold.reference_loss is None

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
