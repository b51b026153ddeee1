"""One run lifecycle shared by the training loops: start, resume, train, save, stop.

    run = Run.start(args)                         # distributed init, seed, --save, args.json, log.txt
    engine = E.initialize(model, optimizer, scheduler, ds_config)
    run.state.update(best_accuracy=0.0)           # the loop's own resumable values, if any
    run.resume(engine)                            # with --resume: the latest complete checkpoint
    finished = run.fit(engine, objective, sampler, epoch_batches, on_epoch_end=evaluate_and_save)
    run.close()

The objective interface. An objective is called on one micro-batch and returns `(loss, parts)`:
the scalar to backpropagate and a dict of named scalar tensors to log ("ce", "kd", "acc", ...;
detached), after mdistiller's `forward_train`. The loop logs `loss` and every part, averaged
over the steps of an epoch and over ranks; it knows no loss names.

Checkpoints. `run.save` writes a resumable DeepSpeed checkpoint atomically (`abkd.engine`):
engine (model, optimizer, scheduler), `run.state` (step, epoch, step_in_epoch and the loop's own
values) and, per rank, the RNG state, the running sums of this epoch's logged parts and the
module's floating-point buffers. `run.resume` restores all of it, so a run stopped by
`--stop-after-iters` / `--stop-after-epochs` and resumed trains exactly as an uninterrupted one.

BatchNorm statistics. DeepSpeed, unlike DDP, leaves buffers alone, so each rank's running
statistics follow its own shard of the data. At every epoch end, before evaluation and saving,
`sync_buffers` replaces them by their average over ranks (computed in float64, stored back in
the buffer's dtype): one model is evaluated and saved. A mid-epoch stop saves each rank's own
buffers instead, so resuming does not change them.

One writer per run. `Run.start` takes `<save>/run.lock` and holds it for the run's lifetime with
`fcntl.flock` (the file names the holder: pid, host, process start time); `close` releases it. A
second run on the same --save is refused while the first is alive. The kernel drops the flock of a
process that dies, however it dies, so a stale lock is taken over (with a warning naming the dead
holder) by exactly one of the processes that race for it: there is no read-check-delete window. A
lock file naming another host is refused, since a file system whose locks are local to each host
(NFS mounted with local_lock, some Lustre mounts) cannot tell whether that run is alive; a file
system without locks at all falls back to the pid check, with a warning.

Run identity. A new run writes `<save>/run.json`: a run id, the world size and, where the loop
gives them (`Run.start(fingerprints=...)`), the SHA-256 of its inputs' contents (data, teacher and
student weights, tokenizer). Every checkpoint's client state carries the run id and world size.
--resume refuses, in one line: a --save holding checkpoints but no args.json, another world size,
inputs whose contents changed since the run started (same path, other bytes), and a checkpoint of
another run. A new run (without --resume) refuses a --save that already holds checkpoints.

Preemption. From `Run.start` to `close`, SIGTERM and SIGINT set a flag instead of killing the
process. The loop finishes the optimizer step it is in, all ranks agree on the flag (one all_reduce
of an int per step), a resumable checkpoint is written, and `exit_stopped` ends the process with
EXIT_STOPPED (75, sysexits' EX_TEMPFAIL: "try again") and a one-line message; --resume continues
exactly. Repeated signals are ignored: a launcher forwarding the signal to ranks that the
scheduler or the terminal already signalled (torchrun, srun's whole step, Ctrl-C's process group)
delivers it twice. SIGKILL stops at once; the checkpoint writes are atomic, so it loses at most the
checkpoint being written.

Resuming checks the arguments. With --resume, the new arguments are compared with the run's
`args.json` (plus the changes recorded since): a difference in anything that shapes the training
trajectory (method, divergence parameters, batch sizes, learning rate and schedule, seed, data,
models, lengths, ...) is refused with the list of differences. `--resume-with-changes` allows the
changes in RESUMABLE_CHANGES (a longer run, other eval/save/log intervals, ...) and appends each
to `<save>/args_history.jsonl`; args.json keeps the arguments the run was started with. The
per-invocation flags in PER_INVOCATION (--resume, --stop-after-*) are never compared.

Random streams. Data loading runs inside `engine.preserved_rng`, so a resumed run, which starts
its data iterator mid-epoch, draws the same dropout masks as the uninterrupted one.

The arguments read from `args`: seed, save, resume, epochs, keep_checkpoints, log_interval, and
where the command line has them resume_with_changes, stop_after_iters, stop_after_epochs and
report_to.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import Tensor, nn
from tqdm import tqdm

from abkd import engine as E
from abkd.curriculum import Curriculum
from abkd.runlog import RunLog
from abkd.sampling import GlobalBatchSampler

CHECKPOINTS = "checkpoints"
LOCK = "run.lock"
HISTORY = "args_history.jsonl"
IDENTITY = "run.json"
# Exit status of a run stopped by SIGTERM/SIGINT after writing a resumable checkpoint (EX_TEMPFAIL).
EXIT_STOPPED = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

# Flags of one invocation, never compared when resuming (--save: a run directory may be moved).
PER_INVOCATION = frozenset({"save", "resume", "resume_with_changes", "stop_after_iters", "stop_after_epochs", "local_rank", "deepspeed"})
# Changes --resume-with-changes allows: the trajectory up to the checkpoint is kept and the steps
# after it are those of the longer run (for a cosine or linear schedule, its new length).
RESUMABLE_CHANGES = frozenset({
    "epochs", "total_iters", "eval_interval", "save_interval", "save_freq", "log_interval", "keep_checkpoints",
    "report_to", "num_workers", "eval_batch_size", "ckpt_name", "teacher_ckpt_name", "peft_name", "teacher_peft_name",
})


class RunLocked(RuntimeError):
    """Another live process writes to this --save."""


class ResumeMismatch(ValueError):
    """--resume with arguments that would change the run's trajectory."""

