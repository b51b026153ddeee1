"""What a run refuses (issue #23): the lock of a --save taken over by exactly one process, invalid
pids in a lock file, resumes without args.json or into another run's checkpoints, another world
size, unreadable run records, and stop signals (SIGTERM, SIGINT) in the shared Run.fit."""

import json
import multiprocessing
import os
import signal
import socket
import sys
from pathlib import Path

import pytest
import test_run_lifecycle as lifecycle
import torch

from abkd import engine as E
from abkd.run import EXIT_STOPPED, IDENTITY, LOCK, ResumeMismatch, Run, RunLocked, acquire_lock, release_lock

# ---------------------------------------------------------------------------------------------
# The lock: an atomic takeover, invalid pids.
# ---------------------------------------------------------------------------------------------


def _dead_pid() -> int:
    """The pid of a process that has exited (reaped: nothing runs under it now)."""
    process = multiprocessing.get_context("fork").Process(target=lambda: None)
    process.start()
    process.join()
    return process.pid


def _race(save_dir: str, ready, done, results) -> None:
    ready.wait()  # all processes reach acquire_lock together
    try:
        acquire_lock(Path(save_dir), lambda message: None)
        results.put("won")
    except RunLocked:
        results.put("refused")
    done.wait()  # the winner holds the lock until every racer has tried


def test_exactly_one_of_three_racing_processes_takes_over_a_stale_lock(tmp_path):
    context = multiprocessing.get_context("fork")
    stale = {"pid": _dead_pid(), "host": socket.gethostname(), "started": "1"}
    for trial in range(30):
        save = tmp_path / f"run{trial}"
        save.mkdir()
        (save / LOCK).write_text(json.dumps(stale) + "\n")
        ready, done, results = context.Barrier(3), context.Barrier(3), context.Queue()
        racers = [context.Process(target=_race, args=(str(save), ready, done, results)) for _ in range(3)]
        for racer in racers:
            racer.start()
        outcomes = sorted(results.get(timeout=60) for _ in racers)
        for racer in racers:
            racer.join(timeout=60)
        assert outcomes == ["refused", "refused", "won"], f"trial {trial}: {outcomes}"


@pytest.mark.parametrize("pid", [0, -1, 2**40])
def test_a_lock_naming_an_invalid_pid_is_replaced_with_a_warning(pid, tmp_path):
    (tmp_path / LOCK).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": None}) + "\n")
    warnings = []
    path = acquire_lock(tmp_path, warnings.append)
    try:
        assert json.loads(path.read_text())["pid"] == os.getpid()
        assert warnings == [f"warning: replacing the lock {path}, which names the invalid pid {pid}"]
    finally:
        release_lock(path)
    assert not path.exists()


def test_a_lock_held_by_a_live_process_is_refused_even_with_garbage_in_the_file(tmp_path):
    """The flock decides, not the file's text: a holder that wrote nothing yet still holds it."""
    context = multiprocessing.get_context("fork")
    taken, release = context.Event(), context.Event()

    def hold():
        import fcntl

        descriptor = os.open(tmp_path / LOCK, os.O_RDWR | os.O_CREAT)
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        taken.set()
        release.wait(60)

    holder = context.Process(target=hold)
    holder.start()
    try:
        assert taken.wait(60)
        with pytest.raises(RunLocked, match=f"--save {tmp_path} is in use by another process"):
            acquire_lock(tmp_path, print)
    finally:
        release.set()
        holder.join()
    release_lock(acquire_lock(tmp_path, print))  # the holder is gone: taken (its file was empty)


# ---------------------------------------------------------------------------------------------
# The run's records: args.json, run.json, checkpoints of another run, world size.
# ---------------------------------------------------------------------------------------------


def test_resume_into_checkpoints_without_args_json_is_refused(tmp_path):
    save = tmp_path / "run"
    lifecycle.fit_tiny(save, stop_after_iters=2)
    (save / "args.json").unlink()
    with pytest.raises(ResumeMismatch, match=f"--resume: {save} holds checkpoints but no args.json"):
        Run.start(lifecycle.run_args(save, resume=True, seed=0))
    assert not (save / LOCK).exists()


