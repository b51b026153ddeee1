"""What the data-processing tools share: tokenizer loading, parallel tokenisation, fingerprints,
and writing a processed dataset so that a directory either holds a complete one or none."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from tqdm import tqdm

from abkd.engine import file_sha256  # noqa: F401  (re-exported: the data tools fingerprint their sources with it)
from abkd.pretrained import check_tokenizer_files

FORMAT_VERSION = 1
META_FILE = "meta.json"


class ProcessingError(Exception):
    """An expected failure (bad argument, missing file, conflicting output) reported without a traceback."""


def load_tokenizer(model_path: str | Path):
    """Load the tokenizer of a local checkpoint directory; never reaches a hub."""
    from transformers import AutoTokenizer

    if not Path(model_path).is_dir():
        raise ProcessingError(f"--model-path {model_path}: no such directory (a local tokenizer directory is needed)")
    try:
        check_tokenizer_files(model_path, "--model-path")
    except FileNotFoundError as error:
        raise ProcessingError(str(error)) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    except (OSError, ValueError) as error:
        raise ProcessingError(f"--model-path {model_path}: could not load a tokenizer: {error}") from error
    if tokenizer.eos_token_id is None:
        raise ProcessingError(f"--model-path {model_path}: the tokenizer has no EOS token")
    return tokenizer


def fingerprint(**settings) -> str:
    """The identity of a processed dataset: equal fingerprints mean byte-for-byte equal outputs."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


# Tokenisation -----------------------------------------------------------------------------------

_worker_tokenizer = None


def _init_worker(model_path: str) -> None:
    global _worker_tokenizer
    _worker_tokenizer = load_tokenizer(model_path)


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    # verbose=False: documents longer than the model's context are expected here; they are cut later.
    return tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]


def _encode_in_worker(texts: list[str]) -> list[list[int]]:
    return _encode(_worker_tokenizer, texts)


def _encoded_chunks(chunks: list[list[str]], tokenizer, model_path: str, workers: int) -> Iterator[list[list[int]]]:
    if workers == 1:
        for chunk in chunks:
            yield _encode(tokenizer, chunk)
        return
    # The processes are the parallelism; this also keeps tokenizers from warning about the fork.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with multiprocessing.Pool(workers, initializer=_init_worker, initargs=(str(model_path),)) as pool:
        yield from pool.imap(_encode_in_worker, chunks)


def tokenize(
    texts: Sequence[str], tokenizer, model_path: str, workers: int, desc: str, chunk_size: int = 256
) -> Iterator[list[int]]:
    """Yield the token ids of each text (no special tokens added), in order, with a progress bar.

    With `workers` > 1, chunks of texts are tokenised by that many processes, each loading the
    tokenizer from `model_path`; the ordered `imap` makes the result identical to one worker.
    """
    chunks = [list(texts[i : i + chunk_size]) for i in range(0, len(texts), chunk_size)]
    with tqdm(total=len(texts), desc=desc, unit="ex") as bar:
        for ids in _encoded_chunks(chunks, tokenizer, model_path, workers):
            bar.update(len(ids))
            yield from ids


# Output -----------------------------------------------------------------------------------------


def existing_output(out: Path, expected_fingerprint: str, overwrite: bool) -> dict | None:
    """The meta of a dataset already in `out` with this fingerprint (nothing to do), else None.

    With `overwrite` any processed dataset there is to be replaced (None). Without it, a differently
    processed one is refused. A non-empty folder that holds no processed dataset is always refused,
    so --overwrite can never delete something else.
    """
    if not out.exists():
        return None
    if not out.is_dir():
        raise ProcessingError(f"--processed-data-dir {out} exists and is not a directory")
    meta_path = out / META_FILE
    if not meta_path.is_file():
        if any(out.iterdir()):
            raise ProcessingError(
                f"--processed-data-dir {out} is not empty and holds no processed dataset ({META_FILE} missing); "
                "choose another directory or empty it"
            )
        return None
    if overwrite:
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as error:
        raise ProcessingError(f"{meta_path}: unreadable ({error}); pass --overwrite to replace the dataset") from None
    if meta.get("fingerprint") == expected_fingerprint:
        return meta
    raise ProcessingError(
        f"--processed-data-dir {out} already holds a dataset processed differently "
        f"(fingerprint {str(meta.get('fingerprint'))[:12]}, these settings give {expected_fingerprint[:12]}); "
        "pass --overwrite to replace it"
    )


def save_atomically(dataset, meta: dict, out: Path) -> None:
    """Save a DatasetDict and its meta.json into `out`, replacing what is there.

    Everything is written to a hidden temporary sibling first, meta.json last, and renamed into
    place, so an interrupted run leaves no directory that looks like a complete dataset.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = _new_sibling(out, "tmp")
    try:
        # An empty split saved with the default 0 shards cannot be loaded back.
        dataset.save_to_disk(str(staging), num_shards={name: 1 for name, split in dataset.items() if len(split) == 0})
        (staging / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        if out.exists():
            retired = _new_sibling(out, "old")
            out.rename(retired / out.name)
            staging.rename(out)
            shutil.rmtree(retired)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _new_sibling(out: Path, kind: str) -> Path:
    """A new hidden directory next to `out` (created with the usual permissions, unlike mkdtemp's 0700)."""
    path = out.parent / f".{out.name}.{kind}-{uuid.uuid4().hex[:12]}"
    path.mkdir()
    return path
