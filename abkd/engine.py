"""DeepSpeed engine helpers shared by the three training loops.

The same command runs as one CPU process (`python -m ...`), under `torchrun`, or under the
`deepspeed` launcher on many GPUs and nodes: gloo and fp32 on CPU, NCCL and fp16/bf16 on CUDA,
chosen automatically.

Checkpoints are atomic: DeepSpeed writes into `<root>/.incomplete/<tag>/`, which is renamed to
`<root>/<tag>/` only once every rank has finished and rank 0 has listed the size and SHA-256 of
every file in its `manifest.json`; only then does `<root>/latest` (written to a temporary file and
renamed) point at it. A run killed mid-save leaves at most an `.incomplete` directory that nothing
reads. Loading verifies the manifest and falls back, with a warning naming the bad file, to the
newest checkpoint that is whole (a disk filled up, a file truncated by a copy). Every file is read
with `torch.load(weights_only=True)`: DeepSpeed's own loader unpickles anything, so the engine's
loader is swapped for one that allows only tensors, plain containers and the few DeepSpeed value
types its optimizer state holds.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import random
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

LATEST = "latest"
INCOMPLETE = ".incomplete"
MANIFEST = "manifest.json"
# Test hook: seconds to sleep between the phases of a save, so that a test can kill the process
# at a chosen point inside it (tests/test_resume_reliability.py).
PAUSE_ENV = "ABKD_CHECKPOINT_PAUSE"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_distributed() -> torch.device:
    """Initialise torch.distributed through DeepSpeed (NCCL on CUDA, gloo on CPU) and return this
    process's device. A plain `python` launch becomes a world of one."""
    import deepspeed

    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    cuda = torch.cuda.is_available()
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", auto_mpi_discovery=False)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def print_rank0(*args: Any) -> None:
    if is_main_process():
        print(*args, flush=True)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_deepspeed_config(
    path: str | Path | None,
    *,
    micro_batch_size: int,
    gradient_accumulation_steps: int,
    clip_grad: float | None = None,
    half_precision: str | None = None,
) -> dict:
    """Read a DeepSpeed JSON config and write the command line's batch sizes into it.

    `half_precision` ('fp16' or 'bf16') is honoured only on CUDA; on CPU both are switched off and
    the log says so. An fp16/bf16 section enabled in the file is treated the same way.
    """
    config: dict = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"--deepspeed_config {path}: no such file")
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"--deepspeed_config {path}: invalid JSON at line {error.lineno}: {error.msg}") from None
    config["train_micro_batch_size_per_gpu"] = micro_batch_size
    config["gradient_accumulation_steps"] = gradient_accumulation_steps
    config["train_batch_size"] = micro_batch_size * gradient_accumulation_steps * world_size()
    if clip_grad is not None and clip_grad > 0:
        config["gradient_clipping"] = clip_grad
    config.setdefault("steps_per_print", 10**9)  # our own logging replaces DeepSpeed's
    config.setdefault("wall_clock_breakdown", False)
    wanted = {key for key in ("fp16", "bf16") if config.get(key, {}).get("enabled") in (True, "auto")}
    if half_precision:
        wanted = {half_precision}
    for key in ("fp16", "bf16"):
        config[key] = {**config.get(key, {}), "enabled": False}
    if wanted and torch.cuda.is_available():
        config[wanted.pop()]["enabled"] = True
    elif wanted:
        logger.warning("%s requested but CUDA is not available: training in fp32 on CPU", "/".join(sorted(wanted)))
    return config


def zero_stage(config: dict) -> int:
    return int(config.get("zero_optimization", {}).get("stage", 0))


def training_dtype(config: dict) -> torch.dtype:
    if config.get("bf16", {}).get("enabled"):
        return torch.bfloat16
    if config.get("fp16", {}).get("enabled"):
        return torch.float16
    return torch.float32


def offloads_optimizer(config: dict) -> bool:
    """Whether ZeRO-Offload keeps the optimizer states (and runs its step) on the CPU or NVMe."""
    offload = config.get("zero_optimization", {}).get("offload_optimizer") or {}
    return str(offload.get("device", "none")).lower() != "none"


