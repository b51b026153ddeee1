"""POCL ("Being Strong Progressively!", 2025): difficulty ranking by reciprocal rank fusion and
the Baby Step scheduler, as small objects with state (saved in checkpoints, so a resumed run
continues mid-stage).

Ranking: the student scores every training example twice (for LLMs: ROUGE-L of its own
generation, higher is easier, and its LM loss on the reference, lower is easier; for image
classification, abkd/curriculum.py: its cross-entropy and the teacher-student divergence, both
lower is easier). Each signal gives a rank, and

    score = 1 / (k + rank_1) + 1 / (k + rank_2),    k = 60 by default,

sorted descending, orders the data from easy to hard (`fuse_ranks`, any number of signals). Ranks are numbered 1, 2, 3, ... after
stable sorts, as POCL does (ties broken by order); tied values may share their mean rank instead.

Baby Step: stage s = 0..S-2 trains on the easiest (s + 1) * floor(N / S) examples and the last
stage on all N (POCL's tools/rank.py), with the KD
temperature and kd-ratio rising linearly from their start to their end values over the stages.
A stage ends after a fixed number of epochs, or earlier when the validation loss has not improved
for `patience` evaluations.

As POCL's one-launcher-per-stage scripts do, the trainer (distillation_llm/finetune.py) runs each
stage as its own run: a fresh optimizer and a learning-rate schedule over the stage's own epochs
(`stage_epochs` times its size), starting from the previous stage's selected checkpoint. The
classification curriculum (abkd/curriculum.py) runs its stages in one run on one schedule, and
says why there.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from abkd.engine import read_text


def fractional_ranks(values: Sequence[float], *, descending: bool) -> list[float]:
    """1-based ranks of `values`; tied values share the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: -values[i] if descending else values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


RANK_TIES = ("sequential", "mean")


@dataclass(frozen=True)
class Signal:
    """One difficulty signal of every example: `values[i]` of example `ids[i]`; `higher_is_easier`
    says which way it ranks (ROUGE-L: higher is easier; a loss or a divergence: lower is easier)."""

    name: str
    values: Sequence[float]
    higher_is_easier: bool = False


def fuse_ranks(ids: Sequence[int], signals: Sequence[Signal], k: float = 60.0, ties: str = "sequential") -> list[dict]:
    """Reciprocal rank fusion of any number of signals: examples ordered easy to hard by

        score = sum over signals of 1 / (k + rank_signal),

    each a dict {"id", <signal name>: value ..., "rank_<signal name>": rank ..., "score"} (the
    ranking file's row). ties "sequential" is POCL's tools/rank.py: chained stable sorts of the
    examples in their given order (by the first signal, then that order by the second, ..., then
    that order by score), each numbering its examples 1, 2, 3, ..., so tied values get different
    ranks, the earlier example in the previous sort's order the better one. ties "mean": tied
    values share the mean of the ranks they span, and tied scores keep the id order.
    """
    if not signals:
        raise ValueError("reciprocal rank fusion needs at least one signal")
    if any(len(signal.values) != len(ids) for signal in signals):
        lengths = ", ".join(f"{signal.name} {len(signal.values)}" for signal in signals)
        raise ValueError(f"ids and every signal must have the same length, got ids {len(ids)}, {lengths}")
    if k < 0:
        raise ValueError(f"the RRF constant k must be non-negative, got {k}")
    if ties not in RANK_TIES:
        raise ValueError(f"unknown rank ties '{ties}'; valid: {', '.join(RANK_TIES)}")
    n = len(ids)
    ranks: list[list[float]] = []
    order = list(range(n))
    for signal in signals:
        sign = -1.0 if signal.higher_is_easier else 1.0
        if ties == "mean":
            ranks.append(fractional_ranks(signal.values, descending=signal.higher_is_easier))
            continue
        order = sorted(order, key=lambda i, values=signal.values, sign=sign: sign * values[i])
        rank = [0.0] * n
        for position, i in enumerate(order):
            rank[i] = float(position + 1)
        ranks.append(rank)
    rows = []
    for i in range(n):
        score = 0.0
        for rank in ranks:
            score += 1.0 / (k + rank[i])
        rows.append({
            "id": int(ids[i]),
            **{signal.name: float(signal.values[i]) for signal in signals},
            **{f"rank_{signal.name}": rank[i] for signal, rank in zip(signals, ranks)},
            "score": score,
        })
    if ties == "mean":
        return sorted(rows, key=lambda row: (-row["score"], row["id"]))
    return sorted([rows[i] for i in order], key=lambda row: -row["score"])


