"""An offline teacher: its top-K distribution on every response token of a processed dataset, cached
once by `tools.cache_teacher_logits` and read back by `finetune --teacher-cache` instead of running
the teacher.

On disk (`CACHE/`):

    build.json              the build's settings (teacher and its hash, dataset, tokenizer, K, ...),
                            written first: a restart compares it and refuses another build's folder
    <split>/<nnnnn>.arrow   shard n of the split: a fixed run of --shard-size examples in dataset order
    <split>/<nnnnn>.json    written after its shard: examples, tokens, bytes and SHA-256 (a shard
                            without a matching record is rebuilt, also after meta.json is written)
    meta.json               the settings plus every shard, the counts and the size; written last,
                            so a folder without it is an unfinished build

A shard is an Arrow IPC stream (the format of `datasets`' own files; `datasets.Dataset.from_file`
opens it) with one row per example: `id`, `tokens` (n, the number of positions whose label is not
IGNORE_INDEX when `InstructionCollator` collates the example at the cache's max length, in order),
and flat lists `top_ids` (n x K int32: the teacher's top-K token ids, best first), `top_logits`
(n x K: those logits minus the row's largest, so the first is 0; float16, bfloat16 stored as its
uint16 bit pattern, or float32) and `tail_log_mass` (n x len(temperatures) float32: the log of the
mass of softmax(z / T) outside the top K at each cached temperature T; -inf when K = V).

Training reads the shards memory-mapped; each shard's SHA-256 is checked against meta.json when
its rows are first read, and rows holding NaN or +inf are refused naming the shard and example.
`TeacherCache.collator` adds an example's cached rows to each collated batch (in label order,
`teacher_*` keys), and `TeacherCache.buckets` turns them into the teacher's (K + 1)-bucket
distribution at the run's temperature (`abkd.fused.TeacherBuckets`).
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from abkd.engine import file_sha256
from distillation_llm.data import IGNORE_INDEX, InstructionCollator

FORMAT_VERSION = 1
META = "meta.json"
BUILD = "build.json"
# How the shifted top-K logits are stored: Arrow type of the values, numpy dtype, torch dtype.
DTYPES = ("float16", "bfloat16", "float32")
# Temperatures match when they agree to this relative tolerance (POCL's stage temperatures such
# as 4/3 are written with finitely many digits on a command line).
TEMPERATURE_RTOL = 1e-6


def shard_name(split: str, index: int) -> str:
    return f"{split}/{index:05d}.arrow"


def arrow_schema(dtype: str):
    import pyarrow as pa

    values = {"float16": pa.float16(), "bfloat16": pa.uint16(), "float32": pa.float32()}[dtype]
    return pa.schema([
        ("id", pa.int64()),
        ("tokens", pa.int32()),
        ("top_ids", pa.list_(pa.int32())),
        ("top_logits", pa.list_(values)),
        ("tail_log_mass", pa.list_(pa.float32())),
    ])


def logits_to_storage(top_logits: Tensor, dtype: str) -> np.ndarray:
    """[n, K] float32 logits as the flat numpy array stored for `dtype` (bfloat16 as uint16 bits)."""
    if dtype == "bfloat16":
        return top_logits.to(torch.bfloat16).view(torch.int16).cpu().numpy().view(np.uint16).reshape(-1)
    return top_logits.to(getattr(torch, dtype)).cpu().numpy().reshape(-1)


def storage_to_logits(values: np.ndarray, dtype: str) -> Tensor:
    """The inverse of `logits_to_storage` (flat), as a torch tensor of the stored precision."""
    if dtype == "bfloat16":
        return torch.from_numpy(values.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(values)


def record_batch(ids: Sequence[int], counts: Sequence[int], top_ids: Tensor, top_logits: Tensor, tail_log_mass: Tensor, dtype: str):
    """One Arrow record batch of examples: `ids`, their token `counts`, and their rows
    concatenated in example order: top_ids [N, K], top_logits [N, K] (shifted, float32),
    tail_log_mass [N, len(temperatures)]."""
    import pyarrow as pa

    offsets = np.concatenate([[0], np.cumsum(np.asarray(counts, dtype=np.int64))])
    k, temperatures = top_ids.shape[-1], tail_log_mass.shape[-1]

    def lists(values: np.ndarray, width: int):
        return pa.ListArray.from_arrays(pa.array((offsets * width).astype(np.int32)), pa.array(values))

    schema = arrow_schema(dtype)
    return pa.record_batch(
        [
            pa.array(np.asarray(ids, dtype=np.int64)),
            pa.array(np.asarray(counts, dtype=np.int32)),
            lists(top_ids.to(torch.int32).cpu().numpy().reshape(-1), k),
            lists(logits_to_storage(top_logits, dtype), k).cast(schema.field("top_logits").type),
            lists(tail_log_mass.to(torch.float32).cpu().numpy().reshape(-1), temperatures),
        ],
        schema=schema,
    )




class CacheMismatch(ValueError):
    """A cache that was not built for this run (another dataset, tokenizer, temperature, length),
    or whose files are not what its build wrote."""


def invalid_rows(top_logits: Tensor, tail_log_mass: Tensor) -> str | None:
    """What is wrong with cached rows ([N, K] shifted top-K logits, [N, T] tail log-masses), or
    None. Both hold log-probabilities relative to the row's largest logit, so NaN or +inf is never
    a teacher output, and each row's first (largest) logit is 0; -inf is a probability of 0 (a
    tail without mass, or a logit below float16's range) and is kept."""
    for name, values in (("top-K logit", top_logits), ("tail log-mass", tail_log_mass)):
        values = values.float()
        if bad := int(torch.isnan(values).sum() + torch.isposinf(values).sum()):
            return f"{bad} non-finite {name} value(s) (NaN or +inf)"
    if top_logits.numel() and bool((top_logits[:, 0].float() != 0).any()):
        return "a row whose largest top-K logit is not 0 (each row is stored minus its largest)"
    return None