def adamw(param_groups: list[dict], lr: float, config: dict, source: str = "--deepspeed_config",
          betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """torch's AdamW (eps 1e-8, weight decay 0.01 unless a group sets it, `betas` torch's default
    (0.9, 0.999) unless given), or with ZeRO-Offload DeepSpeed's CPU Adam in AdamW mode with the same settings:
    DeepSpeed refuses a torch optimizer there. CPU Adam is a C++ extension compiled on first use
    (minutes, then cached); a machine that cannot build it gets a one-line RuntimeError naming
    `source` (the config's flag and path)."""
    if not offloads_optimizer(config):
        return torch.optim.AdamW(param_groups, lr=lr, betas=betas)
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(param_groups, lr=lr, betas=betas, eps=1e-8, weight_decay=0.01, adamw_mode=True)
    except Exception as error:  # the op builder fails in many ways: no compiler, no headers, a failed compile
        reason = (str(error).strip().splitlines() or [type(error).__name__])[-1][:200]
        raise RuntimeError(
            f"{source}: ZeRO-Offload (zero_optimization.offload_optimizer) steps the optimizer with DeepSpeed's CPU Adam, which "
            f"could not be built on this machine ({type(error).__name__}: {reason}); install a C++ compiler, or use a config without "
            "offload_optimizer"
        ) from None


def initialize(model: torch.nn.Module, optimizer, lr_scheduler, config: dict, source: str = "--deepspeed_config"):
    """`deepspeed.initialize` with a client optimizer and scheduler; returns the engine. With
    ZeRO-Offload the optimizer must be DeepSpeed's CPU Adam (`adamw`): anything else is refused
    in one line naming `source` (DeepSpeed's own error is a paragraph)."""
    import deepspeed

    if offloads_optimizer(config) and type(optimizer).__name__ != "DeepSpeedCPUAdam":
        raise ValueError(
            f"{source}: ZeRO-Offload (zero_optimization.offload_optimizer) runs DeepSpeed's CPU Adam only, and this recipe trains "
            f"with {type(optimizer).__name__}: use a config without offload_optimizer (e.g. configs/deepspeed/ds_config_zero2.json)"
        )

    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=lr_scheduler, config=config)
    return engine


# ---------------------------------------------------------------------------------------------
# RNG state, saved per rank so that a resumed run draws the same random numbers.
# ---------------------------------------------------------------------------------------------


