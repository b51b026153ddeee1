"""Run the teacher once over a processed dataset and cache its top-K distribution on every response
token, for `finetune --teacher-cache` (an offline teacher: sweeps of divergences, (alpha, beta) and
seeds then never load it).

    python -m tools.cache_teacher_logits --teacher-model-path TEACHER --data-dir processed_data/dolly/full/gpt2 \
        --out cache/dolly-gpt2-xlarge-k128 --top-k 128 --temperatures 1,2
    torchrun --nproc_per_node 8 -m tools.cache_teacher_logits ...      # shards split over the processes

The positions are those `finetune` trains on: the labels != IGNORE_INDEX of each example collated
by `InstructionCollator` at `--max-length`, in order. Each split is cut into shards of
`--shard-size` examples in dataset order, and each shard is written under a temporary name and
renamed, then recorded with its size and SHA-256; an interrupted build run again skips the shards
that are complete (their files are then byte-identical to an uninterrupted build's) and builds the
rest, and a finished one run again checks every shard's SHA-256 and rebuilds the damaged ones
(`finetune` names this command when it finds one). A teacher output holding NaN or +inf is refused. Processes take shards round-robin; rank 0 writes meta.json once all are done. A folder that
holds a cache built with other settings (teacher, data, K, temperatures, dtype, length) is refused,
never overwritten. Format: `distillation_llm/teacher_cache.py`.

The teacher runs in eval mode without gradients, in float32 (`--teacher-dtype bfloat16/float16`
on CUDA), over the first V = len(tokenizer) rows of its head (a padded head's extra rows are no
token); the top K and the tail masses are taken from its float32 logits.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from abkd import engine as E
from abkd.sampling import batches
from distillation_llm.data import IGNORE_INDEX, InstructionCollator, load_processed, tokenizer_fingerprint
from distillation_llm.models import final_hidden_states, load_causal_lm, load_tokenizer, merge_lora, split_head, weights_fingerprint
from distillation_llm.teacher_cache import BUILD, DTYPES, FORMAT_VERSION, META, arrow_schema, invalid_rows, record_batch, shard_name

# Rows of teacher logits [rows, V] computed at once (memory: rows x V x 4 bytes).
LOGIT_ROWS = 1024


class CacheError(Exception):
    """An expected failure (bad argument, a folder holding another cache), reported without a traceback."""


def _digest(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def tail_log_mass(logits: torch.Tensor, top_ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """log of the mass of softmax(logits / T) outside `top_ids` ([rows, V], [rows, K] -> [rows]);
    -inf when the top K is the whole vocabulary."""
    scaled = logits / temperature
    rest = scaled.scatter(-1, top_ids, -torch.inf)
    return torch.logsumexp(rest, dim=-1) - torch.logsumexp(scaled, dim=-1)


@torch.no_grad()
def teacher_rows(teacher, split, batch: dict, vocab: int, top_k: int, temperatures: list[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The teacher's top-K ids [N, K], its top-K logits minus each row's largest [N, K] (float32)
    and the tail log-masses [N, len(temperatures)] on the N response positions of `batch`, in
    row-major order (what `labels != IGNORE_INDEX` selects)."""
    mask = batch["labels"] != IGNORE_INDEX
    if split.fused:
        hidden = final_hidden_states(split, batch["input_ids"], batch["attention_mask"])[mask]
        weight, bias = split.weight[:vocab], split.bias[:vocab] if split.bias is not None else None

        def logits_of(rows: slice) -> torch.Tensor:
            return torch.nn.functional.linear(hidden[rows], weight, bias).float()
    else:  # no accessible head: full logits
        full = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits[..., :vocab][mask]

        def logits_of(rows: slice) -> torch.Tensor:
            return full[rows].float()

    ids, shifted, tails = [], [], []
    for start in range(0, int(mask.sum()), LOGIT_ROWS):
        logits = logits_of(slice(start, start + LOGIT_ROWS))
        top_logits, top_ids = logits.topk(top_k, dim=-1)
        ids.append(top_ids)
        shifted.append(top_logits - top_logits[:, :1])
        tails.append(torch.stack([tail_log_mass(logits, top_ids, t) for t in temperatures], dim=-1))
    if not ids:
        empty = torch.empty(0, top_k, device=mask.device)
        return empty.long(), empty, torch.empty(0, len(temperatures), device=mask.device)
    return torch.cat(ids), torch.cat(shifted), torch.cat(tails)