@dataclass
class RankedExample:
    id: int
    rouge: float
    loss: float
    rank_rouge: float
    rank_loss: float
    score: float


def reciprocal_rank_fusion(
    ids: Sequence[int], rouge: Sequence[float], loss: Sequence[float], k: float = 60.0, ties: str = "sequential"
) -> list[RankedExample]:
    """Examples ordered easy to hard by RRF of their ROUGE-L (higher easier) and loss (lower
    easier) ranks: `fuse_ranks` of those two signals, in that order (see its `ties`)."""
    if not (len(ids) == len(rouge) == len(loss)):
        raise ValueError(f"ids, rouge and loss must have the same length, got {len(ids)}, {len(rouge)}, {len(loss)}")
    rows = fuse_ranks(ids, [Signal("rouge", rouge, higher_is_easier=True), Signal("loss", loss)], k=k, ties=ties)
    return [RankedExample(**row) for row in rows]


def read_ranked_ids(path: str | Path) -> list[int]:
    """The example ids of a ranking file (`ranking.jsonl`, one JSON object with an "id" per line),
    in its order, easy to hard. ValueError naming file:line for a line that is not UTF-8 or not
    JSON, an id that is not an integer (3.0 or "3" included: an id is never rounded) and an id
    ranked twice."""
    ids: list[int] = []
    line_of: dict[int, int] = {}
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        where = f"{path}:{number}"
        try:
            value = json.loads(line)["id"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{where}: not a ranking line ({type(error).__name__}: {error})") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: id {value!r} is not an integer")
        if value in line_of:
            raise ValueError(f"{where}: id {value} is ranked twice (first at line {line_of[value]}); a ranking orders each example once")
        line_of[value] = number
        ids.append(value)
    return ids


def check_ranks_all(path: str | Path, ranked_ids: Sequence[int], example_ids: Sequence[int]) -> None:
    """Refuse (ValueError naming the file) a ranking whose ids, read by `read_ranked_ids` (no
    duplicates, line n holds `ranked_ids[n - 1]`), are not exactly `example_ids`: an id that is no
    example (with its line), or examples left unranked (their count and the first few ids)."""
    examples = set(example_ids)
    for number, example_id in enumerate(ranked_ids, start=1):
        if example_id not in examples:
            raise ValueError(f"{path}:{number}: id {example_id} is not a training example of this run's data")
    if len(ranked_ids) != len(examples):
        unranked = sorted(examples - set(ranked_ids))
        raise ValueError(
            f"{path} ranks {len(ranked_ids)} of the {len(examples)} training examples: {len(unranked)} are missing "
            f"(ids {', '.join(map(str, unranked[:5]))}{', ...' if len(unranked) > 5 else ''}); rank this run's data again"
        )


def stage_value(start: float, end: float, stage: int, num_stages: int) -> float:
    """A value that rises linearly from `start` at the first stage to `end` at the last (POCL's
    temperature and kd-ratio schedules)."""
    return start if num_stages == 1 else start + (end - start) * stage / (num_stages - 1)


