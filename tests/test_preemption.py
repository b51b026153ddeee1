"""The LLM loop under preemption and resumption (issue #23): SIGTERM/SIGINT at random moments of a
real run then --resume equals the uninterrupted run bit for bit, --lm-data-dir resumes exactly
(and each pass over it has a new order), --resume refuses inputs whose contents changed at the
same path, and model folders of an abandoned trajectory do not survive a resume."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from test_resume_reliability import REPO, _argv, _finetune, _max_difference, _subprocess_env, _weights, processed_dir  # noqa: F401
from torch.utils.data import DataLoader

from abkd import engine as E
from abkd.run import EXIT_STOPPED, ResumeMismatch
from abkd.sampling import GlobalBatchSampler
from distillation_llm import finetune


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """Pre-training blocks for --lm-data-dir: 2 global batches of 8 per pass, so that a run of
    6 steps passes over them 3 times."""
    from tools import process_data_pretrain

    root = tmp_path_factory.mktemp("lm")
    (root / "corpus").mkdir()
    (root / "corpus" / "data.txt").write_text("".join(f"the quick {w} fox jumps over the lazy dog {i}\n" for i, w in enumerate(["red", "blue", "green"] * 3)))
    process_data_pretrain.main([
        "--data-dir", str(root / "corpus"), "--processed-data-dir", str(root / "lm"), "--model-path", str(tiny_tokenizer_dir),
        "--max-length", "16", "--dev-num", "1",
    ])
    return root / "lm"


def _lm_steps_per_pass(lm_dir: Path) -> int:
    from distillation_llm.data import load_processed

    return GlobalBatchSampler(len(load_processed(lm_dir)[0]["train"]), 4, 2, 1, 0, 3).steps_per_epoch


# ---------------------------------------------------------------------------------------------
# --lm-data-dir: the position follows the step, each pass a new order.
# ---------------------------------------------------------------------------------------------


def test_each_pass_over_the_lm_data_has_a_new_order_and_the_position_follows_the_step():
    sampler = GlobalBatchSampler(16, 4, 2, 1, 0, seed=3)  # 2 steps of 2 micro-batches per pass
    loader = DataLoader(list(range(16)), batch_sampler=sampler, collate_fn=list)
    stream = finetune.lm_micro_batches(loader, sampler, 0)
    passes = [[x for _ in range(4) for x in next(stream)] for _ in range(3)]
    assert all(sorted(one) == list(range(16)) for one in passes)  # each pass is the whole data once
    assert passes[0] != passes[1] and passes[1] != passes[2]
    # Started at step 3 (the second step of the second pass), it yields what the run from 0 did.
    resumed = finetune.lm_micro_batches(loader, sampler, 3)
    assert [x for _ in range(6) for x in next(resumed)] == passes[1][8:] + passes[2]


def test_stop_and_resume_with_lm_data_equals_the_uninterrupted_run(tmp_path, processed_dir, lm_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir):  # noqa: F811
    assert 6 > 2 * _lm_steps_per_pass(lm_dir)  # the run passes over the LM data more than twice
    extra = ("--type", "kd", "--total-iters", 6, "--lm-data-dir", lm_dir, "--lm-coef", 0.5)
    finetune.main(_argv(tmp_path / "full", processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, *extra))
    split = tmp_path / "split"
    finetune.main(_argv(split, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, *extra, "--stop-after-iters", 3))
    finetune.main(_argv(split, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, *extra, "--resume"))
    full = _weights(tmp_path / "full" / "6")
    assert _max_difference(_weights(tiny_gpt2_dir), full) > 1e-4
    assert _max_difference(_weights(split / "6"), full) == 0.0


# ---------------------------------------------------------------------------------------------
# SIGTERM / SIGINT at random moments of a real run, then --resume.
# ---------------------------------------------------------------------------------------------

SIGNALLED = ("--type", "kd", "--total-iters", 8, "--save-interval", 2, "--keep-checkpoints", 1, "--do-valid", "--eval-interval", 3)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, processed_dir, lm_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir):  # noqa: F811
    save = tmp_path_factory.mktemp("signalled") / "full"
    _finetune(_argv(save, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, *SIGNALLED, "--lm-data-dir", lm_dir))
    return _weights(save / "8")


@pytest.mark.parametrize("number, seed, second", [(signal.SIGTERM, 0, False), (signal.SIGTERM, 1, False), (signal.SIGINT, 2, False), (signal.SIGTERM, 3, True)],
                         ids=["sigterm-0", "sigterm-1", "sigint", "second-sigterm-while-saving"])
def test_a_stop_signal_at_a_random_moment_then_resume_equals_the_uninterrupted_run(
    number, seed, second, uninterrupted, tmp_path, processed_dir, lm_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir,  # noqa: F811
):
    """The signal lands anywhere after step 1: in a forward or backward pass, a validation, a save
    (each phase of a save takes 0.1 s here). The run finishes its step, saves and exits with
    EXIT_STOPPED; with `second`, another SIGTERM while a checkpoint is being written (as a launcher
    forwarding it would send) changes nothing."""
    save = tmp_path / "run"
    argv = _argv(save, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, *SIGNALLED, "--lm-data-dir", lm_dir)
    process = subprocess.Popen([sys.executable, "-m", "distillation_llm.finetune", *argv], cwd=REPO, env=_subprocess_env(**{E.PAUSE_ENV: "0.1"}),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline and "train step 1 " not in ((save / "log.txt").read_text() if (save / "log.txt").exists() else ""):
        time.sleep(0.01)
    time.sleep(random.Random(seed).uniform(0.0, 1.5))
    assert process.poll() is None, "the run ended before the signal"
    os.kill(process.pid, number)
    if second:
        staging = save / "checkpoints" / ".incomplete"
        while process.poll() is None and not any(p.name.startswith("step") and not p.name.endswith(".deleting") for p in staging.glob("step*")):
            time.sleep(0.005)
        time.sleep(0.15)
        os.kill(process.pid, signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
    name = signal.Signals(number).name
    assert f"received {name}: stopping after this optimizer step with a resumable checkpoint" in stderr
    assert ("received SIGTERM again: already stopping" in stderr) == second
    assert process.returncode == EXIT_STOPPED, stderr[-2000:]
    stopped = [line for line in stdout.splitlines() if f"stopped by {name} after step" in line]
    assert len(stopped) == 1 and "continue with --resume (exit status 75)" in stopped[0], stdout[-2000:]
    step = int(stopped[0].split("after step ")[1].split()[0])
    assert 1 < step < 8 and (save / "checkpoints" / "latest").read_text() == f"step{step}" and (save / str(step)).is_dir()
    _finetune([*argv, "--resume"])
    assert _max_difference(_weights(save / "8"), uninterrupted) == 0.0


# ---------------------------------------------------------------------------------------------
# --resume compares the contents of the run's inputs, not only their paths.
# ---------------------------------------------------------------------------------------------


def _perturb(directory: Path) -> None:
    """Other weights in the same files (another model of the same shape copied to the same path)."""
    weights = load_file(directory / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 1e-3
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("changed", ["teacher", "student", "data"])
def test_resume_refuses_inputs_whose_contents_changed_at_the_same_path(changed, tmp_path, tiny_tokenizer_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir):
    from conftest import write_instruction_jsonl

    from tools import process_data_dolly

    student, teacher = tmp_path / "student", tmp_path / "teacher"
    shutil.copytree(tiny_gpt2_dir, student)
    shutil.copytree(tiny_gpt2_teacher_dir, teacher)

    def process(seed: int) -> Path:
        write_instruction_jsonl(tmp_path / "raw" / "raw.jsonl", 24, seed=seed)
        process_data_dolly.main(["--data-dir", str(tmp_path / "raw"), "--processed-data-dir", str(tmp_path / "data"), "--model-path", str(tiny_tokenizer_dir),
                                 "--max-prompt-length", "48", "--max-length", "64", "--dev-num", "8", "--overwrite"])
        return tmp_path / "data"

    data = process(seed=5)
    argv = _argv(tmp_path / "run", data, student, teacher, "--type", "kd", "--total-iters", 2)
    finetune.main([*argv, "--stop-after-iters", "1"])
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())["fingerprints"]
    assert set(recorded) == {"--data-dir train split", "--data-dir valid split", "--model-path weights", "--model-path tokenizer", "--teacher-model-path weights"}
    what = {"teacher": "--teacher-model-path weights", "student": "--model-path weights", "data": "--data-dir train split"}[changed]
    if changed == "data":
        process(seed=6)  # the raw file edited, then re-processed in place
    else:
        _perturb(teacher if changed == "teacher" else student)
    with pytest.raises(ResumeMismatch, match=f"^--resume: the contents of {what} \\(sha256 {recorded[what][:12]} then, [0-9a-f]{{12}} now\\).* changed since the run") as refused:
        finetune.main([*argv, "--resume"])
    assert "\n" not in str(refused.value)


# ---------------------------------------------------------------------------------------------
# Model folders of an abandoned trajectory.
# ---------------------------------------------------------------------------------------------


def test_a_resume_removes_model_folders_past_its_checkpoint(tmp_path, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir):  # noqa: F811
    """A run killed after writing <4>/ and best/ but before its checkpoint of step 4, resumed with
    --resume-with-changes (a longer schedule: another trajectory), ends with no model of the old one."""
    save = tmp_path / "run"
    argv = _argv(save, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, "--type", "kd", "--save-interval", 2)
    finetune.main([*argv, "--total-iters", "4", "--stop-after-iters", "2"])
    shutil.copytree(save / "2", save / "4")  # what the killed invocation left: step 4's model, no checkpoint
    shutil.copytree(save / "2", save / "best")
    (save / "best" / "best.json").write_text(json.dumps({"step": 4}))
    stale = _weights(save / "4")
    finetune.main([*argv, "--total-iters", "6", "--resume-with-changes"])
    assert "removed the model folders of steps after 2, left by an earlier invocation: 4, best" in (save / "log.txt").read_text()
    assert not (save / "best").exists()  # no validation in this run: nothing was selected
    assert _max_difference(_weights(save / "4"), stale) > 0  # step 4 of the resumed trajectory, not the stale one


# ---------------------------------------------------------------------------------------------
# DataLoader workers leave the stop signals to the training process.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_dataloader_workers_survive_a_stop_signal_sent_to_the_process_group(number):
    """Ctrl-C and a scheduler's SIGTERM reach every process of the group; a worker that died of it
    would fail the run instead of letting the training process stop at its step's end (the LLM
    and CLIP loops pass this worker_init_fn whenever --num-workers > 0)."""
    from abkd.run import ignore_stop_signals

    loader = DataLoader(list(range(64)), batch_size=4, num_workers=1, worker_init_fn=ignore_stop_signals, prefetch_factor=1)
    batches = iter(loader)
    first = next(batches)
    (worker,) = batches._workers
    os.kill(worker.pid, number)
    time.sleep(0.3)
    rest = list(batches)
    assert worker.exitcode in (None, 0) and [int(x) for b in [first, *rest] for x in b] == list(range(64))
