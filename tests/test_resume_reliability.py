"""Reliability of stop-and-resume (issue #14): exact resume with dropout on in every mode of the
LLM loop, a kill -9 inside a save, corrupted checkpoints, argument checks on --resume and one
writer per --save."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import write_instruction_jsonl
from safetensors.torch import load_file

from abkd import engine as E
from abkd.run import LOCK, ResumeMismatch, Run, RunLocked
from distillation_llm import finetune

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def processed_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    from tools import process_data_dolly

    root = tmp_path_factory.mktemp("resume-data")
    write_instruction_jsonl(root / "raw" / "raw.jsonl", 48, seed=5)
    out = root / "processed"
    process_data_dolly.main([
        "--data-dir", str(root / "raw"), "--processed-data-dir", str(out), "--model-path", str(tiny_tokenizer_dir),
        "--max-prompt-length", "48", "--max-length", "64", "--dev-num", "8",
    ])
    return out  # 40 training examples: 5 steps per epoch of 8


@pytest.fixture(scope="module")
def ranking(tmp_path_factory, processed_dir) -> Path:
    """An easy-to-hard ranking of the training examples (here: a fixed shuffle)."""
    from distillation_llm.data import load_processed

    data, meta = load_processed(processed_dir)
    ids = list(data["train"]["id"])
    random.Random(0).shuffle(ids)
    path = tmp_path_factory.mktemp("ranking") / "ranking.jsonl"
    path.write_text("".join(json.dumps({"id": i}) + "\n" for i in ids))
    path.with_suffix(".meta.json").write_text(json.dumps({"dataset_fingerprint": meta["fingerprint"], "dataset": str(processed_dir)}))
    return path


def _argv(save, data, student, teacher, *extra):
    return [
        "--model-path", str(student), "--teacher-model-path", str(teacher), "--data-dir", str(data), "--save", str(save),
        "--do-train", "--batch-size", "4", "--gradient-accumulation-steps", "2", "--lr", "5e-3", "--warmup-iters", "1",
        "--log-interval", "1", "--seed", "3", "--max-length", "64", "--max-prompt-length", "48", *map(str, extra),
    ]


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def test_the_tiny_student_has_active_dropout(tiny_gpt2_dir, tiny_tokenizer):
    from distillation_llm.models import load_causal_lm

    student = load_causal_lm(tiny_gpt2_dir).train()
    assert student.config.resid_pdrop == student.config.embd_pdrop == student.config.attn_pdrop == 0.1
    ids = torch.tensor([tiny_tokenizer("the quick red fox jumps over the lazy dog").input_ids])
    first, second = student(ids).logits, student(ids).logits
    assert not torch.equal(first, second)  # two passes in train mode draw different masks
    student.eval()
    assert torch.equal(student(ids).logits, student(ids).logits)


MODES = {
    "kd": ["--type", "kd"],
    "do-valid": ["--type", "kd", "--do-valid", "--eval-interval", 1],
    "eval-gen": ["--type", "kd", "--do-valid", "--eval-interval", 2, "--eval-gen", "--max-new-tokens", 4, "--do-sample", "--eval-batch-size", 8],
    "gkd": ["--type", "gkd", "--mixed-alpha", "0.3"],
    "distillm": ["--type", "distillm", "--do-valid", "--eval-interval", 2, "--init-threshold", "0.3", "--capacity", 16],
    "pocl": ["--type", "kd", "--curriculum", "pocl", "--num-stages", 2, "--stage-epochs", 1],
}


@pytest.mark.parametrize("mode", list(MODES))
def test_stop_and_resume_with_dropout_equals_the_uninterrupted_run(mode, tmp_path, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, ranking):
    """Stopped mid-epoch, after a validation and (gkd, distillm) after student samples, then resumed:
    the weights are bit-identical to those of the run that never stopped."""
    extra = [*MODES[mode], *(["--ranking", ranking] if mode == "pocl" else []), "--total-iters", 6]
    # gkd: stop where the next batch comes from the dataset (its first micro-batch after step 3
    # would be a student sample, whose generation reseeds torch and would hide a lost RNG state).
    stop = 2 if mode == "gkd" else 3
    finetune.main(_argv(tmp_path / "full", processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, *extra))
    split = tmp_path / "split"
    finetune.main(_argv(split, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, *extra, "--stop-after-iters", stop))
    assert not (split / "6").exists()
    finetune.main(_argv(split, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, *extra, "--resume"))
    assert f"resumed from step{stop}: step {stop}" in (split / "log.txt").read_text()
    full = _weights(tmp_path / "full" / "6")
    assert _max_difference(_weights(tiny_gpt2_dir), full) > 1e-4
    assert _max_difference(_weights(split / "6"), full) == 0.0
    if mode in ("gkd", "distillm"):  # the student's samples were really trained on, before and after the stop
        for run in (split, tmp_path / "full"):
            counts = torch.load(run / "checkpoints" / "step6" / "rank_state_0.pt", weights_only=True)["rank_state"]["source"]["counts"]
            assert counts["generated"] > 0, counts


def test_every_training_step_runs_the_student_in_train_mode(monkeypatch, tmp_path, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir):
    """From the first step, after each validation with generation, and after --resume."""
    from distillation_llm.objective import Objective

    modes = []
    forward_train = Objective.forward_train

    def recording(self, *args, **kwargs):
        modes.append(all(module.training for module in self.student.modules()))
        return forward_train(self, *args, **kwargs)

    monkeypatch.setattr(Objective, "forward_train", recording)
    extra = ("--type", "gkd", "--do-valid", "--eval-interval", 1, "--eval-gen", "--max-new-tokens", 4, "--total-iters", 3)
    finetune.main(_argv(tmp_path / "run", processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, *extra, "--stop-after-iters", 2))
    finetune.main(_argv(tmp_path / "run", processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, *extra, "--resume"))
    assert modes == [True] * 6


def test_validation_and_generation_leave_the_training_rng_alone(tmp_path, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir):
    """Generation reseeds torch; validating must still leave the training stream where it was."""
    from distillation_llm.arguments import parse_args
    from distillation_llm.data import InstructionCollator, load_processed
    from distillation_llm.models import load_causal_lm, load_tokenizer
    from distillation_llm.objective import Objective

    args = parse_args(_argv(tmp_path, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, "--type", "kd", "--do-valid", "--eval-gen",
                            "--max-new-tokens", 4, "--do-sample", "--total-iters", 1))
    tokenizer = load_tokenizer(args.model_path)
    student = load_causal_lm(args.model_path).train()
    teacher = load_causal_lm(args.teacher_model_path).eval()

    class Engine:
        module = student

    objective = Objective(student, teacher, "fkl", {}, 0.5, 1.0, len(tokenizer))
    valid_set = load_processed(processed_dir, tokenizer)[0]["valid"]
    torch.manual_seed(123)
    before = torch.get_rng_state()
    metrics = finetune.validate(Engine(), objective, valid_set, InstructionCollator(tokenizer.pad_token_id, 64), tokenizer, args, torch.device("cpu"))
    assert "rougeL" in metrics and student.training
    assert torch.equal(torch.get_rng_state(), before)


def test_dropout_masks_do_not_depend_on_the_process_layout(tmp_path, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir):
    """With dropout on, 2 processes x 1 accumulation step train exactly as 1 process x 2: each
    micro-batch's masks come from (seed, step, global micro-batch index)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    common = _argv(tmp_path / "x", processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, "--type", "kd", "--total-iters", 2, "--batch-size", 2)
    common = common[: common.index("--save")] + common[common.index("--save") + 2 : common.index("--gradient-accumulation-steps")] + common[common.index("--lr") :]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port), "-m", "distillation_llm.finetune"]
    two = subprocess.run([*launch, *common, "--save", str(tmp_path / "two"), "--gradient-accumulation-steps", "1"],
                         cwd=REPO, env=_subprocess_env(), capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    _finetune([*common, "--save", str(tmp_path / "one"), "--gradient-accumulation-steps", "2"])
    assert "world size 2" in (tmp_path / "two" / "log.txt").read_text()
    assert _max_difference(_weights(tmp_path / "two" / "2"), _weights(tmp_path / "one" / "2")) < 1e-6


# ---------------------------------------------------------------------------------------------
# kill -9 inside a save, then --resume.
# ---------------------------------------------------------------------------------------------


def _subprocess_env(**extra) -> dict:
    # This checkout's packages first, also for a script outside it (its directory heads sys.path).
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": pythonpath, **extra}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):  # set by in-process runs
        env.pop(key, None)
    return env


def _finetune(argv, **env) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "distillation_llm.finetune", *argv], cwd=REPO, env=_subprocess_env(**env),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("kill_seed", [0, 1])
def test_kill_during_a_save_then_resume_equals_the_uninterrupted_run(kill_seed, tmp_path, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir):
    common = ("--type", "kd", "--total-iters", 5, "--save-interval", 1, "--keep-checkpoints", 1)
    _finetune(_argv(tmp_path / "full", processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, *common))
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "distillation_llm.finetune", *_argv(killed, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, *common)],
        cwd=REPO, env=_subprocess_env(**{E.PAUSE_ENV: "0.15"}), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    # Wait until the save of step 3 has begun (its staging directory exists), then kill at a
    # random moment inside it: while DeepSpeed writes, before or after the rename, while `latest`
    # is replaced or while the previous checkpoint is deleted (each phase takes 0.15 s here).
    staging = killed / "checkpoints" / ".incomplete" / "step3"
    deadline = time.monotonic() + 300
    while not staging.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert process.poll() is None, "the run ended before its third save"
    time.sleep(random.Random(kill_seed).uniform(0.0, 0.9))
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert json.loads((killed / LOCK).read_text())["pid"] == process.pid  # the dead run's lock is left behind
    _finetune(_argv(killed, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, *common, "--resume"))
    log = (killed / "log.txt").read_text()
    assert f"taking over the lock {killed / LOCK} of process {process.pid}" in log
    assert "resumed from step" in log
    assert _max_difference(_weights(killed / "5"), _weights(tmp_path / "full" / "5")) == 0.0
    assert not (killed / LOCK).exists()


