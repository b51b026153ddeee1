"""The run lifecycle of `abkd.run` on its own (start, fit, stop, resume, atomic save, buffer
averaging over two real processes), the step-decay schedule, and the flag vocabulary of the two
classification command lines (every reference spelling parses to what the canonical flag does)."""

import argparse
import json
import subprocess
import sys
import textwrap
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import multiprocess_env
from torch import nn

from abkd import engine as E
from abkd.run import Run, atomic_save
from abkd.sampling import GlobalBatchSampler
from abkd.schedules import build_step_decay_scheduler, step_decay_multiplier
from base_to_new_classification import train as clip_train
from base_to_new_classification import train_teacher as clip_teacher
from standard_classification import train_student, train_teacher

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Schedule and atomic files.
# ---------------------------------------------------------------------------------------------


def test_step_decay_is_a_function_of_the_step():
    factor = partial(step_decay_multiplier, steps_per_epoch=5, decay_epochs=[2, 4], rate=0.1)
    assert [factor(step) for step in (0, 9, 10, 19, 20, 100)] == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5)
    scheduler = build_step_decay_scheduler(optimizer, steps_per_epoch=5, decay_epochs=[2], rate=0.1)
    rates = []
    for _ in range(12):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[9] == pytest.approx(0.5) and rates[10] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        step_decay_multiplier(0, steps_per_epoch=0, decay_epochs=[], rate=0.1)