def test_a_new_run_into_another_runs_checkpoints_is_refused(tmp_path):
    save = tmp_path / "run"
    lifecycle.fit_tiny(save, stop_after_iters=2)
    with pytest.raises(FileExistsError, match=f"--save {save} already holds another run's checkpoints"):
        Run.start(lifecycle.run_args(save, seed=1))
    assert json.loads((save / "args.json").read_text())["seed"] == 0  # untouched


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    """A checkpoint copied in from another run (same arguments) does not belong to this one."""
    import shutil

    first, second = tmp_path / "first", tmp_path / "second"
    lifecycle.fit_tiny(first, stop_after_iters=2)
    lifecycle.fit_tiny(second, stop_after_iters=2)
    shutil.rmtree(second / "checkpoints")
    shutil.copytree(first / "checkpoints", second / "checkpoints")
    other = json.loads((first / IDENTITY).read_text())["run_id"]
    with pytest.raises(ResumeMismatch, match=f"checkpoint {second / 'checkpoints' / 'step2'} belongs to another run \\(run id {other[:12]}"):
        lifecycle.fit_tiny(second, resume=True)


def test_resume_with_another_world_size_is_refused(tmp_path):
    save = tmp_path / "run"
    lifecycle.fit_tiny(save, stop_after_iters=2)
    identity = json.loads((save / IDENTITY).read_text())
    assert identity["world_size"] == 1 and len(identity["run_id"]) == 32
    (save / IDENTITY).write_text(json.dumps({**identity, "world_size": 2}))  # as if started under torchrun with 2
    with pytest.raises(ResumeMismatch, match="was started with 2 processes, this one has 1"):
        Run.start(lifecycle.run_args(save, resume=True))
    # The checkpoint records it too (a run.json restored from elsewhere does not hide it).
    (save / IDENTITY).write_text(json.dumps(identity))
    client = torch.load(save / "checkpoints" / "step2" / "mp_rank_00_model_states.pt", weights_only=False)
    assert client["world_size"] == 1 and client["run_id"] == identity["run_id"]


@pytest.mark.parametrize("name", ["args.json", "args_history.jsonl", IDENTITY])
def test_a_truncated_run_record_is_a_one_line_error_naming_it(name, tmp_path):
    save = tmp_path / "run"
    lifecycle.fit_tiny(save, epochs=2, stop_after_iters=2)
    lifecycle.fit_tiny(save, epochs=3, resume=True, resume_with_changes=True, stop_after_iters=1)
    path = save / name
    path.write_text(path.read_text()[:-9])
    with pytest.raises(ValueError, match=f"^{path} is unreadable \\(truncated or edited\\?") as refused:
        Run.start(lifecycle.run_args(save, epochs=3, resume=True))
    assert "\n" not in str(refused.value)


# ---------------------------------------------------------------------------------------------
# SIGTERM / SIGINT in the shared Run.fit (CIFAR and CLIP loops): stop at a step, resume exactly.
# ---------------------------------------------------------------------------------------------


