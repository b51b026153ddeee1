"""POCL's curriculum in the image-classification loops (CIFAR: standard_classification, CLIP:
base_to_new_classification): the difficulty ranking of a training set of images, its files, and
the Baby Step stages of a run.

POCL ("Being Strong Progressively!", 2025) was published for LLM distillation (abkd/pocl.py,
distillation_llm/). Ranking images and running its stages in the classification recipes is this
framework's extension of it; the shared pieces (reciprocal rank fusion, the Baby Step scheduler)
are `abkd.pocl`'s.

Difficulty. Every training image is scored once, deterministically (eval mode, no augmentation),
by (a) the student's cross-entropy on its label and (b) the divergence D(teacher || student)
between the two models' class distributions at a temperature (`abkd.losses`; default fkl at the
recipe's T); lower is easier for both. The student is the one the run starts from (the same
initialisation), or a given checkpoint. `abkd.pocl.fuse_ranks` fuses the two ranks:
score = 1 / (k + rank_ce) + 1 / (k + rank_divergence), k = 60. The files follow the LLM ranking:
`ranking.jsonl`, one line per example from easy to hard, {"id", "ce", "divergence", "rank_ce",
"rank_divergence", "score"} (id = the example's index in the training set), and
`ranking.meta.json`, which names the dataset, the teacher, the student and the settings. The
ranking command reuses a ranking whose meta matches and ranks again otherwise; a training run
refuses a ranking made for another dataset, dataset size or teacher, naming the file.

Stages. `abkd.pocl.BabyStepScheduler`: stage s = 0..S-2 trains on the easiest (s + 1) * floor(N / S)
examples and the last stage on all N, while the KD temperature and the KD weight rise linearly
from --kd-temperature-start to --kd-temperature-end and from --kd-ratio-start to --kd-ratio-end
(they replace --kd-temperature and --kd-ratio; a cross-entropy weight stays as it is). By default
the schedule ends at the recipe's own T and KD weight and starts at POCL's relative values,
T / 2 and 0.7 x the weight (POCL's GPT-2 schedule is T 1 -> 2, kd-ratio 0.7 -> 1).

One run, one optimizer, one learning-rate schedule. POCL's LLM protocol runs each stage as its
own run: a fresh optimizer and schedule, started from the previous stage's checkpoint selected on
validation data. The classification curriculum does not, for three reasons: (1) that selection
needs a validation split, and the CIFAR and CLIP recipes have none apart from the test images,
which must not steer training; (2) their schedules (SGD with step decay at epochs 150/180/210 of
240, Dassl's per-epoch cosine) are tuned over the whole run, and restarting them per stage would
repeat the high-learning-rate phase four times and shift every decay; (3) curriculum learning for
image classification is a pacing function inside one training run with one schedule (Bengio et
al., ICML 2009; Hacohen & Weinshall, ICML 2019; Wu et al., ICLR 2021). So the stages change only
the examples drawn, the temperature and the KD weight. A stage's epochs hold fewer examples, so
they have fewer steps; the learning-rate schedule, written for full-data epochs, reads the step a
full-data run would be at, at the same point of the same epoch (`Curriculum.full_data_step`): the
decay at epoch 150 comes at epoch 150 of the curriculum.

Epochs. --epochs is the whole run. Stages 1..S-1 last --stage-epochs epochs each (default
--epochs // S); the last stage, all the data, takes the epochs left, so the run ends where its
learning-rate schedule ends. There is no --stage-patience: POCL's patience watches a validation
loss (see (1) above).
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import itertools
import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from abkd.engine import atomic_write_text, file_sha256
from abkd.losses import DIVERGENCES, check_temperature, divergence
from abkd.pocl import RANK_TIES, BabyStepScheduler, Signal, check_ranks_all, fuse_ranks, read_ranked_ids
from abkd.sampling import GlobalBatchSampler

CURRICULA = ("none", "pocl")
# POCL's GPT-2 schedule (T 1 -> 2, kd-ratio 0.7 -> 1) as fractions of its end values.
START_FRACTIONS = {"kd_temperature": 0.5, "kd_ratio": 0.7}
# What a ranking must have been made for to train a run: (meta key, what it is).
RUN_IDENTITY = (("dataset_fingerprint", "dataset"), ("examples", "number of examples"), ("teacher_fingerprint", "teacher"))
_CURRICULUM_ONLY = ("ranking", "stage_epochs", "stage_patience", "kd_temperature_start", "kd_temperature_end", "kd_ratio_start", "kd_ratio_end")


# ---------------------------------------------------------------------------------------------
# Training flags.
# ---------------------------------------------------------------------------------------------


def add_curriculum_args(parser: argparse.ArgumentParser, rank_command: str) -> None:
    """The curriculum flags of a classification training CLI, named as the LLM CLI's."""
    group = parser.add_argument_group("POCL curriculum (abkd/curriculum.py)")
    group.add_argument("--curriculum", choices=CURRICULA, default="none",
                       help="pocl: train easy-to-hard in Baby Step stages from --ranking, in one run with one learning-rate schedule")
    group.add_argument("--ranking", help=f"ranking.jsonl (easy to hard) from `python -m {rank_command}` for this dataset and teacher")
    group.add_argument("--num-stages", type=int, default=4, help="curriculum stages S; stage s trains on the easiest (s+1)/S of the data, the last on all of it")
    group.add_argument("--stage-epochs", type=int,
                       help="epochs of each stage but the last, which runs to --epochs (default --epochs // --num-stages)")
    group.add_argument("--stage-patience", type=int,
                       help="refused here: POCL's patience watches a validation loss, and this recipe has no validation split apart from the test images")
    group.add_argument("--kd-temperature-start", type=float, help="KD temperature of the first stage, rising linearly to --kd-temperature-end (default --kd-temperature / 2)")
    group.add_argument("--kd-temperature-end", type=float, help="KD temperature of the last stage (default --kd-temperature)")
    group.add_argument("--kd-ratio-start", type=float, help="KD weight of the first stage, rising linearly to --kd-ratio-end (default 0.7 x --kd-ratio)")
    group.add_argument("--kd-ratio-end", type=float, help="KD weight of the last stage (default --kd-ratio)")