def test_atomic_save_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "model.pt"
    atomic_save({"a": torch.ones(2)}, path)
    atomic_save({"a": torch.zeros(2)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.zeros(2))
    assert list(tmp_path.iterdir()) == [path]


# ---------------------------------------------------------------------------------------------
# A tiny model (BatchNorm and dropout 0.1) trained through the real DeepSpeed engine.
# ---------------------------------------------------------------------------------------------


def run_args(save, **overrides) -> argparse.Namespace:
    defaults = dict(seed=0, save=str(save), resume=False, epochs=3, keep_checkpoints=1, log_interval=1,
                    stop_after_iters=None, stop_after_epochs=None, report_to="none")
    return argparse.Namespace(**{**defaults, **overrides})


def fit_tiny(save, zero_stage: int = 0, **overrides):
    """22 examples in batches of 4: 5 full steps and one of 2 per epoch (drop_last=False)."""
    run = Run.start(run_args(save, **overrides))
    generator = torch.Generator().manual_seed(0)
    inputs, labels = torch.randn(22, 4, generator=generator), torch.randint(0, 3, (22,), generator=generator)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 3))
    sampler = GlobalBatchSampler(len(inputs), 4, 1, E.world_size(), E.rank(), seed=0, drop_last=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = build_step_decay_scheduler(optimizer, steps_per_epoch=sampler.steps_per_epoch, decay_epochs=[1], rate=0.5)
    config = E.load_deepspeed_config(None, micro_batch_size=4, gradient_accumulation_steps=1)
    if zero_stage:  # the optimizer state in its own zero_pp_rank_* files
        config.update(zero_optimization={"stage": zero_stage}, zero_allow_untested_optimizer=True)
    engine = E.initialize(model, optimizer, scheduler, config)
    run.resume(engine)

    def objective(batch):
        x, y = batch
        ce = F.cross_entropy(engine(x), y)
        return ce, {"ce": ce.detach()}

    finished = run.fit(engine, objective, sampler, lambda epoch: ((inputs[i], labels[i]) for i in map(torch.tensor, sampler)))
    run.close()
    return finished, {key: value.clone() for key, value in engine.module.state_dict().items()}, run


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return fit_tiny(tmp_path_factory.mktemp("lifecycle") / "full")


def test_fit_trains_logs_and_checkpoints(uninterrupted):
    finished, weights, run = uninterrupted
    assert finished and run.state == {"step": 18, "epoch": 3, "step_in_epoch": 0}
    assert [entry["epoch"] for entry in run.history] == [1, 2, 3]
    assert all(entry["train_loss"] == pytest.approx(entry["train_ce"]) for entry in run.history)
    assert [entry["lr"] for entry in run.history] == pytest.approx([0.1, 0.05, 0.05])
    assert json.loads((run.save_dir / "args.json").read_text())["epochs"] == 3
    log = (run.save_dir / "log.txt").read_text()
    assert "6 steps per epoch of 4" in log and log.count("train step") == 18 and log.count("epoch step") == 3
    assert sorted(p.name for p in (run.save_dir / "checkpoints").iterdir()) == [".incomplete", "epoch3", "latest"]


def test_stop_mid_epoch_and_resume_equals_the_uninterrupted_run(uninterrupted, tmp_path):
    _, full_weights, full = uninterrupted
    save = tmp_path / "split"
    finished, _, first = fit_tiny(save, stop_after_iters=4)
    assert not finished and first.state["step"] == 4 and first.history == []
    finished, _, second = fit_tiny(save, resume=True, stop_after_epochs=1)  # finishes the epoch it is in
    assert not finished and second.state == {"step": 6, "epoch": 1, "step_in_epoch": 0}
    # The epoch's means include the 4 steps of the first invocation (per-rank sums are resumed).
    assert second.history == [{**full.history[0], "epoch_s": second.history[0]["epoch_s"]}]
    finished, weights, third = fit_tiny(save, resume=True)
    assert finished and third.state["step"] == 18
    assert set(weights) == set(full_weights)
    for key, value in full_weights.items():  # dropout masks, BatchNorm statistics and momentum resumed exactly
        assert torch.equal(weights[key], value), key


def test_start_refuses_a_file_as_output_directory(tmp_path):
    target = tmp_path / "taken"
    target.write_text("not a directory")
    with pytest.raises(NotADirectoryError, match="--save .*taken is a file"):
        Run.start(run_args(target))


def test_batch_norm_statistics_are_averaged_over_two_processes(tmp_path):
    script = tmp_path / "average.py"
    script.write_text(textwrap.dedent(f"""
        import torch
        from torch import nn
        from abkd import engine as E
        from abkd.run import sync_buffers

        E.init_distributed()
        rank = E.rank()
        norm = nn.BatchNorm1d(3)
        norm.running_mean.fill_(rank + 1.0)
        norm.running_var.copy_(torch.tensor([1.0, 2.0, 3.0]) * (1 + 2 * rank))
        norm.num_batches_tracked.fill_(7)
        sync_buffers(norm)
        torch.save(dict(norm.named_buffers()), {str(tmp_path)!r} + f"/rank{{rank}}.pt")
        E.barrier()  # neither process may exit while the other still talks to it
        torch.distributed.destroy_process_group()
    """))
    command = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2", str(script)]
    result = subprocess.run(command, cwd=REPO, env=multiprocess_env(2), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in range(2):
        buffers = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert buffers["running_mean"].dtype == torch.float32 and buffers["running_var"].dtype == torch.float32
        torch.testing.assert_close(buffers["running_mean"], torch.full((3,), 1.5), rtol=0, atol=0)
        torch.testing.assert_close(buffers["running_var"], torch.tensor([2.0, 4.0, 6.0]), rtol=0, atol=0)
        assert int(buffers["num_batches_tracked"]) == 7


# ---------------------------------------------------------------------------------------------
# One flag vocabulary: each reference spelling parses to the canonical flag's value.
# ---------------------------------------------------------------------------------------------

CIFAR_TEACHER = (train_teacher.parse_args, {"--model": "resnet8"})
CIFAR_STUDENT = (train_student.parse_args, {"--teacher-ckpt": "save/models/resnet56_vanilla/ckpt_epoch_240.pth", "--model": "resnet8", "--distill": "dkd"})
CLIP_COMMON = {"--dataset": "oxford_pets", "--root": "data", "--teacher-model-path": "teacher", "--save": "out"}
CLIP_STUDENT = (clip_train.parse_args, {**CLIP_COMMON, "--student-model-path": "student", "--teacher-ckpt": "t.pt", "--distill": "dkd"})
CLIP_TEACHER = (clip_teacher.parse_args, CLIP_COMMON)

ALIASES = [
    (CIFAR_TEACHER, "--lr", "--learning_rate", "0.2"),
    (CIFAR_TEACHER, "--batch-size", "--batch_size", "7"),
    (CIFAR_TEACHER, "--lr-decay-epochs", "--lr_decay_epochs", "3,4"),
    (CIFAR_TEACHER, "--lr-decay-rate", "--lr_decay_rate", "0.5"),
    (CIFAR_TEACHER, "--weight-decay", "--weight_decay", "0.001"),
    (CIFAR_TEACHER, "--save-freq", "--save_freq", "3"),
    (CIFAR_STUDENT, "--teacher-ckpt", "--path_t", "elsewhere/resnet32_vanilla/ckpt.pth"),
    (CIFAR_STUDENT, "--teacher-model", "--model_t", "resnet20"),
    (CIFAR_STUDENT, "--model", "--model_s", "resnet14"),
    (CIFAR_STUDENT, "--kd-temperature", "--kd_T", "2.5"),
    (CIFAR_STUDENT, "--kd-ratio", "--kd-weight", "0.3"),
    (CIFAR_STUDENT, "--tckd-weight", "--dkd_alpha", "2.0"),
    (CIFAR_STUDENT, "--nckd-weight", "--dkd_beta", "3.0"),
    (CIFAR_STUDENT, "--dkd-warmup", "--dkd_warmup", "5"),
    (CIFAR_STUDENT, "--lr", "--learning_rate", "0.2"),
    (CLIP_STUDENT, "--kd-temperature", "--temperature", "2.0"),
    (CLIP_STUDENT, "--kd-ratio", "--kd-weight", "5"),
    (CLIP_STUDENT, "--tckd-weight", "--dkd-alpha", "2"),
    (CLIP_STUDENT, "--nckd-weight", "--dkd-beta", "3"),
    (CLIP_STUDENT, "--lr", "--learning_rate", "0.01"),
    (CLIP_STUDENT, "--batch-size", "--batch_size", "6"),
    (CLIP_STUDENT, "--weight-decay", "--weight_decay", "0.1"),
    (CLIP_TEACHER, "--lr", "--learning_rate", "0.01"),
    (CLIP_TEACHER, "--batch-size", "--batch_size", "6"),
]


@pytest.mark.parametrize("command, canonical, alias, value", ALIASES, ids=[f"{c}={a}" for _, c, a, _ in ALIASES])
def test_reference_spelling_parses_like_the_canonical_flag(command, canonical, alias, value):
    parse, required = command

    def argv(flag):
        flags = {**{key: given for key, given in required.items() if key != canonical}, flag: value}
        return [word for pair in flags.items() for word in pair]

    default = vars(parse([word for pair in required.items() for word in pair]))
    by_canonical, by_alias = vars(parse(argv(canonical))), vars(parse(argv(alias)))
    assert by_alias == by_canonical
    changed = [key for key in by_canonical if by_canonical[key] != default[key] and key not in ("save",)]
    assert changed, f"{canonical} {value} changed nothing"


@pytest.mark.parametrize("module", [train_teacher, train_student, clip_train, clip_teacher], ids=lambda m: m.__name__)
def test_every_flag_is_hyphenated_or_a_kept_spelling_and_has_help(module):
    parser = module.build_parser()
    assert "per process" in " ".join(parser.format_help().split())  # --batch-size says what it counts
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help"
        canonical = action.option_strings[0]
        # The LLM command line's own spellings are kept as they are.
        assert "_" not in canonical or canonical in ("--ab_alpha", "--ab_beta", "--deepspeed_config"), canonical
