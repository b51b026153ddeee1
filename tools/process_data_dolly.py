"""Tokenise an instruction JSONL file (Dolly, self-inst, vicuna, sinst, ...) for SFT and distillation.

    python -m tools.process_data_dolly --data-dir data/dolly --processed-data-dir processed_data/dolly/full/gpt2 \\
        --model-path checkpoints/gpt2-large

Writes a `datasets.DatasetDict` (`train`, and `valid` when --dev-num > 0) with the columns
`id`, `prompt_ids`, `response_ids`, `prompt`, `references`, and a `meta.json` beside it that
records the tokenizer, the lengths, the source file's hash and what was truncated or skipped.

As DistiLLM's tool of the same name: the valid split is the first --dev-num lines of the file; a
response is cut from the tokenisation of prompt + response (so the token ids at the seam are
those of the whole text), and a long prompt keeps its first --max-prompt-length tokens.

Duplicates (the same prompt with the same references) are counted and kept, except that a train
example equal to an example of the valid split is dropped, so nothing is validated on that was
trained on (DistiLLM keeps them).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from distillation_llm.data import INSTRUCTION_FORMAT_VERSION, tokenizer_fingerprint
from distillation_llm.instructions import (
    PROMPT_NO_INPUT,
    PROMPT_WITH_INPUT,
    DataFormatError,
    chat_prompt,
    load_instruction_jsonl,
)
from tools._common import (
    ProcessingError,
    existing_output,
    file_sha256,
    fingerprint,
    load_tokenizer,
    save_atomically,
    tokenize,
)

SOURCE_FILE = "raw.jsonl"  # the DistiLLM/MiniLLM layout: --data-dir holds raw.jsonl
COUNTS = (
    "train", "valid", "kept", "prompt_truncated", "response_truncated", "skipped_invalid", "skipped_too_long",
    "duplicates", "train_dropped_as_in_valid",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.process_data_dolly",
        description="Tokenise an instruction JSONL file into train/valid prompt and response token ids.",
    )
    source = parser.add_argument_group("input").add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data-dir", metavar="DIR",
        help=f"directory holding the instruction file as {SOURCE_FILE} (DistiLLM layout)",
    )
    source.add_argument("--input", metavar="FILE", help="path of the instruction JSONL file itself, instead of --data-dir")
    output = parser.add_argument_group("output")
    output.add_argument(
        "--processed-data-dir", required=True, metavar="DIR",
        help="directory the DatasetDict and meta.json are written to",
    )
    output.add_argument(
        "--overwrite", action="store_true",
        help="replace a processed dataset already in --processed-data-dir, even an identical one",
    )
    tokens = parser.add_argument_group("tokenisation")
    tokens.add_argument(
        "--model-path", required=True, metavar="DIR",
        help="local checkpoint or tokenizer directory whose tokenizer is used (nothing is downloaded)",
    )
    tokens.add_argument(
        "--max-prompt-length", type=int, default=256, metavar="N",
        help="prompt length in tokens; longer prompts keep their first tokens, as DistiLLM (default 256)",
    )
    tokens.add_argument(
        "--max-length", type=int, default=512, metavar="N",
        help="prompt + response length in tokens; longer responses are cut at the end (default 512)",
    )
    tokens.add_argument(
        "--data-process-workers", type=int, default=1, metavar="N",
        help="processes tokenising in parallel; the output does not depend on it (default 1)",
    )
    tokens.add_argument(
        "--chat-template", action="store_true",
        help="wrap each prompt in the tokenizer's chat template as the user turn (instruction-tuned models, e.g. "
        "SmolLM2-Instruct); the references use the plain template for every model (default off)",
    )
    tokens.add_argument(
        "--only-prompt", action="store_true",
        help="tokenise prompts only (evaluation files whose output may be absent); response_ids stay empty",
    )
    split = parser.add_argument_group("split and validation")
    split.add_argument(
        "--dev-num", type=int, default=1000, metavar="N",
        help="examples held out as the valid split (see --dev-split); 0 writes no valid split (default 1000)",
    )
    split.add_argument(
        "--dev-split", choices=("first", "random"), default="first",
        help="first: the valid split is the examples on the first --dev-num lines of the file, as DistiLLM; "
        "random: --dev-num examples drawn with --seed (default first)",
    )
    split.add_argument(
        "--seed", type=int, default=42, metavar="N",
        help="seed of the random choice of valid examples under --dev-split random (default 42)",
    )
    split.add_argument(
        "--skip-invalid", action="store_true",
        help="skip and report malformed lines instead of stopping at the first one",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _check(args: argparse.Namespace, source: Path) -> None:
    if not source.is_file():
        where = f"--data-dir {args.data_dir} has no {SOURCE_FILE}" if args.data_dir else f"--input {source}: no such file"
        raise ProcessingError(where)
    if args.max_prompt_length < 1 or args.max_length < 1:
        raise ProcessingError("--max-prompt-length and --max-length must be positive")
    if args.max_prompt_length > args.max_length:
        raise ProcessingError(f"--max-prompt-length {args.max_prompt_length} exceeds --max-length {args.max_length}")
    if args.dev_num < 0:
        raise ProcessingError(f"--dev-num must be 0 or more, got {args.dev_num}")
    if args.data_process_workers < 1:
        raise ProcessingError(f"--data-process-workers must be 1 or more, got {args.data_process_workers}")


def _features():
    from datasets import Features, List, Value

    return Features(
        {
            "id": Value("int64"),
            "prompt_ids": List(Value("int32")),
            "response_ids": List(Value("int32")),
            "prompt": Value("string"),
            "references": List(Value("string")),
        }
    )


def process(args: argparse.Namespace) -> dict:
    """Process the file named by `args` into `args.processed_data_dir`; returns its meta."""
    from datasets import Dataset, DatasetDict

    source = Path(args.input) if args.input else Path(args.data_dir) / SOURCE_FILE
    out = Path(args.processed_data_dir)
    _check(args, source)
    tokenizer = load_tokenizer(args.model_path)
    source_sha256 = file_sha256(source)
    dataset_fingerprint = fingerprint(
        tool="process_data_dolly",
        format_version=INSTRUCTION_FORMAT_VERSION,
        tokenizer=tokenizer_fingerprint(tokenizer),
        templates=[PROMPT_NO_INPUT, PROMPT_WITH_INPUT],
        max_prompt_length=args.max_prompt_length,
        max_length=args.max_length,
        only_prompt=args.only_prompt,
        chat_template=tokenizer.chat_template if args.chat_template else None,
        source_sha256=source_sha256,
        dev_num=args.dev_num,
        dev_split=args.dev_split,
        seed=args.seed if args.dev_split == "random" else None,
    )
    existing = existing_output(out, dataset_fingerprint, args.overwrite)
    if existing is not None:
        print(f"{out} already holds this dataset (fingerprint {dataset_fingerprint[:12]}); nothing to do")
        return existing

    examples, invalid = load_instruction_jsonl(
        source, require_output=not args.only_prompt, skip_invalid=args.skip_invalid
    )
    if args.chat_template:
        try:
            for example in examples:
                example.prompt = chat_prompt(example.prompt, tokenizer)
        except ValueError as error:
            raise ProcessingError(f"{error} (--model-path {args.model_path})") from None
    workers = args.data_process_workers
    prompts = list(tokenize([e.prompt for e in examples], tokenizer, args.model_path, workers, "prompts"))
    if args.only_prompt:
        responses = [[] for _ in examples]
    else:
        # Training targets are the first reference; all of them stay in `references` for evaluation.
        # As DistiLLM, the response is what follows the prompt's length in the tokens of the whole
        # text: where a merge crosses the seam (a response starting with a space or a newline, a
        # SentencePiece tokenizer) this differs from tokenising the response alone.
        full = tokenize([e.prompt + e.references[0] for e in examples], tokenizer, args.model_path, workers, "prompt+response")
        responses = [ids[len(prompt_ids):] + [tokenizer.eos_token_id] for ids, prompt_ids in zip(full, prompts)]

    rows, counts, too_long = _fit(examples, prompts, responses, args.max_prompt_length, args.max_length)
    counts["skipped_invalid"] = len(invalid)
    skipped_lines = sorted(
        [[line, reason.removeprefix(f"{source}:{line}: ")] for line, reason in invalid]
        + [[line, f"the prompt fills --max-length {args.max_length}, leaving no room for the response"] for line in too_long]
    )

    kept = len(rows["id"])
    if kept == 0:
        raise ProcessingError(_nothing_left(source, args, len(invalid), too_long))
    if args.dev_num > kept:
        raise ProcessingError(f"--dev-num {args.dev_num} exceeds the {kept} examples kept from {source}")
    keys = [(prompt, tuple(references)) for prompt, references in zip(rows["prompt"], rows["references"])]
    if args.dev_split == "random":
        valid = set(random.Random(args.seed).sample(range(kept), args.dev_num))
    else:
        valid = {i for i, line in enumerate(rows["line"]) if line <= args.dev_num}
    valid_keys = {keys[i] for i in valid}
    train = [i for i in range(kept) if i not in valid]
    splits = {"train": [i for i in train if keys[i] not in valid_keys]}
    if args.dev_num:
        splits["valid"] = sorted(valid)
    counts["duplicates"] = kept - len(set(keys))
    counts["train_dropped_as_in_valid"] = len(train) - len(splits["train"])
    dataset = DatasetDict()
    for name, positions in splits.items():
        columns = {column: [values[i] for i in positions] for column, values in rows.items() if column in _features()}
        dataset[name] = Dataset.from_dict(columns, features=_features())
    counts.update(train=len(splits["train"]), valid=len(valid), kept=kept)
    meta = {
        "format_version": INSTRUCTION_FORMAT_VERSION,
        "tokenizer": str(args.model_path),
        "tokenizer_class": type(tokenizer).__name__,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "vocab_size": len(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "max_length": args.max_length,
        "max_prompt_length": args.max_prompt_length,
        "only_prompt": args.only_prompt,
        "chat_template": args.chat_template,
        "dev_num": args.dev_num,
        "dev_split": args.dev_split,
        "seed": args.seed,
        "source": str(source),
        "source_sha256": source_sha256,
        "fingerprint": dataset_fingerprint,
        "counts": {name: counts[name] for name in COUNTS},
        "skipped_lines": skipped_lines,
    }
    save_atomically(dataset, meta, out)
    _print_summary(meta, out, invalid, too_long)
    return meta


def _nothing_left(source: Path, args: argparse.Namespace, invalid: int, too_long: list[int]) -> str:
    """Why no example is left to write, with the flag to change."""
    if too_long and not invalid:
        return (
            f"{source}: no example left to write: every one of the {len(too_long)} prompts fills --max-length "
            f"{args.max_length} (prompts are kept up to --max-prompt-length {args.max_prompt_length} tokens), leaving "
            "no room for a response; raise --max-length or lower --max-prompt-length"
        )
    reasons = [f"{count} {what}" for count, what in ((invalid, "invalid lines skipped"), (len(too_long), "prompts too long for --max-length"))]
    return f"{source}: no example left to write ({', '.join(reasons)})"


def _fit(examples, prompts, responses, max_prompt_length: int, max_length: int) -> tuple[dict, dict, list[int]]:
    """Cut token ids to the lengths; returns the dataset columns, the counts and the lines skipped as too long.

    A prompt keeps its first `max_prompt_length` tokens, as DistiLLM (so a cut prompt loses its end,
    "### Response:" included); then the response loses its last tokens (and its EOS) to fit
    `max_length`. The rows also hold each example's source line (for the first-lines valid split).
    """
    rows = {name: [] for name in _features()} | {"line": []}
    counts = {"prompt_truncated": 0, "response_truncated": 0, "skipped_too_long": 0}
    too_long = []
    for index, (example, prompt_ids, response_ids) in enumerate(zip(examples, prompts, responses)):
        prompt_truncated = len(prompt_ids) > max_prompt_length
        if prompt_truncated:
            prompt_ids = prompt_ids[:max_prompt_length]
        room = max_length - len(prompt_ids)
        response_truncated = len(response_ids) > room
        if response_truncated:
            response_ids = response_ids[:room]
            if not response_ids:
                counts["skipped_too_long"] += 1
                too_long.append(example.line)
                continue
        counts["prompt_truncated"] += prompt_truncated
        counts["response_truncated"] += response_truncated
        rows["id"].append(index)
        rows["line"].append(example.line)
        rows["prompt_ids"].append(prompt_ids)
        rows["response_ids"].append(response_ids)
        rows["prompt"].append(example.prompt)
        rows["references"].append(example.references)
    return rows, counts, too_long


def _print_summary(meta: dict, out: Path, invalid: list[tuple[int, str]], too_long: list[int]) -> None:
    counts = meta["counts"]
    if invalid:
        print(f"skipped {len(invalid)} invalid lines: {', '.join(str(line) for line, _ in invalid)}")
        for _, reason in invalid[:5]:
            print(f"  {reason}")
    if too_long:
        print(f"skipped {len(too_long)} examples with no room for a response: lines {', '.join(map(str, too_long))}")
    print(
        f"wrote {out}: train {counts['train']}, valid {counts['valid']} "
        f"({counts['kept']} kept; prompts truncated {counts['prompt_truncated']}, "
        f"responses truncated {counts['response_truncated']}, skipped invalid {counts['skipped_invalid']}, "
        f"skipped too long {counts['skipped_too_long']})"
    )
    if counts["duplicates"]:
        print(f"note: {counts['duplicates']} examples repeat an earlier one (same prompt and references); kept")
    if counts["train_dropped_as_in_valid"]:
        print(f"dropped {counts['train_dropped_as_in_valid']} train examples that also occur in the valid split")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        process(args)
    except (DataFormatError, ProcessingError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