Objective = Callable[[Any], tuple[Tensor, dict[str, Tensor]]]


def atomic_save(payload: Any, path: str | Path) -> None:
    """`torch.save` to a temporary file beside `path`, then rename: a reader never sees half a file."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    with E.reporting_disk_full(path, temporary):  # torch.save's own error on a full disk reads "unexpected pos ..."
        torch.save(payload, temporary)
    os.replace(temporary, path)


def floating_buffers(module: nn.Module) -> dict[str, Tensor]:
    return {name: buffer.detach().cpu().clone() for name, buffer in module.named_buffers() if buffer.is_floating_point()}


@torch.no_grad()
def sync_buffers(module: nn.Module) -> None:
    """Average every floating-point buffer (BatchNorm running mean and variance) over ranks, in
    float64. Integer buffers (num_batches_tracked) are equal on every rank and left alone."""
    world = E.world_size()
    if world == 1:
        return
    for buffer in module.buffers():
        if buffer.is_floating_point():
            total = buffer.double()
            torch.distributed.all_reduce(total)
            buffer.copy_(total / world)


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean over ranks of each value (every rank must pass the same keys)."""
    keys = sorted(values)
    totals = torch.tensor([float(values[key]) for key in keys], dtype=torch.float64, device=device)
    if E.world_size() > 1:
        torch.distributed.all_reduce(totals)
    return {key: total / E.world_size() for key, total in zip(keys, totals.tolist())}


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    totals = torch.tensor(values, dtype=torch.float64, device=device)
    if E.world_size() > 1:
        torch.distributed.all_reduce(totals)
    return totals.tolist()


def _process_start(pid: int) -> str | None:
    """The start time of process `pid` (Linux /proc), to tell a live run from a reused pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _max_pid() -> int:
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text())
    except (OSError, ValueError):
        return 2**22  # Linux's largest pid_max


def _alive(pid: int, started: str | None) -> bool:
    """Whether process `pid` (started at `started`, if known) still runs on this host. A pid
    outside 1..pid_max names no process (0 and -1 would address process groups in os.kill)."""
    if not 0 < pid <= _max_pid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by someone else
    return started is None or _process_start(pid) in (None, started)


def _read_holder(descriptor: int) -> dict | None:
    """The lock file's record {pid, host, started}, or None if it is empty or unreadable."""
    os.lseek(descriptor, 0, os.SEEK_SET)
    text = os.read(descriptor, 4096).decode(errors="replace")
    try:
        holder = json.loads(text)
        return {**holder, "pid": int(holder["pid"])}
    except (ValueError, KeyError, TypeError):
        return None