def resolve_curriculum_args(args: argparse.Namespace, rank_command: str) -> None:
    """Check the curriculum flags against --epochs and fill in the schedule's defaults from the
    run's --kd-temperature and --kd-ratio (in place); ValueError on a bad combination."""
    if args.curriculum == "none":
        given = [f"--{dest.replace('_', '-')}" for dest in _CURRICULUM_ONLY if getattr(args, dest) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} only used with --curriculum pocl")
        return
    if not args.ranking:
        raise ValueError(f"--curriculum pocl needs --ranking (make one with `python -m {rank_command}`)")
    if args.stage_patience is not None:
        raise ValueError("--stage-patience is not available for classification: POCL's patience watches a validation loss, and this recipe has "
                         "no validation split apart from the test images, which must not steer training; stages last --stage-epochs")
    if args.num_stages < 1:
        raise ValueError(f"--num-stages must be at least 1, got {args.num_stages}")
    if args.stage_epochs is None:
        args.stage_epochs = args.epochs // args.num_stages
        if args.stage_epochs < 1:
            raise ValueError(f"--epochs {args.epochs} cannot hold {args.num_stages} stages of at least one epoch")
    if args.stage_epochs < 1:
        raise ValueError(f"--stage-epochs must be at least 1, got {args.stage_epochs}")
    if (args.num_stages - 1) * args.stage_epochs >= args.epochs:
        raise ValueError(f"--epochs {args.epochs} leaves no epoch for the last stage after {args.num_stages - 1} stages of "
                         f"--stage-epochs {args.stage_epochs}: the whole curriculum runs in --epochs")
    for name, fraction in START_FRACTIONS.items():
        end = getattr(args, f"{name}_end")
        end = getattr(args, name) if end is None else end
        start = getattr(args, f"{name}_start")
        setattr(args, f"{name}_end", end)
        setattr(args, f"{name}_start", fraction * end if start is None else start)
    for flag in ("kd_temperature_start", "kd_temperature_end"):
        if not (math.isfinite(getattr(args, flag)) and getattr(args, flag) > 0):
            raise ValueError(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    for flag in ("kd_ratio_start", "kd_ratio_end"):
        if not (math.isfinite(getattr(args, flag)) and getattr(args, flag) >= 0):
            raise ValueError(f"--{flag.replace('_', '-')} must be non-negative, got {getattr(args, flag)}")


def set_temperature(term, temperature: float) -> None:
    """Set the temperature of a distillation term (`abkd.classification`'s keep it in `temperature`)."""
    if not hasattr(term, "temperature"):
        raise ValueError(f"--curriculum pocl schedules the KD temperature, but the distillation term {term!r} has none")
    term.temperature = check_temperature(temperature)


# ---------------------------------------------------------------------------------------------
# The stages of a run.
# ---------------------------------------------------------------------------------------------


class Curriculum:
    """The Baby Step stages of one classification run, driven by `abkd.run.Run.fit`.

    Holds the plan (which stage each epoch is in and how many steps it takes), keeps `sampler`
    on the current stage's easiest examples, and calls `apply(temperature, kd_ratio)` whenever a
    stage starts. The scheduler's state goes into the run's checkpoints as `state["curriculum"]`
    (register the key before `Run.resume`), so a resumed run continues in its stage.

    Args:
        scheduler: the stages over the ranked example ids (easy to hard).
        sampler: the run's sampler, built over the whole training set; retargeted per stage.
        epochs: the whole run's epochs; the last stage takes those the others leave.
    """

    def __init__(self, scheduler: BabyStepScheduler, sampler: GlobalBatchSampler, epochs: int,
                 apply: Callable[[float, float], None], log: Callable[[str], None]):
        if sampler.examples is not None or sampler.size != len(scheduler.ranked_ids):
            raise ValueError(f"the ranking orders {len(scheduler.ranked_ids)} examples, the training set has {sampler.size}")
        self.scheduler, self.sampler, self.epochs, self.apply, self.log = scheduler, sampler, epochs, apply, log
        self.full_steps_per_epoch = sampler.steps_per_epoch
        last = scheduler.num_stages - 1
        if last * scheduler.stage_epochs >= epochs:
            raise ValueError(f"{epochs} epochs leave none for the last of {scheduler.num_stages} stages of {scheduler.stage_epochs} epochs")
        steps = [self._steps_per_epoch(stage) for stage in range(scheduler.num_stages)]
        self.epoch_steps = [steps[self.stage_of(epoch)] for epoch in range(epochs)]
        self.starts = list(itertools.accumulate(self.epoch_steps, initial=0))  # the first step of each epoch, then the total

    @classmethod
    def from_args(cls, args: argparse.Namespace, ranked_ids: list[int], sampler: GlobalBatchSampler, *,
                  apply: Callable[[float, float], None], log: Callable[[str], None]) -> Curriculum:
        scheduler = BabyStepScheduler(
            ranked_ids, args.num_stages, args.stage_epochs,
            temperature=(args.kd_temperature_start, args.kd_temperature_end), kd_ratio=(args.kd_ratio_start, args.kd_ratio_end),
        )
        return cls(scheduler, sampler, args.epochs, apply, log)

    def _steps_per_epoch(self, stage: int) -> int:
        sampler, size = self.sampler, self.scheduler.size(stage)
        try:
            return GlobalBatchSampler(size, sampler.micro_batch, sampler.grad_accum, sampler.world, sampler.rank, sampler.seed,
                                      drop_last=sampler.drop_last).steps_per_epoch
        except ValueError:
            raise ValueError(f"curriculum stage {stage + 1} has {size} examples, fewer than one global batch of {sampler.global_batch}: "
                             "use fewer --num-stages or a smaller --batch-size") from None

    # The plan, as pure functions of the epoch and the step.
    def stage_of(self, epoch: int) -> int:
        return min(epoch // self.scheduler.stage_epochs, self.scheduler.num_stages - 1)

    def total_steps(self) -> int:
        return self.starts[-1]

    def steps_after(self, epochs: int) -> int:
        """Optimizer steps at the end of epoch `epochs` (1-based count)."""
        return self.starts[min(epochs, self.epochs)]

    def full_data_step(self, step: int) -> int:
        """The step a run whose every epoch holds the whole training set would be at, at the same
        point of the same epoch: what a learning-rate schedule written for full-data epochs reads."""
        epoch = bisect.bisect_right(self.starts, step) - 1
        if epoch >= self.epochs:
            return self.epochs * self.full_steps_per_epoch + step - self.starts[-1]
        return epoch * self.full_steps_per_epoch + (step - self.starts[epoch]) * self.full_steps_per_epoch // self.epoch_steps[epoch]

    def describe(self) -> str:
        epochs = [sum(1 for epoch in range(self.epochs) if self.stage_of(epoch) == stage) for stage in range(self.scheduler.num_stages)]
        return (f"POCL curriculum over {len(self.scheduler.ranked_ids)} ranked examples: {self.scheduler.num_stages} stages of "
                f"{', '.join(map(str, epochs))} epochs ({self.total_steps()} steps), one optimizer and learning-rate schedule")

    # Driving the run.
    def start(self, state: dict) -> None:
        """Enter the run's stage: the first, or a resumed run's (`state["curriculum"]`)."""
        if state.get("curriculum") is not None:
            self.scheduler.load_state_dict(state["curriculum"])
        if self.scheduler.stage != self.stage_of(state["epoch"]):
            raise ValueError(f"the checkpoint is in curriculum stage {self.scheduler.stage + 1} at epoch {state['epoch']}, "
                             f"where the plan has stage {self.stage_of(state['epoch']) + 1}")
        self.log(self.describe())
        self._enter()
        state["curriculum"] = self.scheduler.state_dict()

    def _enter(self) -> None:
        scheduler = self.scheduler
        self.sampler.select(scheduler.active_ids())
        self.apply(scheduler.temperature(), scheduler.kd_ratio())
        self.log(f"curriculum {scheduler.describe()}")

    def epoch_metrics(self) -> dict[str, float]:
        """The stage an epoch trained in, logged with the epoch's metrics."""
        scheduler = self.scheduler
        return {"stage": scheduler.stage + 1, "stage_examples": scheduler.size(), "kd_temperature": scheduler.temperature(),
                "kd_ratio": scheduler.kd_ratio()}

    def end_epoch(self, state: dict) -> None:
        """Count the finished epoch; at a stage's end enter the next (the last runs to --epochs)."""
        scheduler = self.scheduler
        if scheduler.stage < scheduler.num_stages - 1 and scheduler.on_epoch_end():
            self._enter()
        state["curriculum"] = scheduler.state_dict()


# ---------------------------------------------------------------------------------------------
# Ranking: flags, signals, files.
# ---------------------------------------------------------------------------------------------


def add_ranking_args(parser: argparse.ArgumentParser, *, temperature: float, batch_size: int) -> None:
    """The flags every image ranking command shares (its models and data are its own)."""
    group = parser.add_argument_group("ranking (abkd/curriculum.py)")
    group.add_argument("--ranking", required=True, help="output ranking.jsonl; its meta goes beside it as ranking.meta.json")
    group.add_argument("--divergence", choices=DIVERGENCES, default="fkl",
                       help="the teacher-student divergence that scores difficulty (abkd.losses; the run's, or fkl)")
    group.add_argument("--kd-temperature", type=float, default=temperature,
                       help=f"temperature of both distributions in the divergence (default {temperature:g}, the recipe's)")
    group.add_argument("--ab_alpha", type=float, help="alpha of the alpha-beta divergence (--divergence ab)")
    group.add_argument("--ab_beta", type=float, help="beta of the alpha-beta divergence (--divergence ab)")
    group.add_argument("--lam", type=float, help="mixing weight of --divergence jsd, sfkl or srkl (abkd.losses default 0.1)")
    group.add_argument("--rrf-k", type=float, default=60.0, help="reciprocal-rank-fusion constant k")
    group.add_argument("--rank-ties", choices=RANK_TIES, default="sequential",
                       help="sequential: ranks 1, 2, 3, ... after stable sorts, ties broken by order (POCL's tools/rank.py); mean: tied values share their mean rank")
    group.add_argument("--batch-size", type=int, default=batch_size, help="images per forward pass")
    group.add_argument("--overwrite", action="store_true", help="rank again even if a matching ranking exists")


def check_ranking_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """`parser.error` for a --divergence without its parameters or a --batch-size below 1."""
    try:
        divergence_params(args)
    except ValueError as error:
        parser.error(str(error))
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")


def student_origin(args: argparse.Namespace, **student) -> dict:
    """The meta entries naming the ranking's student: `student` (what the run builds) initialised
    from --seed as the run initialises it, or --student-ckpt, recorded with its SHA-256."""
    origin = {**student, "seed": args.seed, "student_ckpt": None}
    if args.student_ckpt:
        origin.update(seed=None, student_ckpt=str(Path(args.student_ckpt).resolve()), student_fingerprint=file_sha256(Path(args.student_ckpt)))
    return origin


def rank_and_write(args: argparse.Namespace, meta: dict, batches: Iterable[tuple[list[int], Tensor, Tensor]],
                   logits: Callable[[Tensor], tuple[Tensor, Tensor]], total: int) -> list[int]:
    """Score every example (`example_signals` with the command's --divergence and --kd-temperature)
    and write the fused ranking and its meta (`write_ranking`); returns the ids scored."""
    ids, ce, divergences = example_signals(batches, logits, name=args.divergence, temperature=args.kd_temperature,
                                           params=divergence_params(args), total=total)
    write_ranking(args.ranking, meta, ids, ce, divergences, k=args.rrf_k, ties=args.rank_ties)
    return ids


def divergence_params(args: argparse.Namespace) -> dict[str, float]:
    """The --divergence's parameters from the flags (validated by `abkd.losses`)."""
    params = {"ab": {"alpha": args.ab_alpha, "beta": args.ab_beta}, "jsd": {"lam": args.lam}, "sfkl": {"lam": args.lam}, "srkl": {"lam": args.lam}}
    chosen = {key: value for key, value in params.get(args.divergence, {}).items() if value is not None}
    divergence(args.divergence, torch.zeros(1, 2), torch.zeros(1, 2), **chosen)  # ValueError naming a missing parameter
    return chosen


def ranking_settings(args: argparse.Namespace) -> dict:
    """The ranking flags recorded in the meta (a ranking with other settings is recomputed)."""
    return {"divergence": args.divergence, "divergence_params": divergence_params(args), "kd_temperature": args.kd_temperature,
            "rrf_k": args.rrf_k, "rank_ties": args.rank_ties}


def digest(*parts: bytes | str) -> str:
    """SHA-256 of the parts in order (datasets and teachers are named by it in the meta)."""
    value = hashlib.sha256()
    for part in parts:
        value.update(part.encode() if isinstance(part, str) else part)
    return value.hexdigest()


@torch.no_grad()
def example_signals(batches: Iterable[tuple[list[int], Tensor, Tensor]], logits: Callable[[Tensor], tuple[Tensor, Tensor]], *,
                    name: str, temperature: float, params: dict[str, float], total: int | None = None) -> tuple[list[int], list[float], list[float]]:
    """(ids, cross-entropy, divergence) of every example, in float32.

    batches: (example ids, inputs on the models' device, labels [B] on that device); `logits(inputs)`
    returns (student_logits [B, C], teacher_logits [B, C]) from models in eval mode. The divergence
    is `abkd.losses.divergence(name, student, teacher, temperature)`, without a T^2 factor, which
    would not change the ranks.
    """
    ids, ce, divergences = [], [], []
    for index, inputs, labels in tqdm(batches, total=total, desc="rank", dynamic_ncols=True):
        student_logits, teacher_logits = logits(inputs)
        student_logits = student_logits.float()
        ce += F.cross_entropy(student_logits, labels, reduction="none").tolist()
        divergences += divergence(name, student_logits, teacher_logits.float(), temperature=temperature, **params).tolist()
        ids += list(index)
    return ids, ce, divergences


def meta_path(ranking: str | Path) -> Path:
    return Path(ranking).with_suffix(".meta.json")


def _plain(meta: dict) -> dict:
    return json.loads(json.dumps(meta, sort_keys=True))


def reuse_ranking(ranking: str | Path, meta: dict, overwrite: bool, log: Callable[[str], None] = print) -> bool:
    """True if `ranking` exists and its meta equals `meta` (then it is reused, as the LLM ranking
    is); otherwise it will be recomputed, and the log says which settings differ."""
    ranking, meta = Path(ranking), _plain(meta)
    if overwrite or not ranking.is_file() or not meta_path(ranking).is_file():
        return False
    old = json.loads(meta_path(ranking).read_text())
    if old == meta:
        log(f"ranking {ranking} matches this dataset, teacher, student and settings: reusing it")
        return True
    differ = sorted(key for key in set(old) | set(meta) if old.get(key) != meta.get(key))
    log(f"ranking {ranking} was made with another {', '.join(differ)}: ranking again")
    return False


def write_ranking(ranking: str | Path, meta: dict, ids: list[int], ce: list[float], divergences: list[float], *,
                  k: float, ties: str) -> list[dict]:
    """Fuse the two signals' ranks and write `ranking.jsonl` (easy to hard) and its meta, each
    atomically. Returns the rows."""
    ranking = Path(ranking)
    rows = fuse_ranks(ids, [Signal("ce", ce), Signal("divergence", divergences)], k=k, ties=ties)
    ranking.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(ranking, "".join(json.dumps(row) + "\n" for row in rows))
    atomic_write_text(meta_path(ranking), json.dumps(_plain(meta), indent=2) + "\n")
    return rows


def load_ranking(path: str | Path, identity: dict, rank_command: str) -> list[int]:
    """Example ids from easy to hard, after checking that the ranking was made for this run:
    `identity` holds the run's "dataset", "dataset_fingerprint", "examples", "teacher" and
    "teacher_fingerprint"; any of the fingerprints or the size differing is refused."""
    path = Path(path)
    if not path.is_file() or not meta_path(path).is_file():
        raise FileNotFoundError(f"--ranking {path}: no ranking (and {meta_path(path).name}) here; run `python -m {rank_command}` first")
    meta = json.loads(meta_path(path).read_text())
    differ = [what for key, what in RUN_IDENTITY if meta.get(key) != identity[key]]
    if differ:
        raise ValueError(
            f"--ranking {path} was made for {meta.get('dataset')} ({meta.get('examples')} examples) with teacher {meta.get('teacher')}, "
            f"not for this run's {identity['dataset']} ({identity['examples']} examples) with teacher {identity['teacher']} "
            f"(different {', '.join(differ)}); rank this run's data with `python -m {rank_command}`")
    ids = read_ranked_ids(path)
    check_ranks_all(f"--ranking {path}", ids, range(identity["examples"]))
    return ids