def _fit_signalled(save, signal_at: int, number: int, **overrides):
    """fit_tiny, sending `number` to this process during optimizer step `signal_at` (the objective's
    forward pass of that step)."""
    calls = {"n": 0}
    original = torch.nn.functional.cross_entropy

    def cross_entropy(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == signal_at:
            os.kill(os.getpid(), number)
        return original(*args, **kwargs)

    torch.nn.functional.cross_entropy = cross_entropy
    try:
        return lifecycle.fit_tiny(save, **overrides)
    finally:
        torch.nn.functional.cross_entropy = original


@pytest.mark.parametrize("number, step", [(signal.SIGTERM, 4), (signal.SIGINT, 6), (signal.SIGTERM, 9)])
def test_a_stop_signal_saves_and_exits_then_resume_equals_the_uninterrupted_run(number, step, tmp_path):
    """Mid-epoch (step 4), at an epoch's end (step 6: its evaluation and checkpoint) and later."""
    _, reference, _ = lifecycle.fit_tiny(tmp_path / "full")
    save = tmp_path / "split"
    handlers = {n: signal.getsignal(n) for n in (signal.SIGTERM, signal.SIGINT)}
    with pytest.raises(SystemExit) as stopped:
        _fit_signalled(save, step, number)
    assert stopped.value.code == EXIT_STOPPED
    assert {n: signal.getsignal(n) for n in handlers} == handlers  # restored by close()
    tag = f"epoch{step // 6}" if step % 6 == 0 else f"step{step}"
    name = signal.Signals(number).name
    assert f"stopped by {name} after step {step} of 18: resumable checkpoint {save / 'checkpoints' / tag}; continue with --resume" in (save / "log.txt").read_text()
    assert (save / "checkpoints" / "latest").read_text() == tag and not (save / LOCK).exists()
    finished, weights, run = lifecycle.fit_tiny(save, resume=True)
    assert finished and run.state["step"] == 18
    for key, value in reference.items():
        assert torch.equal(weights[key], value), key


def test_ranks_agree_to_stop_at_the_step_one_of_them_was_signalled(tmp_path):
    """Under torchrun, SIGTERM reaching rank 1 alone stops both ranks after the same step, with
    one checkpoint of both ranks' state; the first to exit does so with EXIT_STOPPED (torchrun
    then ends the other, already past its checkpoint, and reports a failure)."""
    import re
    import subprocess
    import textwrap

    from conftest import multiprocess_env

    script = tmp_path / "signalled.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, sys
        import torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import test_run_lifecycle as lifecycle
        from abkd import engine as E
        calls = {{"n": 0}}
        original = torch.nn.functional.cross_entropy
        def cross_entropy(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 2 and E.rank() == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            return original(*args, **kwargs)
        torch.nn.functional.cross_entropy = cross_entropy
        lifecycle.fit_tiny({str(tmp_path / "run")!r})
    """))
    command = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2", str(script)]
    result = subprocess.run(command, cwd=lifecycle.REPO, env=multiprocess_env(2, PYTHONPATH=str(lifecycle.REPO)), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert re.search(rf"exitcode\s*:\s*{EXIT_STOPPED}\b", result.stderr), result.stderr[-3000:]
    checkpoint = tmp_path / "run" / "checkpoints" / "step2"
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == "step2"
    assert E.verify_checkpoint(checkpoint) is None
    assert sorted(p.name for p in checkpoint.glob("rank_state_*.pt")) == ["rank_state_0.pt", "rank_state_1.pt"]
    assert "stopped by SIGTERM after step 2 of" in (tmp_path / "run" / "log.txt").read_text()


def test_a_cifar_resume_refuses_data_replaced_at_the_same_path(tmp_path):
    """The classification loops record their inputs' contents too (here: the CIFAR pickles)."""
    from standard_classification import train_teacher
    from standard_classification.data import write_synthetic_cifar

    write_synthetic_cifar(tmp_path / "cifar", num_classes=10, train_per_class=6, test_per_class=2, seed=0)
    argv = ["--model", "resnet8", "--data-folder", str(tmp_path / "cifar"), "--epochs", "2", "--save", str(tmp_path / "run"),
            "--batch-size", "12", "--lr", "0.05", "--lr-decay-epochs", "", "--weight-decay", "0"]
    train_teacher.main([*argv, "--stop-after-epochs", "1"])
    recorded = json.loads((tmp_path / "run" / IDENTITY).read_text())["fingerprints"]
    assert set(recorded) == {"--data-folder cifar-100-python/train", "--data-folder cifar-100-python/test"}
    write_synthetic_cifar(tmp_path / "cifar", num_classes=10, train_per_class=6, test_per_class=2, seed=1)
    with pytest.raises(ResumeMismatch, match="^--resume: the contents of --data-folder cifar-100-python/train \\(sha256"):
        train_teacher.main([*argv, "--resume"])