class BabyStepScheduler:
    """Which examples, temperature and kd-ratio each curriculum stage uses, and when to advance.

    Args:
        ranked_ids: example ids from easiest to hardest.
        num_stages: S.
        stage_epochs: epochs per stage (with `patience`, the most a stage may take).
        patience: advance once the validation loss has not improved for this many evaluations.
        temperature, kd_ratio: (start, end) of the linear schedules (POCL's GPT-2 defaults).
    """

    def __init__(
        self,
        ranked_ids: Sequence[int],
        num_stages: int = 4,
        stage_epochs: int = 1,
        patience: int | None = None,
        temperature: tuple[float, float] = (1.0, 2.0),
        kd_ratio: tuple[float, float] = (0.7, 1.0),
    ):
        if num_stages < 1:
            raise ValueError(f"--num-stages must be at least 1, got {num_stages}")
        if stage_epochs < 1:
            raise ValueError(f"--stage-epochs must be at least 1, got {stage_epochs}")
        if patience is not None and patience < 1:
            raise ValueError(f"--stage-patience must be at least 1, got {patience}")
        if len(ranked_ids) < num_stages:
            raise ValueError(f"{len(ranked_ids)} ranked examples cannot fill {num_stages} stages")
        self.ranked_ids = list(ranked_ids)
        self.num_stages, self.stage_epochs, self.patience = num_stages, stage_epochs, patience
        self.temperature_range, self.kd_ratio_range = temperature, kd_ratio
        self.stage = 0
        self.epochs_in_stage = 0
        self.best_loss: float | None = None
        self.bad_evaluations = 0

    # The schedule, as pure functions of the stage.
    def fraction(self, stage: int | None = None) -> float:
        stage = self.stage if stage is None else stage
        return (stage + 1) / self.num_stages

    def size(self, stage: int | None = None) -> int:
        """Examples in `stage`: (s + 1) * floor(N / S) for s < S - 1 and all N in the last stage,
        as POCL's `tools/rank.py` splits the ranked data."""
        stage = self.stage if stage is None else stage
        if stage >= self.num_stages - 1:
            return len(self.ranked_ids)
        return (stage + 1) * (len(self.ranked_ids) // self.num_stages)

    def temperature(self, stage: int | None = None) -> float:
        return stage_value(*self.temperature_range, self.stage if stage is None else stage, self.num_stages)

    def kd_ratio(self, stage: int | None = None) -> float:
        return stage_value(*self.kd_ratio_range, self.stage if stage is None else stage, self.num_stages)

    def active_ids(self, stage: int | None = None) -> list[int]:
        return self.ranked_ids[: self.size(stage)]

    @property
    def finished(self) -> bool:
        return self.stage >= self.num_stages

    def describe(self, stage: int | None = None) -> str:
        stage = self.stage if stage is None else stage
        return (
            f"stage {stage + 1}/{self.num_stages}: easiest {self.fraction(stage):.0%} ({self.size(stage)} examples), "
            f"kd temperature {self.temperature(stage):.3g}, kd-ratio {self.kd_ratio(stage):.3g}"
        )

    # Advancing.
    def _advance(self) -> bool:
        self.stage += 1
        self.epochs_in_stage = 0
        self.best_loss = None
        self.bad_evaluations = 0
        return True

    def on_epoch_end(self) -> bool:
        """Count an epoch of the current stage; True if that moves to the next stage."""
        self.epochs_in_stage += 1
        return self._advance() if self.epochs_in_stage >= self.stage_epochs else False

    def on_validation(self, loss: float) -> bool:
        """Record a validation loss; True if the stage has converged (patience) and advances."""
        if self.patience is None:
            return False
        if self.best_loss is None or loss < self.best_loss:
            self.best_loss, self.bad_evaluations = loss, 0
            return False
        self.bad_evaluations += 1
        return self._advance() if self.bad_evaluations >= self.patience else False

    def total_epochs(self) -> int:
        """Epochs of the whole curriculum (an upper bound with patience)."""
        return self.num_stages * self.stage_epochs

    def state_dict(self) -> dict:
        return {"stage": self.stage, "epochs_in_stage": self.epochs_in_stage, "best_loss": self.best_loss, "bad_evaluations": self.bad_evaluations}

    def load_state_dict(self, state: dict) -> None:
        self.stage = int(state["stage"])
        self.epochs_in_stage = int(state["epochs_in_stage"])
        self.best_loss = state["best_loss"]
        self.bad_evaluations = int(state["bad_evaluations"])