# The locks this process holds, {resolved path: descriptor}, kept open for the run's lifetime.
_HELD: dict[str, int] = {}


def acquire_lock(save_dir: Path, warn: Callable[[str], None]) -> Path:
    """Take `<save>/run.lock` for this process, or raise RunLocked if a live run holds it.

    The lock is an exclusive `fcntl.flock` on the file, held until `release_lock` (or the
    process's death, when the kernel drops it); the file's text only names the holder for the
    messages. Of processes racing for a stale lock exactly one gets the flock. The file is
    re-checked after locking to be the one at `path` (a releasing holder unlinks it), so an old
    inode's lock never counts. The lock of an earlier, unclosed run of this same process is taken
    over silently; that of a dead process with a warning. See the module docstring for the file
    systems whose locks do not reach other hosts, and those without locks."""
    import fcntl

    path = save_dir / LOCK
    key = str(path.resolve())
    if key in _HELD:  # an earlier run of this process that was never closed (an exception in a loop)
        os.close(_HELD.pop(key))
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": _process_start(os.getpid())}
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        locked = True
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(descriptor)
            os.close(descriptor)
            who = "another process" if holder is None else f"process {holder['pid']}" + (f" on host {holder.get('host')}" if holder.get("host") != mine["host"] else "")
            raise RunLocked(f"--save {save_dir} is in use by {who} (lock {path}): one run writes to a directory at a time; "
                            "wait for it, stop it, or give another --save") from None
        except OSError as error:
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(descriptor)
                raise
            locked = False
            warn(f"warning: the file system of {path} does not support file locks ({error.strerror}): "
                 "a second run on this --save is refused by its pid only, and two starting at once are not")
        try:
            if locked and os.fstat(descriptor).st_ino != os.stat(path).st_ino:
                raise FileNotFoundError  # released and unlinked by its holder since we opened it
        except FileNotFoundError:
            os.close(descriptor)
            continue
        holder = _read_holder(descriptor)
        try:
            _check_stale(holder, mine, save_dir, path, descriptor, warn)
        except RunLocked:
            os.close(descriptor)
            raise
        os.ftruncate(descriptor, 0)
        os.lseek(descriptor, 0, os.SEEK_SET)
        os.write(descriptor, (json.dumps(mine) + "\n").encode())
        _HELD[key] = descriptor
        return path


def _check_stale(holder: dict | None, mine: dict, save_dir: Path, path: Path, descriptor: int, warn: Callable[[str], None]) -> None:
    """Raise RunLocked if the lock file's holder may still run; else warn about what is taken over."""
    if holder is None:
        if os.fstat(descriptor).st_size:
            warn(f"warning: replacing the unreadable lock {path}")
        return
    pid, host = holder["pid"], holder.get("host")
    if pid == mine["pid"] and host == mine["host"]:
        return
    if host != mine["host"]:
        raise RunLocked(f"--save {save_dir} is in use by process {pid} on host {host} (lock {path}); if that run is dead, delete {path}")
    if not 0 < pid <= _max_pid():
        warn(f"warning: replacing the lock {path}, which names the invalid pid {pid}")
        return
    if _alive(pid, holder.get("started")):  # with the flock ours: a run of an older version of this code
        raise RunLocked(f"--save {save_dir} is in use by process {pid} (lock {path}): one run writes to a directory at a time; "
                        "wait for it, stop it, or give another --save")
    warn(f"warning: taking over the lock {path} of process {pid}, which is no longer running")


def release_lock(path: Path) -> None:
    """Unlink the lock file, then drop the flock (in this order: a process that opened the file
    meanwhile finds, once it gets the flock, that it is no longer the file at `path`)."""
    descriptor = _HELD.pop(str(path.resolve()), None)
    if descriptor is None:
        return
    path.unlink(missing_ok=True)
    os.close(descriptor)


