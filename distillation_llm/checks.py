"""Start-up checks of `distillation_llm.finetune` that need the tokenizer and the processed data.

The flags alone are checked by `distillation_llm.arguments.validate`. What only shows once the data
and tokenizers are at hand is checked here, before any model is loaded, so that a run that would
train on nothing, or on ids that mean other tokens, stops at once with one line instead of
logging loss 0 (or a traceback) later:

- the data was tokenised by the student's tokenizer (`load_processed` compares fingerprints), and
  the teacher's tokenizer indexes the same tokens, or a --teacher-cache was built for this data,
  tokenizer, --max-length and every KD temperature of the run;
- --max-length leaves response tokens to train on (the collator cuts prompt + response to it);
- the training split fills at least one global batch, so the run plans at least one step.

Warnings (some responses cut, an alpha-beta divergence outside its safe range, an old meta.json)
go to `warn`, the run's log.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from abkd import engine as E
from abkd.pocl import BabyStepScheduler
from distillation_llm.data import load_processed, tokenizer_fingerprint
from distillation_llm.methods import STUDENT_SOURCES, check_ab_params, lookup
from distillation_llm.models import check_shared_vocabulary, load_tokenizer


class StartupError(ValueError):
    """A run that cannot train as asked; the message is the one line the command exits with."""


def check_startup(args: argparse.Namespace, tokenizer, warn: Callable[[str], None] = print) -> None:
    """Every start-up check; exits with `error: <message>` (no traceback) on the first failure."""
    try:
        run_checks(args, tokenizer, warn, world_size=E.world_size())
    except (StartupError, ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None


def run_checks(args: argparse.Namespace, tokenizer, warn: Callable[[str], None], world_size: int = 1) -> None:
    method = lookup(args.type)
    if method.divergence == "ab" and (message := check_ab_params(args.ab_alpha, args.ab_beta)):
        warn(f"warning: {message}")
    if method.needs_teacher and not args.teacher_cache:
        check_teacher_tokenizer(args, tokenizer)
    data, meta = load_processed(args.data_dir, tokenizer, warn=lambda message: warn(f"warning: {message}"))
    if args.teacher_cache:
        check_teacher_cache(args, tokenizer, meta)
    if args.lm_data_dir:
        load_processed(args.lm_data_dir, tokenizer, flag="--lm-data-dir", warn=lambda message: warn(f"warning: {message}"))
    if args.do_train:
        if "train" not in data:
            raise StartupError(f"--data-dir {args.data_dir} has no train split (splits: {list(data)})")
        strict = method.source_kind(args.student_gen) not in STUDENT_SOURCES
        check_trainable_tokens(data["train"], args, meta, warn, strict=strict)
        check_planned_steps(len(data["train"]), args, world_size)


def check_teacher_tokenizer(args: argparse.Namespace, tokenizer) -> None:
    """Token-level KD compares the two models' distributions id by id: the teacher's tokenizer must
    give every token the student's id. Checked on the tokenizers and config.json before loading weights."""
    teacher_tokenizer = load_tokenizer(args.teacher_model_path, "--teacher-model-path")
    try:
        check_shared_vocabulary(tokenizer, teacher_tokenizer, _config_vocab(args.model_path, tokenizer), _config_vocab(args.teacher_model_path, teacher_tokenizer))
    except ValueError as error:
        raise StartupError(f"--teacher-model-path {args.teacher_model_path}: {error}") from None


def kd_temperatures(args: argparse.Namespace) -> list[float]:
    """Every KD temperature the run distils at: --kd-temperature, or each POCL stage's."""
    if args.curriculum != "pocl":
        return [args.kd_temperature]
    schedule = BabyStepScheduler(range(args.num_stages), args.num_stages, temperature=(args.kd_temperature_start, args.kd_temperature_end))
    return [schedule.temperature(stage) for stage in range(args.num_stages)]


def check_teacher_cache(args: argparse.Namespace, tokenizer, data_meta: dict) -> None:
    """The --teacher-cache was built for this dataset, tokenizer and --max-length, at every KD
    temperature of the run, with the splits it reads (distillation_llm/teacher_cache.py)."""
    from distillation_llm.teacher_cache import check_compatible, read_meta

    splits = ["train"] * args.do_train + ["valid"] * args.do_valid
    check_compatible(
        read_meta(args.teacher_cache), path=args.teacher_cache, data_dir=args.data_dir, data_meta=data_meta,
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer), max_length=args.max_length, temperatures=kd_temperatures(args), splits=splits,
    )


def _config_vocab(model_path: str, tokenizer) -> int:
    config = json.loads((Path(model_path) / "config.json").read_text())
    return int(config.get("vocab_size") or len(tokenizer))


def response_lengths(train_set, max_length: int) -> tuple[int, int, int]:
    """(examples, responses cut by `max_length`, examples left with no trainable token).

    `InstructionCollator` keeps the first `max_length` tokens of prompt + response and trains on
    the response tokens among them; an example whose prompt fills `max_length`, or whose response
    is empty, trains on nothing.
    """
    import pyarrow.compute as pc

    prompt = pc.list_value_length(train_set.data.column("prompt_ids")).to_numpy(zero_copy_only=False)
    response = pc.list_value_length(train_set.data.column("response_ids")).to_numpy(zero_copy_only=False)
    cut = int(((prompt + response) > max_length).sum())
    untrainable = int(((prompt >= max_length) | (response == 0)).sum())
    return len(prompt), cut, untrainable


def check_trainable_tokens(train_set, args: argparse.Namespace, meta: dict, warn: Callable[[str], None], strict: bool = True) -> None:
    total, cut, untrainable = response_lengths(train_set, args.max_length)
    processed = f"the data was processed with --max-length {meta.get('max_length')} --max-prompt-length {meta.get('max_prompt_length')}"
    summary = (
        f"--max-length {args.max_length} cuts {cut} of the {total} training responses, and {untrainable} examples "
        "keep no response token to train on"
    )
    if untrainable == total and strict:
        raise StartupError(f"{summary}: every step would train on nothing (loss 0); {processed}")
    if cut:
        warn(f"warning: {summary} ({processed})")


def check_planned_steps(train_size: int, args: argparse.Namespace, world_size: int) -> None:
    """At least one global batch per epoch (`abkd.sampling.GlobalBatchSampler` drops the remainder)."""
    global_batch = args.batch_size * args.gradient_accumulation_steps * world_size
    if train_size < global_batch:
        raise StartupError(
            f"the train split of --data-dir {args.data_dir} has {train_size} examples, fewer than one global batch of "
            f"{global_batch} (--batch-size {args.batch_size} x --gradient-accumulation-steps "
            f"{args.gradient_accumulation_steps} x {world_size} processes): no training step would run"
        )