def rng_state() -> dict:
    numpy_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_micro_batch(seed: int, step: int, index: int) -> None:
    """Seed torch (CPU and every CUDA device) for the forward and backward pass of global
    micro-batch `index` of optimizer step `step` (index m * world + rank, as GlobalBatchSampler
    slices a global batch).

    The dropout masks are then a function of (seed, step, index) alone: 2 processes x 1
    accumulation step draw exactly the masks of 1 process x 2, and a resumed run those of the
    uninterrupted one, whatever ran in between (validation, generation)."""
    digest = hashlib.sha256(f"{seed}:{step}:{index}".encode()).digest()
    torch.manual_seed(int.from_bytes(digest[:8], "little") >> 1)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run the block without touching the training random streams (Python, NumPy, torch CPU and
    CUDA): whatever it draws, or reseeds, is undone on exit.

    Validation, generation (which reseeds torch to make its samples reproducible) and data loading
    (a DataLoader draws a base seed from torch's global generator each time it is iterated) run
    inside it, so dropout masks depend only on the training steps taken: a run resumed mid-epoch
    or one validating more often draws the same masks as the uninterrupted run.
    """
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


# ---------------------------------------------------------------------------------------------
# Atomic, resumable checkpoints.
# ---------------------------------------------------------------------------------------------


def _pause(phase: str) -> None:
    seconds = float(os.environ.get(PAUSE_ENV, "0") or 0)
    if seconds > 0:
        time.sleep(seconds)


def atomic_write_text(path: str | Path, text: str) -> None:
    """`text` to a temporary file beside `path`, then rename: a reader never sees half a file."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


# Free bytes under which a failed write is taken for a full disk: torch.save reports ENOSPC as
# "unexpected pos ..." or "file write failed", without an errno.
DISK_FULL_BYTES = 16 * 2**20


class DiskFull(OSError):
    """A write that failed because its file system is full."""


def _free_bytes(path: Path) -> int | None:
    for folder in (path, *path.parents):
        if folder.exists():
            return shutil.disk_usage(folder).free
    return None


@contextlib.contextmanager
def reporting_disk_full(path: str | Path, temporary: str | Path | None = None) -> Iterator[None]:
    """Re-raise a write to `path` that fails on a full disk (errno ENOSPC, or under DISK_FULL_BYTES
    free when it failed) as DiskFull "no space left on device while writing <path>"; any other
    error as it is. `temporary` (the partial file) is removed after the check, either way."""
    try:
        yield
    except (RuntimeError, OSError) as error:
        free = _free_bytes(Path(path).parent)
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        if getattr(error, "errno", None) == errno.ENOSPC or (free is not None and free < DISK_FULL_BYTES):
            raise DiskFull(errno.ENOSPC, f"no space left on device while writing {path} ({free} bytes free; the write failed with: {str(error).strip()[:200]})") from error
        raise


def read_text(path: str | Path) -> str:
    """A UTF-8 text file; ValueError naming `path:line` and the offending byte's column if it is not
    UTF-8 (`Path.read_text` names neither)."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line, start = data.count(b"\n", 0, error.start) + 1, data.rfind(b"\n", 0, error.start) + 1
        raise ValueError(f"{path}:{line}: invalid UTF-8 (byte 0x{data[error.start]:02x} at column {error.start - start + 1})") from None


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 16 MiB blocks (checkpoint manifests, data fingerprints)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path) -> None:
    """`manifest.json`: the size and SHA-256 of every file of a checkpoint directory."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = {str(p.relative_to(directory)): {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in files}
    (directory / MANIFEST).write_text(json.dumps({"files": entries}, indent=1, sort_keys=True) + "\n")


def save_checkpoint(engine, root: str | Path, tag: str, client_state: dict, keep_last: int | None = None, rank_state: dict | None = None) -> Path:
    """Save a resumable DeepSpeed checkpoint `root/tag` atomically on every rank (collective).

    `client_state` (rank 0's) holds plain Python values. Each rank's RNG state, and its
    `rank_state` (per-rank objects such as a replay buffer; plain values and tensors, loaded with
    weights_only), are saved beside it. With `keep_last`, older complete checkpoints are deleted
    after the new one is in place (each renamed away first, so none is ever seen half deleted).
    """
    root = Path(root)
    staging = root / INCOMPLETE
    if is_main_process() and (staging / tag).exists():
        shutil.rmtree(staging / tag)
    barrier()
    _pause("staged")
    with reporting_disk_full(staging / tag):
        engine.save_checkpoint(str(staging), tag=tag, client_state=client_state, save_latest=False)
        _pause("engine saved")
        torch.save({"rng": rng_state(), "rank_state": rank_state or {}}, staging / tag / f"rank_state_{rank()}.pt")
    barrier()
    final = root / tag
    if is_main_process():
        write_manifest(staging / tag)
        _pause("manifest written")
        if final.exists():
            _remove(final)
        os.replace(staging / tag, final)
        _pause("renamed")
        pointer = root / f".{LATEST}.tmp"
        pointer.write_text(tag)
        os.replace(pointer, root / LATEST)
        _pause("latest written")
        if keep_last:
            for old in sorted(complete_checkpoints(root), key=lambda p: p.stat().st_mtime)[:-keep_last]:
                if old != final:
                    _remove(old)
                    _pause("pruned")
    barrier()
    return final


def _remove(directory: Path) -> None:
    """Rename into the staging area, then delete: a kill part-way leaves nothing that looks complete."""
    trash = directory.parent / INCOMPLETE / f"{directory.name}.deleting"
    trash.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(directory, trash)
    shutil.rmtree(trash)


def complete_checkpoints(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]


def latest_checkpoint(root: str | Path) -> str | None:
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    tag = pointer.read_text().strip()
    if not (Path(root) / tag).is_dir():
        raise FileNotFoundError(f"{pointer} names checkpoint '{tag}', which does not exist")
    return tag


def _safe_globals() -> list:
    """The value types DeepSpeed pickles into its optimizer files (loss scaler, ZeRO stage, the
    fragment addresses of ZeRO partitions): rebuilt from their fields, no code runs."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def safe_load(path: str | Path, map_location=None) -> Any:
    """`torch.load(weights_only=True)` that accepts DeepSpeed's checkpoint files."""
    with torch.serialization.safe_globals(_safe_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


def verify_checkpoint(directory: str | Path) -> str | None:
    """None if the checkpoint is whole, else what is wrong, naming the file.

    With a manifest, every listed file must be there with its size and SHA-256. A checkpoint
    written before manifests existed is checked by loading every file (weights_only)."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        files = sorted(p for p in directory.rglob("*.pt") if p.is_file())
        if not files:
            return f"{directory} holds no checkpoint files"
        for path in files:
            try:
                safe_load(path, map_location="cpu")
            except Exception as error:  # any failure to read means the file is unusable
                return f"{path} is unreadable ({type(error).__name__}: {str(error).splitlines()[0][:200]})"
        return None
    try:
        entries = json.loads(manifest_path.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        return f"{manifest_path} is unreadable ({error})"
    for name, entry in entries.items():
        path = directory / name
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != entry["bytes"]:
            return f"{path} has {size} bytes, {entry['bytes']} were written (truncated?)"
        if file_sha256(path) != entry["sha256"]:
            return f"{path} does not match its SHA-256 in {manifest_path} (corrupted)"
    return None


def usable_checkpoint(root: str | Path, warn=logger.warning) -> str | None:
    """The tag of the newest whole checkpoint under `root` (the one `latest` names first, then the
    others newest first), or None if there is none. Each checkpoint passed over is reported through
    `warn`. Raises if checkpoints exist but none is whole: starting over would silently throw the
    run away. Decided on rank 0 and broadcast, so every rank loads the same one (collective)."""

    def choose() -> tuple[str | None, list[str]]:
        root_ = Path(root)
        candidates = sorted(complete_checkpoints(root_), key=lambda p: p.stat().st_mtime, reverse=True)
        pointer = root_ / LATEST
        if pointer.is_file():
            named = root_ / pointer.read_text().strip()
            candidates = [named] * named.is_dir() + [p for p in candidates if p != named]
        problems = []
        for candidate in candidates:
            problem = verify_checkpoint(candidate)
            if problem is None:
                return candidate.name, problems
            problems.append(f"checkpoint {candidate.name} is unusable: {problem}")
        return None, problems

    decision = [choose() if is_main_process() else None]
    if world_size() > 1:
        torch.distributed.broadcast_object_list(decision, src=0)
    tag, problems = decision[0]
    if tag is None and problems:
        raise RuntimeError(f"no usable checkpoint in {root}: " + "; ".join(problems))
    for problem in problems if is_main_process() else []:
        warn(f"warning: {problem}; falling back to an older checkpoint")
    return tag


@contextlib.contextmanager
def _weights_only_loading(engine) -> Iterator[None]:
    checkpoint_engine = engine.checkpoint_engine
    original = checkpoint_engine.load
    checkpoint_engine.load = lambda path, map_location=None: safe_load(path, map_location)
    try:
        yield
    finally:
        checkpoint_engine.load = original


def load_checkpoint(engine, root: str | Path, tag: str) -> dict:
    """Restore engine (model, optimizer, scheduler) and this rank's RNG; returns the client state,
    with this rank's own `rank_state` (as saved by `save_checkpoint`) under the key "rank_state".
    Every file is read with weights_only=True."""
    with _weights_only_loading(engine):
        _, client_state = engine.load_checkpoint(str(root), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True)
    if client_state is None:
        raise RuntimeError(f"could not load DeepSpeed checkpoint {Path(root) / tag}")
    rank_file = Path(root) / tag / f"rank_state_{rank()}.pt"
    if not rank_file.is_file():
        logger.warning("%s is missing: random state not restored (world size changed?)", rank_file)
        return {**client_state, "rank_state": {}}
    saved = torch.load(rank_file, weights_only=True)
    set_rng_state(saved["rng"])
    return {**client_state, "rank_state": saved["rank_state"]}