def write_shard(out: Path, name: str, record_batches, dtype: str) -> dict:
    """Write the record batches as the Arrow stream `out/name` (temporary name, then renamed) and
    its record `<shard>.json`; returns the record."""
    import pyarrow as pa

    path = out / name
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    examples = tokens = 0
    with pa.OSFile(str(staging), "wb") as sink, pa.ipc.new_stream(sink, arrow_schema(dtype)) as writer:
        for batch in record_batches:
            writer.write_batch(batch)
            examples += batch.num_rows
            tokens += int(pa.compute.sum(batch.column("tokens")).as_py() or 0)
    os.replace(staging, path)
    record = {"file": name, "examples": examples, "tokens": tokens, "bytes": path.stat().st_size, "sha256": E.file_sha256(path)}
    _write_json(path.with_suffix(".json"), record)
    return record


def complete_shard(out: Path, name: str, examples: int) -> dict | None:
    """The record of shard `name` if it is complete (record present, file of that size and hash), else None."""
    path = out / name
    try:
        record = json.loads(path.with_suffix(".json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if record.get("examples") != examples or not path.is_file() or path.stat().st_size != record.get("bytes"):
        return None
    return record if E.file_sha256(path) == record.get("sha256") else None


def _write_json(path: Path, payload: dict) -> None:
    E.atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def build_settings(args: argparse.Namespace, data_meta: dict, tokenizer, splits: dict) -> dict:
    """What the cache is a function of; build.json and meta.json hold it, and a restart must match it."""
    teacher = weights_fingerprint(args.teacher_model_path)
    if args.teacher_peft_path:
        teacher["peft"] = weights_fingerprint(args.teacher_peft_path)
    return {
        "format_version": FORMAT_VERSION,
        "teacher": teacher,
        "teacher_dtype": args.teacher_dtype,
        "dataset": str(Path(args.data_dir).resolve()),
        "dataset_fingerprint": data_meta["fingerprint"],
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "vocab_size": len(tokenizer),
        "top_k": args.top_k,
        "temperatures": args.temperatures,
        "dtype": args.dtype,
        "max_length": args.max_length,
        "shard_size": args.shard_size,
        "batch_size": args.batch_size,  # the teacher's batches: the float rounding of its outputs depends on them
        "split_sizes": {name: len(split) for name, split in splits.items()},
    }


def prepare_out(out: Path, settings: dict) -> None:
    """Create `out` with build.json, or check that the build.json there has these settings."""
    build = out / BUILD
    if build.is_file():
        previous = json.loads(build.read_text())
        if previous != settings:
            differ = sorted(key for key in set(previous) | set(settings) if previous.get(key) != settings.get(key))
            raise CacheError(
                f"--out {out} holds a teacher cache built with other settings (they differ in: {', '.join(differ)}); "
                "it is not overwritten: give another --out, or delete that folder"
            )
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CacheError(f"--out {out} exists and holds no teacher cache ({BUILD} missing); give an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    _write_json(build, settings)


def parse_temperatures(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--temperatures {text}: give comma-separated numbers, e.g. 1,2") from None
    if not values or any(not (t > 0 and t < float("inf")) for t in values):
        raise argparse.ArgumentTypeError(f"--temperatures {text}: temperatures must be positive and finite")
    return list(dict.fromkeys(values))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.cache_teacher_logits", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher-model-path", required=True, help="local teacher checkpoint whose distributions are cached")
    parser.add_argument("--teacher-peft-path", help="LoRA adapter of a fine-tuned teacher, merged into --teacher-model-path (as finetune does)")
    parser.add_argument("--data-dir", required=True, help="processed dataset (tools.process_data_dolly) whose response tokens are cached")
    parser.add_argument("--out", required=True, help="cache folder (new, empty, or an unfinished build of the same settings to resume)")
    parser.add_argument("--top-k", type=int, required=True, help="teacher tokens kept per position (K); the rest is one tail bucket")
    parser.add_argument("--temperatures", type=parse_temperatures, default=[1.0],
                        help="comma-separated KD temperatures whose tail mass is cached; a run may distil only at these (POCL: every stage's)")
    parser.add_argument("--dtype", choices=DTYPES, default="float16", help="storage of the top-K logits (minus the row maximum); tail masses are float32")
    parser.add_argument("--splits", default="train,valid", help="comma-separated splits to cache (finetune --do-valid reads valid)")
    parser.add_argument("--max-length", type=int, default=None,
                        help="cut prompt + response to this many tokens, as finetune --max-length does (default: the data's processing length)")
    parser.add_argument("--batch-size", type=int, default=16, help="examples per teacher forward pass")
    parser.add_argument("--shard-size", type=int, default=1024, help="examples per shard (the unit of resuming and of work per process)")
    parser.add_argument("--teacher-dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="precision of the teacher's forward pass (half precision on CUDA only; float32 on CPU)")
    return parser


def build(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    device = E.init_distributed()
    if args.teacher_dtype != "float32" and device.type != "cuda":
        E.print_rank0(f"warning: --teacher-dtype {args.teacher_dtype} needs CUDA: the teacher runs in float32 on {device.type}")
        args.teacher_dtype = "float32"
    tokenizer = load_tokenizer(args.teacher_model_path, "--teacher-model-path")
    data, data_meta = load_processed(args.data_dir, tokenizer)
    names = [name.strip() for name in args.splits.split(",") if name.strip()]
    if absent := [name for name in names if name not in data]:
        raise CacheError(f"--splits: --data-dir {args.data_dir} has no {', '.join(absent)} split (it has {', '.join(data)})")
    splits = {name: data[name] for name in names}
    args.max_length = args.max_length or data_meta.get("max_length")
    if not args.max_length:
        raise CacheError(f"--data-dir {args.data_dir}: meta.json records no max_length; give --max-length")
    vocab = len(tokenizer)
    if not 1 <= args.top_k <= vocab:
        raise CacheError(f"--top-k {args.top_k}: must lie in [1, {vocab}] (the tokenizer's vocabulary)")
    for flag in ("batch_size", "shard_size"):
        if getattr(args, flag) < 1:
            raise CacheError(f"--{flag.replace('_', '-')} must be at least 1")
    out = Path(args.out)
    settings = build_settings(args, data_meta, tokenizer, splits)
    if E.is_main_process():
        prepare_out(out, settings)
    E.barrier()
    # build.json matched. With meta.json present the cache was complete once; its shards are still
    # checked (size and SHA-256 against their records and meta.json's), and the damaged ones rebuilt.
    finished = json.loads((out / META).read_text()) if (out / META).is_file() else None
    recorded = {shard["file"]: shard["sha256"] for split in (finished or {"splits": {}})["splits"].values() for shard in split["shards"]}
    E.barrier()  # every process has read meta.json before one removes it

    shards = [(name, index, range(start, min(start + args.shard_size, len(split))))
              for name, split in splits.items() for index, start in enumerate(range(0, len(split), args.shard_size))]
    mine = [shard for number, shard in enumerate(shards) if number % E.world_size() == E.rank()]

    def complete(shard) -> bool:
        name = shard_name(shard[0], shard[1])
        record = complete_shard(out, name, len(shard[2]))
        return record is not None and (finished is None or recorded.get(name) == record["sha256"])

    todo = [shard for shard in mine if not complete(shard)]
    if todo and finished is not None:
        print(f"{out}: {len(todo)} shard(s) do not match their recorded size or SHA-256 "
              f"({', '.join(shard_name(name, index) for name, index, _ in todo[:5])}): rebuilding them", flush=True)
        (out / META).unlink(missing_ok=True)  # an interrupted repair leaves an unfinished build, never a complete-looking one
    if todo:
        teacher = load_causal_lm(args.teacher_model_path, dtype=getattr(torch, args.teacher_dtype), device=device, flag="--teacher-model-path")
        if args.teacher_peft_path:
            teacher = merge_lora(teacher, args.teacher_peft_path)
        teacher.eval().requires_grad_(False)
        head = teacher.get_output_embeddings()
        if head is not None and head.weight.shape[0] < vocab:
            raise CacheError(f"--teacher-model-path {args.teacher_model_path}: its head has {head.weight.shape[0]} rows, fewer than the tokenizer's {vocab} tokens")
        split = split_head(teacher)
        collate = InstructionCollator(tokenizer.pad_token_id, args.max_length)
        bar = tqdm(total=sum(len(rows) for _, _, rows in todo), desc="teacher", unit="ex", disable=not E.is_main_process(), dynamic_ncols=True)

        def shard_batches(name: str, rows: range):
            for index in batches(rows, args.batch_size):
                examples = [splits[name][i] for i in index]
                batch = {key: value.to(device) for key, value in collate(examples).items()}
                top_ids, top_logits, tails = teacher_rows(teacher, split, batch, vocab, args.top_k, args.temperatures)
                counts = (batch["labels"] != IGNORE_INDEX).sum(-1).tolist()
                if (problem := invalid_rows(top_logits, tails)) is not None:
                    raise CacheError(
                        f"--teacher-model-path {args.teacher_model_path}: {problem} on {name} examples "
                        f"{batch['ids'].tolist()} (shard {shard_name(name, rows.start // args.shard_size)}); nothing of it is cached"
                    )
                yield record_batch(batch["ids"].tolist(), counts, top_ids, top_logits, tails, args.dtype)
                bar.update(len(index))

        for name, index, rows in todo:
            write_shard(out, shard_name(name, index), shard_batches(name, rows), args.dtype)
        bar.close()
    built = torch.tensor([len(todo)], device=device)
    if E.world_size() > 1:
        torch.distributed.all_reduce(built)  # also the barrier: every shard is written
    if finished is not None and int(built.item()) == 0:
        E.print_rank0(f"{out} already holds this teacher cache, every shard matching its SHA-256: nothing to do")
        return finished
    meta = None
    if E.is_main_process():
        meta = write_meta(out, settings, shards, started, resumed=len(shards) - int(built.item()))
    E.barrier()
    return meta


def write_meta(out: Path, settings: dict, shards: list, started: float, resumed: int | None) -> dict:
    """meta.json: the settings, every shard's record (checked complete), counts and size; written last."""
    records = {}
    for name, index, rows in shards:
        record = complete_shard(out, shard_name(name, index), len(rows))
        if record is None:
            raise CacheError(f"shard {out / shard_name(name, index)} is missing or damaged after the build; run the command again")
        records.setdefault(name, []).append(record)
    splits = {
        name: {"examples": sum(r["examples"] for r in shards_), "tokens": sum(r["tokens"] for r in shards_), "shards": shards_}
        for name, shards_ in records.items()
    }
    size = sum(r["bytes"] for shards_ in records.values() for r in shards_)
    digest = _digest([settings, splits])
    meta = {**settings, "splits": splits, "bytes": size, "fingerprint": digest,
            "build": {"seconds": round(time.perf_counter() - started, 2), "processes": E.world_size(), "resumed_shards": resumed,
                      "finished": time.strftime("%Y-%m-%d %H:%M:%S")}}
    _write_json(out / META, meta)
    tokens = sum(split["tokens"] for split in splits.values())
    print(f"cached the teacher's top {settings['top_k']} on {tokens} response tokens of {', '.join(splits)} "
          f"({size / 2**20:.1f} MiB, {size / max(tokens, 1) * 1e6 / 2**20:.1f} MiB per 1M tokens) -> {out}", flush=True)
    return meta


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        build(args)
    except (CacheError, FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