def rebuild_command(path: str | Path, meta: dict) -> str:
    """The `tools.cache_teacher_logits` command of the build that wrote the cache at `path`
    (from its recorded settings): run again, it verifies every shard against its SHA-256 and
    rebuilds the damaged ones."""
    teacher = meta["teacher"]
    parts = [
        "python -m tools.cache_teacher_logits", "--teacher-model-path", teacher["path"],
        *(("--teacher-peft-path", teacher["peft"]["path"]) if "peft" in teacher else ()),
        "--data-dir", meta["dataset"], "--out", str(path), "--top-k", str(meta["top_k"]),
        "--temperatures", ",".join(repr(float(t)) for t in meta["temperatures"]), "--dtype", meta["dtype"],
        "--splits", ",".join(meta["split_sizes"]), "--max-length", str(meta["max_length"]),
        "--batch-size", str(meta["batch_size"]), "--shard-size", str(meta["shard_size"]), "--teacher-dtype", meta["teacher_dtype"],
    ]
    return " ".join(shlex.quote(str(part)) if i else part for i, part in enumerate(parts))


def read_meta(path: str | Path, flag: str = "--teacher-cache") -> dict:
    """The meta.json of a complete cache; FileNotFoundError naming `flag` otherwise."""
    path = Path(path)
    if not (path / META).is_file():
        unfinished = " (an unfinished build: run tools.cache_teacher_logits again to complete it)" if (path / BUILD).is_file() else ""
        raise FileNotFoundError(f"{flag} {path}: no complete teacher cache here (missing {META}){unfinished}")
    meta = json.loads((path / META).read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise CacheMismatch(f"{flag} {path}: cache format {meta.get('format_version')}, this version reads {FORMAT_VERSION}; rebuild it")
    return meta


def identity(meta: dict) -> dict:
    """What a run records about its cache (args.json), so that --resume refuses another one."""
    keys = ("fingerprint", "teacher", "dataset_fingerprint", "tokenizer_fingerprint", "vocab_size", "top_k", "temperatures", "dtype", "max_length")
    return {key: meta[key] for key in keys}


def temperature_index(temperatures: Sequence[float], temperature: float) -> int | None:
    for index, cached in enumerate(temperatures):
        if math.isclose(cached, temperature, rel_tol=TEMPERATURE_RTOL):
            return index
    return None


def check_compatible(
    meta: dict,
    *,
    path: str | Path,
    data_dir: str | Path,
    data_meta: dict,
    tokenizer_fingerprint: str,
    max_length: int,
    temperatures: Sequence[float],
    splits: Sequence[str],
    flag: str = "--teacher-cache",
) -> None:
    """Refuse (CacheMismatch, naming `flag` and what differs) a cache that was built for another
    dataset or tokenizer, at another length, without one of the run's KD `temperatures`, or
    without one of the `splits` the run reads."""
    where = f"{flag} {path}"
    if meta["dataset_fingerprint"] != data_meta.get("fingerprint"):
        raise CacheMismatch(
            f"{where} was built for another dataset ({meta['dataset']}, fingerprint {str(meta['dataset_fingerprint'])[:12]}) "
            f"than --data-dir {data_dir} (fingerprint {str(data_meta.get('fingerprint'))[:12]}): build a cache for this dataset"
        )
    if meta["tokenizer_fingerprint"] != tokenizer_fingerprint:
        raise CacheMismatch(
            f"{where} was built with another tokenizer (fingerprint {meta['tokenizer_fingerprint'][:12]}) than the student's "
            f"({tokenizer_fingerprint[:12]}): its token ids mean other tokens"
        )
    # The collator cuts prompt + response to the max length; the processed data is already cut to
    # its own, so the positions agree when both lengths cut the same way.
    data_max = data_meta.get("max_length") or max(max_length, meta["max_length"])
    if min(max_length, data_max) != min(meta["max_length"], data_max):
        raise CacheMismatch(
            f"{where} holds the response positions of sequences cut to {meta['max_length']} tokens, but this run's --max-length "
            f"is {max_length} (the data was processed to {data_max}): build the cache with --max-length {max_length}"
        )
    missing = [t for t in temperatures if temperature_index(meta["temperatures"], t) is None]
    if missing:
        needed = ",".join(f"{t:.7g}" for t in dict.fromkeys(temperatures))
        raise CacheMismatch(
            f"{where} holds the teacher's tail mass at temperatures {', '.join(f'{t:g}' for t in meta['temperatures'])}, but this "
            f"run distils at {', '.join(f'{t:.7g}' for t in missing)}: build it with --temperatures {needed}"
        )
    absent = [split for split in splits if split not in meta["splits"]]
    if absent:
        raise CacheMismatch(f"{where} has no {' or '.join(absent)} split (it holds {', '.join(meta['splits'])}): build it with --splits {','.join(splits)}")


@dataclass
class _Chunk:
    """The arrays of one Arrow record batch, memory-mapped: per-example list offsets and flat values."""

    shard: int  # index into TeacherCache.shards
    offsets: np.ndarray  # [examples + 1], in rows (tokens)
    top_ids: np.ndarray  # [rows * K] int32
    top_logits: np.ndarray  # [rows * K]
    tail_log_mass: np.ndarray  # [rows * T] float32


class TeacherCache:
    """A complete cache opened for training (see the module docstring). Use `open`."""

    def __init__(self, path: Path, meta: dict):
        self.path, self.meta = path, meta
        self.top_k, self.vocab_size, self.dtype = int(meta["top_k"]), int(meta["vocab_size"]), meta["dtype"]
        self.temperatures = [float(t) for t in meta["temperatures"]]
        self.shards: list[dict] = [shard for split in meta["splits"].values() for shard in split["shards"]]
        self._verified: set[int] = set()  # shards whose SHA-256 matched meta.json's record
        self._chunks: list[_Chunk] = []
        self._where: dict[int, tuple[int, int, int]] = {}  # id -> (chunk, example in chunk, tokens)
        for index in range(len(self.shards)):
            self._map_shard(index)

    @classmethod
    def open(cls, path: str | Path, flag: str = "--teacher-cache", **expected) -> TeacherCache:
        """Open the cache at `path`, after `check_compatible(meta, **expected)` when given."""
        path = Path(path)
        meta = read_meta(path, flag)
        if expected:
            check_compatible(meta, path=path, flag=flag, **expected)
        return cls(path, meta)

    def _damaged(self, shard: dict, what: str) -> CacheMismatch:
        return CacheMismatch(
            f"--teacher-cache {self.path}: shard {self.path / shard['file']} {what}: the file was changed or damaged after it was "
            f"written; rebuild the damaged shards with `{rebuild_command(self.path, self.meta)}`"
        )

    def _map_shard(self, index: int) -> None:
        """Memory-map shard `index` and index its example ids (its values are checked on first use, `_verify`)."""
        import pyarrow as pa

        shard = self.shards[index]
        file = self.path / shard["file"]
        if not file.is_file() or file.stat().st_size != shard["bytes"]:
            found = f"has {file.stat().st_size} bytes" if file.is_file() else "is missing"
            raise self._damaged(shard, f"{found} ({shard['bytes']} bytes were written)")
        try:
            table = pa.ipc.open_stream(pa.memory_map(str(file))).read_all()
        except pa.ArrowException as error:
            raise self._damaged(shard, f"is not a readable Arrow stream ({error})") from None
        for batch in table.to_batches():
            columns = {name: batch.column(name) for name in ("top_ids", "top_logits", "tail_log_mass")}
            k_offsets = columns["top_ids"].offsets.to_numpy()
            chunk = _Chunk(
                shard=index,
                offsets=k_offsets // self.top_k,
                top_ids=columns["top_ids"].values.to_numpy(),
                top_logits=columns["top_logits"].values.to_numpy(),
                tail_log_mass=columns["tail_log_mass"].values.to_numpy(),
            )
            number = len(self._chunks)
            self._chunks.append(chunk)
            tokens = batch.column("tokens").to_numpy()
            for row, example_id in enumerate(batch.column("id").to_numpy().tolist()):
                self._where[example_id] = (number, row, int(tokens[row]))

    def _verify(self, index: int) -> None:
        """The SHA-256 of shard `index` against meta.json's record, once per shard (streamed from disk)."""
        if index in self._verified:
            return
        shard = self.shards[index]
        if file_sha256(self.path / shard["file"]) != shard["sha256"]:
            raise self._damaged(shard, f"does not match the SHA-256 recorded in {META}")
        self._verified.add(index)

    def __contains__(self, example_id: int) -> bool:
        return int(example_id) in self._where

    def check_covers(self, ids: Sequence[int], split: str) -> None:
        """Every example the run reads is cached (start-up check; CacheMismatch naming the first missing id)."""
        missing = [i for i in ids if int(i) not in self._where]
        if missing:
            for index in range(len(self.shards)):  # a damaged shard's ids may read wrong: say so first
                self._verify(index)
            raise CacheMismatch(
                f"--teacher-cache {self.path} has no teacher outputs for {len(missing)} {split} examples of --data-dir, "
                f"e.g. id {missing[0]}: build the cache for this dataset"
            )

    def rows(self, ids: Sequence[int], counts: Sequence[int]) -> dict[str, Tensor]:
        """The cached rows of examples `ids`, concatenated in order, checking that example i has
        `counts[i]` response positions: teacher_top_ids [N, K] int32, teacher_top_logits [N, K]
        (stored precision), teacher_tail_log_mass [N, len(temperatures)] float32."""
        k, width = self.top_k, len(self.temperatures)
        top_ids, top_logits, tails = [], [], []
        for example_id, count in zip(ids, counts):
            example_id = int(example_id)
            if example_id not in self._where:
                raise CacheMismatch(f"--teacher-cache {self.path} has no teacher outputs for example id {example_id}: build the cache for this dataset")
            index, row, tokens = self._where[example_id]
            if tokens != int(count):
                raise CacheMismatch(
                    f"--teacher-cache {self.path}: example id {example_id} has {tokens} cached response tokens, but the batch trains on "
                    f"{int(count)}: the cache was built for other data or another --max-length"
                )
            chunk = self._chunks[index]
            self._verify(chunk.shard)
            first, last = chunk.offsets[row], chunk.offsets[row + 1]
            top_ids.append(chunk.top_ids[first * k : last * k])
            top_logits.append(chunk.top_logits[first * k : last * k])
            tails.append(chunk.tail_log_mass[first * width : last * width])
        rows = {
            "teacher_top_ids": torch.from_numpy(np.concatenate(top_ids)).view(-1, k),
            "teacher_top_logits": storage_to_logits(np.concatenate(top_logits), self.dtype).view(-1, k),
            "teacher_tail_log_mass": torch.from_numpy(np.concatenate(tails)).view(-1, width),
        }
        if (problem := invalid_rows(rows["teacher_top_logits"], rows["teacher_tail_log_mass"])) is not None:
            self._refuse_invalid(ids, counts, rows, problem)
        return rows

    def _refuse_invalid(self, ids: Sequence[int], counts: Sequence[int], rows: dict[str, Tensor], problem: str) -> None:
        """CacheMismatch naming the shard and the first example of `ids` whose cached rows are invalid."""
        start = 0
        for example_id, count in zip(ids, counts):
            end = start + int(count)
            if (problem := invalid_rows(rows["teacher_top_logits"][start:end], rows["teacher_tail_log_mass"][start:end])) is not None:
                shard = self.shards[self._chunks[self._where[int(example_id)][0]].shard]
                raise CacheMismatch(
                    f"--teacher-cache {self.path}: shard {self.path / shard['file']}, example id {int(example_id)}: {problem}, as its build "
                    f"wrote it (the SHA-256 matches): delete {self.path} and build it again with `{rebuild_command(self.path, self.meta)}`, "
                    "which refuses a teacher output holding NaN or +inf naming its examples"
                )
            start = end
        raise CacheMismatch(f"--teacher-cache {self.path}: {problem}")

    def collator(self, collate: InstructionCollator) -> CachedTeacherCollator:
        return CachedTeacherCollator(collate, self)

    def buckets(self, batch: dict[str, Tensor], temperature: float):
        """The teacher's (K + 1)-bucket distribution at `temperature` on every position of
        `batch` (collated by `collator`): `abkd.fused.TeacherBuckets` with ids [B, L, K] int64 and
        log_probs [B, L, K + 1] float32 on the batch's device. Positions without a label hold a
        harmless placeholder (ids 0..K-1, uniform buckets): no loss reads them."""
        from abkd.fused import TeacherBuckets
        from abkd.losses import teacher_bucket_log_probs

        index = temperature_index(self.temperatures, temperature)
        if index is None:
            raise CacheMismatch(f"--teacher-cache {self.path} holds temperatures {self.temperatures}, not {temperature:g}")
        mask = batch["labels"] != IGNORE_INDEX
        device, k = mask.device, self.top_k
        log_probs = teacher_bucket_log_probs(batch["teacher_top_logits"].float(), batch["teacher_tail_log_mass"][:, index], temperature)
        ids = torch.arange(k, device=device).expand(*mask.shape, k).clone()
        ids[mask] = batch["teacher_top_ids"].long()
        full = torch.full((*mask.shape, k + 1), -math.log(k + 1), device=device)
        full[mask] = log_probs.float()
        return TeacherBuckets(ids=ids, log_probs=full)


class CachedTeacherCollator:
    """`collate(rows)` plus the cached teacher rows of its response positions (`TeacherCache.rows`)."""

    def __init__(self, collate: InstructionCollator, cache: TeacherCache):
        self.collate, self.cache = collate, cache

    def __call__(self, rows: Sequence[dict]) -> dict[str, Tensor]:
        batch = self.collate(rows)
        counts = (batch["labels"] != IGNORE_INDEX).sum(-1).tolist()
        return {**batch, **self.cache.rows(batch["ids"].tolist(), counts)}