# ---------------------------------------------------------------------------------------------
# Corrupted checkpoints: fall back to the newest whole one; weights_only loading.
# ---------------------------------------------------------------------------------------------


def _lifecycle():
    sys.path.insert(0, str(Path(__file__).parent))
    import test_run_lifecycle

    return test_run_lifecycle


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """A tiny run stopped after epoch 1 and after 3 more steps, keeping both checkpoints, and the
    uninterrupted run's weights after 9 steps (its own resume from epoch1 reaches them)."""
    lifecycle = _lifecycle()
    root = tmp_path_factory.mktemp("corrupt")
    _, reference, _ = lifecycle.fit_tiny(root / "reference", zero_stage=1, epochs=2, stop_after_iters=9)
    save = root / "run"
    lifecycle.fit_tiny(save, zero_stage=1, epochs=2, keep_checkpoints=2, stop_after_epochs=1)
    lifecycle.fit_tiny(save, zero_stage=1, epochs=2, keep_checkpoints=2, resume=True, stop_after_iters=3)
    return lifecycle, save, reference


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("victim", ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt", "rank_state_0.pt"])
def test_a_truncated_latest_checkpoint_falls_back_to_the_previous_one(victim, two_checkpoints, tmp_path):
    lifecycle, source, reference = two_checkpoints
    save = tmp_path / "run"
    import shutil

    shutil.copytree(source, save)
    checkpoints = save / "checkpoints"
    assert (checkpoints / "latest").read_text() == "step9" and (checkpoints / "epoch1").is_dir()
    bad = checkpoints / "step9" / victim
    _truncate(bad)
    assert E.verify_checkpoint(checkpoints / "step9") is not None and E.verify_checkpoint(checkpoints / "epoch1") is None
    warnings = []
    assert E.usable_checkpoint(checkpoints, warn=warnings.append) == "epoch1"
    assert len(warnings) == 1 and str(bad) in warnings[0] and "truncated" in warnings[0]
    # The run resumes from epoch1 and, re-training the lost steps, ends where the reference did.
    _, weights, run = lifecycle.fit_tiny(save, zero_stage=1, epochs=2, keep_checkpoints=2, resume=True, stop_after_iters=3)
    log = (save / "log.txt").read_text()
    assert f"warning: checkpoint step9 is unusable: {bad}" in log and "resumed from epoch1" in log
    assert run.state["step"] == 9
    for key, value in reference.items():
        assert torch.equal(weights[key], value), key


def test_a_checkpoint_without_manifest_is_checked_by_loading_it(two_checkpoints, tmp_path):
    _, source, _ = two_checkpoints
    import shutil

    save = tmp_path / "run"
    shutil.copytree(source, save)
    step9 = save / "checkpoints" / "step9"
    (step9 / E.MANIFEST).unlink()
    assert E.verify_checkpoint(step9) is None
    _truncate(step9 / "rank_state_0.pt")
    assert "rank_state_0.pt is unreadable" in E.verify_checkpoint(step9)


def test_no_whole_checkpoint_is_an_error_not_a_fresh_start(two_checkpoints, tmp_path):
    _, source, _ = two_checkpoints
    import shutil

    save = tmp_path / "run"
    shutil.copytree(source, save)
    for tag in ("step9", "epoch1"):
        _truncate(save / "checkpoints" / tag / "mp_rank_00_model_states.pt")
    with pytest.raises(RuntimeError, match="no usable checkpoint .* step9 .* epoch1"):
        E.usable_checkpoint(save / "checkpoints")


def test_checkpoints_load_with_weights_only(two_checkpoints, monkeypatch):
    """Every file DeepSpeed reads on resume goes through torch.load(weights_only=True)."""
    lifecycle, source, _ = two_checkpoints
    calls = []
    original = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    import shutil

    save = source.parent / "weights-only"
    shutil.copytree(source, save)
    lifecycle.fit_tiny(save, zero_stage=1, epochs=2, keep_checkpoints=2, resume=True, stop_after_iters=1)
    assert len(calls) >= 3 and all(flag is True for flag in calls), calls


# ---------------------------------------------------------------------------------------------
# --resume checks the arguments against args.json.
# ---------------------------------------------------------------------------------------------


def test_resume_refuses_trajectory_changes_and_records_allowed_ones(tmp_path, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir):
    save = tmp_path / "run"
    base = ("--type", "ab", "--ab_alpha", "0.2", "--ab_beta", "0.7", "--total-iters", 2)
    finetune.main(_argv(save, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, *base))
    original = (save / "args.json").read_text()

    changed = ("--type", "ab", "--ab_alpha", "0.5", "--ab_beta", "0.7", "--total-iters", 2, "--lr", "1e-3")
    with pytest.raises(ResumeMismatch) as refused:
        finetune.main(_argv(save, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, *changed, "--resume"))
    message = str(refused.value)
    assert "--ab-alpha: 0.2 in the run, 0.5 now" in message and "--lr: 0.005 in the run, 0.001 now" in message
    assert "--total-iters" not in message
    # --resume-with-changes does not make a trajectory change acceptable.
    with pytest.raises(ResumeMismatch, match="--lr"):
        finetune.main(_argv(save, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, *changed, "--resume-with-changes"))
    with pytest.raises(ResumeMismatch, match="--resume-with-changes would allow: total_iters"):
        finetune.main(_argv(save, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, *base[:-1], 4, "--resume"))
    assert (save / "args.json").read_text() == original and not (save / "args_history.jsonl").exists()
    assert not (save / LOCK).exists()  # a refused start releases the lock

    longer = (*base[:-1], 4, "--eval-interval", 2, "--do-valid")
    with pytest.raises(ResumeMismatch, match="--do-valid"):  # validation steers best/ and adaptive methods
        finetune.main(_argv(save, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, *longer, "--resume-with-changes"))
    longer = (*base[:-1], 4, "--log-interval", 2)
    finetune.main(_argv(save, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, *longer, "--resume-with-changes", "--stop-after-iters", 1))
    assert (save / "args.json").read_text() == original
    history = [json.loads(line) for line in (save / "args_history.jsonl").read_text().splitlines()]
    assert [entry["changes"] for entry in history] == [{"total_iters": {"old": 2, "new": 4}, "log_interval": {"old": 1, "new": 2}}]
    # Once recorded, the changed arguments are the run's: a plain --resume continues.
    finetune.main(_argv(save, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, *longer, "--resume"))
    assert (save / "4").is_dir() and len((save / "args_history.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize("module_name", ["standard_classification.train_teacher", "base_to_new_classification.train"])
def test_classification_command_lines_have_resume_with_changes(module_name):
    import importlib

    module = importlib.import_module(module_name)
    flags = {flag for action in module.build_parser()._actions for flag in action.option_strings}
    assert "--resume-with-changes" in flags


def test_lifecycle_resume_checks_arguments(tmp_path):
    lifecycle = _lifecycle()
    save = tmp_path / "run"
    lifecycle.fit_tiny(save, epochs=2, stop_after_iters=2)
    with pytest.raises(ResumeMismatch, match="--seed: 0 in the run, 1 now"):
        Run.start(lifecycle.run_args(save, epochs=2, resume=True, seed=1))
    with pytest.raises(ResumeMismatch, match="--resume-with-changes would allow: epochs"):
        Run.start(lifecycle.run_args(save, epochs=3, resume=True))
    finished, _, run = lifecycle.fit_tiny(save, epochs=3, resume=True, resume_with_changes=True)
    assert finished and run.state["epoch"] == 3
    assert "--resume-with-changes: --epochs 2 -> 3" in (save / "log.txt").read_text()


def test_flags_newer_than_the_run_count_as_unchanged_at_their_default():
    """A run whose args.json predates a flag resumes while the flag keeps its default; a
    non-default value of that flag is a change like any other."""
    from abkd.run import resume_changes

    old = {"seed": 3, "lr": 0.1}
    assert resume_changes(old, {"seed": 3, "lr": 0.1, "new_flag": 6}, False, defaults={"new_flag": 6}) == {}
    with pytest.raises(ResumeMismatch, match="--new-flag: None in the run, 0 now"):
        resume_changes(old, {"seed": 3, "lr": 0.1, "new_flag": 0}, False, defaults={"new_flag": 6})
    with pytest.raises(ResumeMismatch, match="--new-flag"):  # without the parser's defaults: a change
        resume_changes(old, {"seed": 3, "lr": 0.1, "new_flag": 6}, False)


# ---------------------------------------------------------------------------------------------
# One writer per --save.
# ---------------------------------------------------------------------------------------------


def test_a_second_run_on_the_same_save_is_refused_while_the_first_is_alive(tmp_path):
    save = tmp_path / "run"
    script = tmp_path / "hold.py"
    script.write_text(textwrap.dedent(f"""
        import argparse, sys, time
        from abkd.run import Run
        args = argparse.Namespace(seed=0, save={str(save)!r}, resume=False, epochs=1, keep_checkpoints=1, log_interval=1, report_to="none")
        run = Run.start(args)
        print("started", flush=True)
        time.sleep(float(sys.argv[1]))
        run.close()
    """))
    holder = subprocess.Popen([sys.executable, str(script), "60"], cwd=REPO, env=_subprocess_env(), stdout=subprocess.PIPE, text=True)
    try:
        lines = iter(holder.stdout.readline, "")
        assert any(line.strip() == "started" for line in lines), "the first run did not start"
        second = subprocess.run([sys.executable, str(script), "0"], cwd=REPO, env=_subprocess_env(), capture_output=True, text=True, timeout=120)
        assert second.returncode != 0
        assert f"RunLocked: --save {save} is in use by process {holder.pid} (lock {save / LOCK})" in second.stderr
        with pytest.raises(RunLocked, match=f"in use by process {holder.pid}"):
            Run.start(_lifecycle().run_args(save, resume=True))
    finally:
        holder.kill()
        holder.wait()
    # The holder was killed: its lock is stale and the next run takes it over.
    run = Run.start(_lifecycle().run_args(save))
    assert json.loads((save / LOCK).read_text())["pid"] == os.getpid()
    assert f"taking over the lock {save / LOCK} of process {holder.pid}, which is no longer running" in (save / "log.txt").read_text()
    run.close()
    assert not (save / LOCK).exists()