def _plain(record: dict) -> dict:
    """The record as args.json stores it (JSON values), so that old and new compare alike."""
    return json.loads(json.dumps(record, sort_keys=True, default=str))


def _read_json(path: Path, text: str | None = None):
    """JSON from `path` (or its line `text`), with a one-line error naming the file if it is not JSON."""
    try:
        return json.loads(path.read_text() if text is None else text)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is unreadable (truncated or edited? {error}): restore it, or start a new run in another --save") from None


def recorded_args(save_dir: Path) -> dict | None:
    """The run's arguments: args.json with the changes of args_history.jsonl applied in order."""
    path = save_dir / "args.json"
    if not path.is_file():
        return None
    record = _read_json(path)
    history = save_dir / HISTORY
    if history.is_file():
        for line in history.read_text().splitlines():
            if line.strip():
                entry = _read_json(history, line)
                if not isinstance(entry, dict) or not isinstance(entry.get("changes"), dict):
                    raise ValueError(f"{history} is unreadable (a line without 'changes'): restore it, or start a new run in another --save")
                record.update({key: change["new"] for key, change in entry["changes"].items()})
    return record


def check_identity(save_dir: Path, recorded: dict, fingerprints: dict[str, str]) -> None:
    """Refuse a resume under another world size or with inputs whose contents changed since the
    run started (`recorded`: its run.json), in one line naming what changed."""
    if recorded.get("world_size") not in (None, E.world_size()):
        raise ResumeMismatch(f"--resume: the run in {save_dir} was started with {recorded['world_size']} processes, this one has {E.world_size()}: "
                             f"its global batch and data order depend on it; resume with {recorded['world_size']} processes")
    before = recorded.get("fingerprints", {})
    changed = [f"{name} (sha256 {before[name][:12]} then, {digest[:12]} now)" for name, digest in fingerprints.items()
               if name in before and before[name] != digest]
    if changed:
        raise ResumeMismatch(f"--resume: the contents of {'; '.join(changed)} changed since the run in {save_dir} started "
                             f"(recorded in {save_dir / IDENTITY}); resume with the run's inputs, or start a new run in another --save")


def parser_defaults(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """{dest: default} of every option of `parser` (for `Run.start(defaults=...)`)."""
    return {action.dest: action.default for action in parser._actions if action.dest != argparse.SUPPRESS and action.dest != "help"}


def resume_changes(old: dict, new: dict, allow_changes: bool, defaults: dict | None = None) -> dict[str, dict]:
    """The differences between the recorded and the new arguments, {key: {"old", "new"}}; raises
    ResumeMismatch listing those that are not allowed. A flag the run's args.json does not know
    (added to the CLI after the run started) counts as unchanged while it keeps its default
    (`defaults`, from `parser_defaults`)."""
    old, new = _plain(old), _plain(new)
    defaults = _plain(defaults or {})
    missing = object()
    changes = {
        key: {"old": old.get(key), "new": new.get(key)}
        for key in sorted(set(old) | set(new))
        if key not in PER_INVOCATION and old.get(key, missing) != new.get(key, missing)
        and not (key not in old and key in defaults and new.get(key) == defaults[key])
    }
    refused = {key: change for key, change in changes.items() if not (allow_changes and key in RESUMABLE_CHANGES)}
    if refused:
        lines = "\n".join(f"  --{key.replace('_', '-')}: {change['old']!r} in the run, {change['new']!r} now" for key, change in refused.items())
        allowed = sorted(set(changes) & RESUMABLE_CHANGES)
        hint = (f" --resume-with-changes accepts only {', '.join(sorted(RESUMABLE_CHANGES))}." if allow_changes
                else " (--resume-with-changes would allow: " + ", ".join(allowed) + ")" if allowed else "")
        raise ResumeMismatch(
            f"--resume: these arguments differ from the run's args.json and would change its training trajectory:\n{lines}\n"
            f"Resume with the run's arguments, or start a new run in another --save.{hint}")
    return changes


class StopSignals:
    """SIGTERM and SIGINT as a request to stop at the next optimizer step's end; later ones are
    ignored (module docstring). A signal ignored when the process started (SIG_IGN) stays ignored."""

    active: StopSignals | None = None  # the installed instance: one per process

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous: dict[int, Any] = {}

    def install(self) -> None:
        if StopSignals.active is not None:  # an earlier run of this process that was never closed
            StopSignals.active.restore()
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers; the signals keep their default action
        for number in STOP_SIGNALS:
            if signal.getsignal(number) is not signal.SIG_IGN:
                self.previous[number] = signal.signal(number, self._handle)
        StopSignals.active = self

    def _handle(self, number: int, frame) -> None:
        name = signal.Signals(number).name
        if self.received is None:
            self.received = number
            os.write(2, f"received {name}: stopping after this optimizer step with a resumable checkpoint (SIGKILL stops at once)\n".encode())
        else:
            os.write(2, f"received {name} again: already stopping\n".encode())

    def restore(self) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
        self.previous = {}
        if StopSignals.active is self:
            StopSignals.active = None


def ignore_stop_signals(worker_id: int) -> None:
    """A DataLoader worker's `worker_init_fn`: workers leave SIGTERM/SIGINT to the training process,
    which stops at the end of its step; a worker killed by a signal sent to the whole process group
    (Ctrl-C, a scheduler's preemption) would fail the run instead."""
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)


