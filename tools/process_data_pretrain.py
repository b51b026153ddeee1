"""Tokenise a plain-text corpus (one document per line) into fixed-length blocks for language modelling.

    python -m tools.process_data_pretrain --data-dir data/openwebtext --processed-data-dir processed_data/openwebtext/gpt2/1024 \\
        --model-path checkpoints/gpt2-large

Each document is tokenised and followed by EOS; the documents are concatenated and cut into blocks
of exactly --max-length tokens (the final partial block is dropped and counted). Writes a
`datasets.DatasetDict` with `train` (and `valid` when --dev-num > 0) holding one column,
`input_ids`, and a `meta.json` beside it.
"""

from __future__ import annotations

import argparse
import random
from array import array
from pathlib import Path

from distillation_llm.data import tokenizer_fingerprint
from distillation_llm.instructions import DataFormatError, decode_utf8
from tools._common import (
    FORMAT_VERSION,
    ProcessingError,
    existing_output,
    file_sha256,
    fingerprint,
    load_tokenizer,
    save_atomically,
    tokenize,
)

SOURCE_FILE = "data.txt"  # the MiniLLM layout: --data-dir holds data.txt
# MiniLLM's corpus files keep one document per line by writing its newlines as this marker.
NEWLINE_MARKER = "<@x(x!>"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.process_data_pretrain",
        description="Tokenise a one-document-per-line corpus into train/valid blocks of --max-length tokens.",
    )
    inputs = parser.add_argument_group("input")
    source = inputs.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data-dir", metavar="DIR",
        help=f"directory holding the corpus as {SOURCE_FILE}, one document per line (MiniLLM layout)",
    )
    source.add_argument("--input", metavar="FILE", help="path of the corpus text file itself, instead of --data-dir")
    inputs.add_argument(
        "--max-docs", type=int, default=None, metavar="N",
        help="read at most this many (non-blank) documents; default: all",
    )
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
        "--max-length", type=int, default=1024, metavar="N",
        help="block size: every training sequence holds exactly this many tokens (default 1024)",
    )
    tokens.add_argument(
        "--data-process-workers", type=int, default=1, metavar="N",
        help="processes tokenising in parallel; the output does not depend on it (default 1)",
    )
    split = parser.add_argument_group("split")
    split.add_argument(
        "--dev-num", type=int, default=1000, metavar="N",
        help="blocks held out at random as the valid split; 0 writes no valid split (default 1000)",
    )
    split.add_argument(
        "--seed", type=int, default=42, metavar="N",
        help="seed of the random choice of --dev-num valid blocks (default 42)",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _check(args: argparse.Namespace, source: Path) -> None:
    if not source.is_file():
        where = f"--data-dir {args.data_dir} has no {SOURCE_FILE}" if args.data_dir else f"--input {source}: no such file"
        raise ProcessingError(where)
    if args.max_length < 2:
        raise ProcessingError(f"--max-length must be 2 or more (a token and the one it predicts), got {args.max_length}")
    if args.dev_num < 0:
        raise ProcessingError(f"--dev-num must be 0 or more, got {args.dev_num}")
    if args.max_docs is not None and args.max_docs < 1:
        raise ProcessingError(f"--max-docs must be 1 or more, got {args.max_docs}")
    if args.data_process_workers < 1:
        raise ProcessingError(f"--data-process-workers must be 1 or more, got {args.data_process_workers}")


def read_documents(source: Path, max_docs: int | None) -> tuple[list[str], int]:
    """The documents of a one-per-line corpus with their newlines restored, and the number of blank lines skipped."""
    documents, empty_lines = [], 0
    with source.open("rb") as handle:  # bytes, so that a line that is not UTF-8 is reported with its number
        for number, raw in enumerate(handle, start=1):
            if max_docs is not None and len(documents) == max_docs:
                break
            try:
                text = decode_utf8(raw, f"{source}:{number}").removesuffix("\n").removesuffix("\r")
            except DataFormatError as error:
                raise ProcessingError(str(error)) from None
            if not text.strip():
                empty_lines += 1
                continue
            documents.append(text.replace(NEWLINE_MARKER, "\n"))
    return documents, empty_lines


def _blocks_dataset(blocks):
    """A Dataset with one `input_ids` row per row of the (n, max_length) int32 array, built without Python lists."""
    import numpy as np
    import pyarrow as pa
    from datasets import Dataset, Features, List, Value

    n, length = blocks.shape
    if n * length >= 2**31:
        raise ProcessingError(f"{n} blocks of {length} tokens overflow one Arrow list column; cap the corpus with --max-docs")
    offsets = pa.array(np.arange(0, (n + 1) * length, length, dtype=np.int32))
    column = pa.ListArray.from_arrays(offsets, pa.array(blocks.reshape(-1)))
    return Dataset.from_dict({"input_ids": column}, features=Features({"input_ids": List(Value("int32"))}))


def process(args: argparse.Namespace) -> dict:
    """Process the corpus named by `args` into `args.processed_data_dir`; returns its meta."""
    import numpy as np
    from datasets import DatasetDict

    source = Path(args.input) if args.input else Path(args.data_dir) / SOURCE_FILE
    out = Path(args.processed_data_dir)
    _check(args, source)
    tokenizer = load_tokenizer(args.model_path)
    source_sha256 = file_sha256(source)
    dataset_fingerprint = fingerprint(
        tool="process_data_pretrain",
        format_version=FORMAT_VERSION,
        tokenizer=tokenizer_fingerprint(tokenizer),
        newline_marker=NEWLINE_MARKER,
        max_length=args.max_length,
        max_docs=args.max_docs,
        source_sha256=source_sha256,
        dev_num=args.dev_num,
        seed=args.seed,
    )
    existing = existing_output(out, dataset_fingerprint, args.overwrite)
    if existing is not None:
        print(f"{out} already holds this dataset (fingerprint {dataset_fingerprint[:12]}); nothing to do")
        return existing

    documents, empty_lines = read_documents(source, args.max_docs)
    stream = array("i")  # int32, 4 bytes a token rather than a Python int's 28
    for ids in tokenize(documents, tokenizer, args.model_path, args.data_process_workers, "documents"):
        stream.extend(ids)
        stream.append(tokenizer.eos_token_id)
    tokens = np.frombuffer(stream, dtype=np.int32)
    num_blocks = len(tokens) // args.max_length
    if num_blocks == 0:
        raise ProcessingError(f"{source}: {len(tokens)} tokens, fewer than one block of --max-length {args.max_length}")
    if args.dev_num > num_blocks:
        raise ProcessingError(f"--dev-num {args.dev_num} exceeds the {num_blocks} blocks of {source}")
    blocks = tokens[: num_blocks * args.max_length].reshape(num_blocks, args.max_length)
    is_valid = np.zeros(num_blocks, dtype=bool)
    is_valid[random.Random(args.seed).sample(range(num_blocks), args.dev_num)] = True
    # A block that also lies in the valid split (a repeated document) would be validated on after
    # being trained on: such train blocks are dropped.
    valid_blocks = {row.tobytes() for row in blocks[is_valid]}
    in_valid = np.array([not held_out and row.tobytes() in valid_blocks for row, held_out in zip(blocks, is_valid)], dtype=bool)
    splits = {"train": blocks[~is_valid & ~in_valid]}
    if args.dev_num:
        splits["valid"] = blocks[is_valid]
    dataset = DatasetDict({name: _blocks_dataset(split) for name, split in splits.items()})

    meta = {
        "format_version": FORMAT_VERSION,
        "tokenizer": str(args.model_path),
        "tokenizer_class": type(tokenizer).__name__,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "vocab_size": len(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "max_length": args.max_length,
        "max_docs": args.max_docs,
        "dev_num": args.dev_num,
        "seed": args.seed,
        "source": str(source),
        "source_sha256": source_sha256,
        "fingerprint": dataset_fingerprint,
        "counts": {
            "documents": len(documents),
            "empty_lines": empty_lines,
            "duplicate_documents": len(documents) - len(set(documents)),
            "tokens": len(tokens),
            "blocks_train": len(splits["train"]),
            "blocks_train_dropped_as_in_valid": int(in_valid.sum()),
            "blocks_valid": args.dev_num,
            "tokens_dropped": len(tokens) - num_blocks * args.max_length,
        },
    }
    save_atomically(dataset, meta, out)
    counts = meta["counts"]
    print(
        f"wrote {out}: {counts['blocks_train']} train and {counts['blocks_valid']} valid blocks of {args.max_length} tokens "
        f"from {counts['documents']} documents ({counts['tokens']} tokens, {counts['tokens_dropped']} dropped "
        f"in the final partial block, {counts['empty_lines']} blank lines skipped)"
    )
    if counts["duplicate_documents"]:
        print(f"note: {counts['duplicate_documents']} documents repeat an earlier one (kept)")
    if counts["blocks_train_dropped_as_in_valid"]:
        print(f"dropped {counts['blocks_train_dropped_as_in_valid']} train blocks identical to a valid block")
    return meta


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        process(args)
    except ProcessingError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