def _collective(action: Callable[[], Any]) -> Any:
    """Run `action` on rank 0 and return its result on every rank; an exception it raises is
    raised on every rank (so none waits for the others at a barrier)."""
    outcome = [None]
    if E.is_main_process():
        try:
            outcome = [(action(), None)]
        except Exception as error:  # re-raised below, on every rank
            outcome = [(None, error)]
    if E.world_size() > 1:
        torch.distributed.broadcast_object_list(outcome, src=0)
    result, error = outcome[0]
    if error is not None:
        raise error
    return result


@dataclass
class Run:
    """The state of one training run and the steps of its lifecycle (see the module docstring)."""

    args: argparse.Namespace
    save_dir: Path
    device: torch.device
    log: RunLog
    state: dict[str, Any] = field(default_factory=lambda: {"step": 0, "epoch": 0, "step_in_epoch": 0})
    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # this rank's sums of the epoch's parts
    lr: float = 0.0  # learning rate of the last step
    history: list[dict[str, float]] = field(default_factory=list)  # epoch metrics of this invocation
    lock: Path | None = None  # rank 0's <save>/run.lock
    identity: dict[str, Any] = field(default_factory=dict)  # <save>/run.json: run_id, world_size, fingerprints
    signals: StopSignals | None = None
    stopped_by: str | None = None  # the signal all ranks agreed to stop on

    @classmethod
    def start(cls, args: argparse.Namespace, record: dict | None = None, defaults: dict | None = None,
              fingerprints: Callable[[], dict[str, str]] | None = None) -> Run:
        """Distributed init, seeding, the output directory (refused if it is a file) and its lock,
        the resolved arguments (`record` where the command line resolves more than its flags, else
        `vars(args)`): written to `<save>/args.json` by a new run, checked against it by --resume
        (see the module docstring; `defaults` = `parser_defaults(parser)` lets flags newer than the
        run keep their defaults), the run's identity `<save>/run.json` (`fingerprints()`, called on
        rank 0 only, gives {what: SHA-256} of the run's inputs, recorded by a new run and compared
        by --resume), the stop-signal handlers, and the log (collective)."""
        save_dir = Path(args.save)
        if save_dir.exists() and not save_dir.is_dir():
            raise NotADirectoryError(f"--save {save_dir} is a file; give a directory for the run's outputs")
        if getattr(args, "resume_with_changes", False):
            args.resume = True
        record = vars(args) if record is None else record
        device = E.init_distributed()
        E.set_seed(args.seed)
        notes: list[str] = []

        def new_identity() -> dict:
            identity = {"run_id": uuid.uuid4().hex, "world_size": E.world_size(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                        "fingerprints": fingerprints() if fingerprints is not None else {}}
            E.atomic_write_text(save_dir / IDENTITY, json.dumps(identity, indent=2, sort_keys=True) + "\n")
            return identity

        def prepare() -> tuple[Path, dict]:
            save_dir.mkdir(parents=True, exist_ok=True)
            lock = acquire_lock(save_dir, notes.append)
            try:
                previous = recorded_args(save_dir) if args.resume else None
                if previous is None:
                    if E.complete_checkpoints(save_dir / CHECKPOINTS):
                        if args.resume:
                            raise ResumeMismatch(f"--resume: {save_dir} holds checkpoints but no args.json, so the arguments they were trained "
                                                 "with are unknown; restore args.json, or start a new run in another --save")
                        raise FileExistsError(f"--save {save_dir} already holds another run's checkpoints ({save_dir / CHECKPOINTS}): "
                                              "continue that run with --resume, or give another --save (or delete them)")
                    E.atomic_write_text(save_dir / "args.json", json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
                    return lock, new_identity()
                changes = resume_changes(previous, record, getattr(args, "resume_with_changes", False), defaults)
                if (save_dir / IDENTITY).is_file():
                    identity = _read_json(save_dir / IDENTITY)
                    check_identity(save_dir, identity, fingerprints() if fingerprints is not None else {})
                else:
                    identity = new_identity()
                    notes.append(f"warning: {save_dir} has no {IDENTITY} (a run started by an older version): the contents of its "
                                 "inputs are recorded now and checked from now on, not against those it started with")
                if changes:
                    entry = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "changes": changes}
                    with (save_dir / HISTORY).open("a") as handle:
                        handle.write(json.dumps(entry, sort_keys=True) + "\n")
                    notes.extend(f"--resume-with-changes: --{key.replace('_', '-')} {change['old']!r} -> {change['new']!r} "
                                 f"(recorded in {save_dir / HISTORY})" for key, change in changes.items())
            except BaseException:
                release_lock(lock)
                raise
            return lock, identity

        lock, identity = _collective(prepare)
        log = RunLog(save_dir, enabled=E.is_main_process(), tensorboard=getattr(args, "report_to", "none") == "tensorboard")
        for note in notes:
            log.info(note)
        signals = StopSignals()
        signals.install()
        return cls(args, save_dir, device, log, lock=lock if E.is_main_process() else None, identity=identity, signals=signals)

    @property
    def checkpoints(self) -> Path:
        return self.save_dir / CHECKPOINTS

    def resume(self, engine) -> dict:
        """With --resume, restore the latest complete checkpoint: engine, `state` (the keys it has),
        and this rank's RNG, sums and buffers. Returns the caller's own `rank_state` ({} if none)."""
        if not self.args.resume:
            return {}
        tag = E.usable_checkpoint(self.checkpoints, warn=self._warn)
        if tag is None:
            self.log.info(f"--resume: no checkpoint in {self.checkpoints} yet, starting from scratch")
            return {}
        client = E.load_checkpoint(engine, self.checkpoints, tag)
        owner = client.get("run_id")
        if owner is None:
            self._warn(f"warning: checkpoint {tag} records no run id (written by an older version): not checked to belong to this run")
        elif owner != self.identity.get("run_id"):
            raise ResumeMismatch(f"--resume: checkpoint {self.checkpoints / tag} belongs to another run (run id {owner[:12]}, "
                                 f"{self.save_dir / IDENTITY} names {str(self.identity.get('run_id'))[:12]}); start a new run in another --save")
        if client.get("world_size", E.world_size()) != E.world_size():
            raise ResumeMismatch(f"--resume: checkpoint {self.checkpoints / tag} was written by {client['world_size']} processes, "
                                 f"this run has {E.world_size()}; resume with {client['world_size']} processes")
        missing = [key for key in self.state if key not in client]
        if missing:
            raise ValueError(f"checkpoint {self.checkpoints / tag} lacks {', '.join(missing)}: was it written by another program?")
        self.state.update({key: client[key] for key in self.state})
        rank_state = dict(client["rank_state"])
        self.sums = defaultdict(float, rank_state.pop("sums", {}))
        with torch.no_grad():
            buffers = dict(engine.module.named_buffers())
            for name, value in rank_state.pop("buffers", {}).items():
                buffers[name].copy_(value)
        self.log.info(f"resumed from {tag}: step {self.state['step']}, epoch {self.state['epoch']} (+{self.state['step_in_epoch']} steps)")
        return rank_state

    def _warn(self, message: str) -> None:
        E.logger.warning(message)
        self.log.info(message)

    def save(self, engine, tag: str, rank_state: dict | None = None) -> Path:
        """Resumable checkpoint `<save>/checkpoints/<tag>` (collective, atomic), keeping the last
        --keep-checkpoints. `rank_state` holds the caller's per-rank values (plain values, tensors),
        saved beside the run's own "sums" and "buffers"."""
        rank_state = rank_state or {}
        if reserved := {"sums", "buffers"} & set(rank_state):
            raise ValueError(f"rank_state keys {sorted(reserved)} are the run's own")
        saved = {**rank_state, "sums": dict(self.sums), "buffers": floating_buffers(engine.module)}
        client_state = {**self.state, "run_id": self.identity.get("run_id"), "world_size": E.world_size()}
        return E.save_checkpoint(engine, self.checkpoints, tag, client_state=client_state, keep_last=self.args.keep_checkpoints, rank_state=saved)

    def stop_requested(self) -> bool:
        """Whether any rank has received SIGTERM or SIGINT (collective: every rank calls it at the
        end of every optimizer step, so all stop at the same one). Sets `stopped_by`."""
        received = self.signals.received if self.signals is not None else None
        if E.world_size() > 1:
            flag = torch.tensor([received or 0], dtype=torch.int64, device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            received = int(flag.item()) or None
        if received is not None:
            self.stopped_by = signal.Signals(received).name
        return received is not None

    def exit_stopped(self, tag: str, total_steps: int) -> NoReturn:
        """After the checkpoint `tag` of a stop signal: log one line, close, exit with EXIT_STOPPED."""
        self.log.info(f"stopped by {self.stopped_by} after step {self.state['step']} of {total_steps}: resumable checkpoint "
                      f"{self.checkpoints / tag}; continue with --resume (exit status {EXIT_STOPPED})")
        self.close()
        raise SystemExit(EXIT_STOPPED)

    def stop_point(self, steps_per_epoch: int, total_steps: int, steps_after_epochs: Callable[[int], int] | None = None) -> int:
        """The step this invocation ends at: the run's end, or earlier by --stop-after-iters N
        (N more steps) or --stop-after-epochs N (the end of the N-th epoch from here). Epochs of
        different lengths (a curriculum's) give `steps_after_epochs(e)`, the steps at the end of epoch e."""
        stop = total_steps
        if getattr(self.args, "stop_after_iters", None):
            stop = min(stop, self.state["step"] + self.args.stop_after_iters)
        if getattr(self.args, "stop_after_epochs", None):
            epochs = self.state["epoch"] + self.args.stop_after_epochs
            stop = min(stop, epochs * steps_per_epoch if steps_after_epochs is None else steps_after_epochs(epochs))
        return stop

    def train_steps(self, engine, objective: Objective, batches: Iterable, stop_at: int, bar: tqdm | None = None) -> None:
        """Optimizer steps on `batches` until they run out or step `stop_at` is reached."""
        engine.train()
        state = self.state
        batches = iter(batches)
        while True:
            with E.preserved_rng():  # data loading draws no training randomness
                batch = next(batches, None)
            if batch is None:
                return
            boundary = engine.is_gradient_accumulation_boundary()
            self.lr = engine.get_lr()[0]
            loss, parts = objective(batch)
            engine.backward(loss)
            engine.step()
            values = {"loss": loss.item(), **{key: value.item() for key, value in parts.items()}}
            for key, value in values.items():
                self.sums[key] += value / engine.gradient_accumulation_steps()
            if not boundary:
                continue
            state["step"] += 1
            state["step_in_epoch"] += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{values['loss']:.4f}")
            if self.args.log_interval and state["step"] % self.args.log_interval == 0:
                self.log.metrics(state["step"], {**values, "lr": self.lr, "epoch": state["epoch"]})
            if state["step"] == stop_at or self.stop_requested():
                return

    def end_epoch(self, seconds: float) -> dict[str, float]:
        """The epoch's mean of each logged part over steps and ranks, as `train_<part>`; resets the sums."""
        means = all_reduce_mean({key: value / self.state["step_in_epoch"] for key, value in self.sums.items()}, self.device)
        self.sums = defaultdict(float)
        self.state["epoch"] += 1
        self.state["step_in_epoch"] = 0
        return {**{f"train_{key}": value for key, value in means.items()}, "lr": self.lr, "epoch_s": seconds}

    def fit(self, engine, objective: Objective, sampler: GlobalBatchSampler, epoch_batches: Callable[[int], Iterable],
            on_epoch_end: Callable[[int, dict], dict | None] | None = None, curriculum: Curriculum | None = None) -> bool:
        """Train for --epochs epochs of `sampler.steps_per_epoch` steps, from `state`, until the
        stop point. `epoch_batches(epoch)` gives the epoch's micro-batches (on the device) once
        `sampler.set_epoch` has been called. At each epoch end: buffers synced, then
        `on_epoch_end(epoch, metrics)` (evaluation, model files; its returned metrics are logged),
        then a checkpoint; one more checkpoint where the run stops mid-epoch. Returns whether the
        run is complete.

        With a POCL `curriculum` (abkd/curriculum.py; `state["curriculum"]` registered before
        `resume`), the sampler draws the current stage's examples, the epochs' lengths follow its
        plan, each epoch's metrics name its stage, and a stage's last epoch enters the next."""
        state = self.state
        if curriculum is not None:
            curriculum.start(state)
        total_steps = self.args.epochs * sampler.steps_per_epoch if curriculum is None else curriculum.total_steps()
        stop_at = self.stop_point(sampler.steps_per_epoch, total_steps, None if curriculum is None else curriculum.steps_after)
        self.log.info(
            f"world size {E.world_size()} on {self.device.type}; {sampler.size} training examples, "
            f"{sampler.steps_per_epoch} steps per epoch of {sampler.global_batch}, {total_steps} steps"
            + (f"; {sampler.dropped} examples left out of each epoch" if sampler.dropped else "")
        )
        bar = tqdm(total=total_steps, initial=state["step"], desc="train", disable=not E.is_main_process(), dynamic_ncols=True, leave=False)
        while state["step"] < stop_at:
            sampler.set_epoch(state["epoch"], skip_steps=state["step_in_epoch"])
            started = time.perf_counter()
            self.train_steps(engine, objective, epoch_batches(state["epoch"]), stop_at, bar)
            tag = f"step{state['step']}"
            if state["step_in_epoch"] == sampler.steps_per_epoch:
                metrics = self.end_epoch(time.perf_counter() - started)
                if curriculum is not None:
                    metrics.update(curriculum.epoch_metrics())
                sync_buffers(engine.module)
                if on_epoch_end is not None:
                    metrics.update(on_epoch_end(state["epoch"], metrics) or {})
                self.log.metrics(state["epoch"], metrics, prefix="epoch")
                self.history.append({"epoch": state["epoch"], **metrics})
                tag = f"epoch{state['epoch']}"
                if curriculum is not None:
                    curriculum.end_epoch(state)
            self.save(engine, tag)
            if self.stopped_by is not None:
                bar.close()
                self.exit_stopped(tag, total_steps)
        bar.close()
        finished = state["step"] >= total_steps
        if not finished:
            self.log.info(f"stopped after step {state['step']} of {total_steps} (epoch {state['epoch']}); continue with --resume")
        return finished

    def close(self) -> None:
        self.log.close()
        if self.signals is not None:
            self.signals.restore()
        if self.lock is not None:
            release_lock(self.lock)
            self.lock = None
