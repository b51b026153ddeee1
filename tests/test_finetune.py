"""End-to-end runs of distillation_llm.finetune on tiny models through the real DeepSpeed engine."""

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import multiprocess_env, write_instruction_jsonl
from safetensors.torch import load_file

from distillation_llm import finetune

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def processed_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    from tools import process_data_dolly

    root = tmp_path_factory.mktemp("dolly")
    write_instruction_jsonl(root / "raw" / "raw.jsonl", 80, seed=1)
    out = root / "processed"
    process_data_dolly.main([
        "--data-dir", str(root / "raw"), "--processed-data-dir", str(out), "--model-path", str(tiny_tokenizer_dir),
        "--max-prompt-length", "64", "--max-length", "96", "--dev-num", "8",
    ])
    return out


def _argv(save, data, student, teacher=None, *extra):
    argv = [
        "--model-path", str(student), "--data-dir", str(data), "--save", str(save), "--do-train",
        "--batch-size", "4", "--lr", "5e-3", "--warmup-iters", "1", "--log-interval", "1", "--seed", "3",
    ]
    if teacher is not None:
        argv += ["--teacher-model-path", str(teacher)]
    return argv + [str(x) for x in extra]


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


def _changed(before: dict, after: dict) -> float:
    return max((after[k].float() - before[k].float()).abs().max().item() for k in before)


@pytest.mark.parametrize(
    "kind,extra",
    [
        ("sft", ["--type", "sft"]),
        ("kd", ["--type", "kd", "--kd-ratio", "0.5"]),
        ("ab", ["--type", "ab", "--ab_alpha", "0.2", "--ab_beta", "0.7", "--kd-ratio", "1.0", "--kd-temperature", "2.0"]),
        ("srkl", ["--type", "srkl", "--skew-alpha", "0.1", "--kd-ratio", "0.7"]),
    ],
)
def test_types_train_and_reload(tmp_path, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, kind, extra):
    from transformers import AutoModelForCausalLM

    teacher = None if kind == "sft" else tiny_gpt2_teacher_dir
    save = tmp_path / kind
    finetune.main(_argv(save, processed_dir, tiny_gpt2_dir, teacher, "--total-iters", 4, "--do-valid", "--eval-interval", 2, *extra))

    log = (save / "log.txt").read_text()
    losses = [float(line.split("| loss ")[1].split()[0]) for line in log.splitlines() if "train step" in line]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    kd_values = [float(line.split("| kd ")[1].split()[0]) for line in log.splitlines() if "train step" in line]
    if kind == "sft":
        assert all(v == 0.0 for v in kd_values)
    else:
        assert all(v > 0.0 for v in kd_values)  # the divergence is really computed
    before, after = _weights(tiny_gpt2_dir), _weights(save / "4")
    assert _changed(before, after) > 1e-4
    reloaded = AutoModelForCausalLM.from_pretrained(save / "4")
    for name, tensor in reloaded.state_dict().items():
        if name in after:
            torch.testing.assert_close(tensor, after[name])
    args = json.loads((save / "args.json").read_text())
    assert args["type"] == kind and args["total_iters"] == 4
    best = json.loads((save / "best" / "best.json").read_text())
    assert best["step"] in (2, 4) and (save / "best" / "model.safetensors").is_file()


def test_opt_and_llama_students(tmp_path, processed_dir, tiny_opt_dir, tiny_llama_dir, tiny_gpt2_teacher_dir):
    """Other families go through the fused head path too (OPT: project_out; Llama: untied head)."""
    for name, student in (("opt", tiny_opt_dir), ("llama", tiny_llama_dir)):
        save = tmp_path / name
        finetune.main(_argv(save, processed_dir, student, tiny_gpt2_teacher_dir, "--type", "fkl", "--total-iters", 2))
        assert _changed(_weights(student), _weights(save / "2")) > 1e-4
        assert "full logits" not in (save / "log.txt").read_text()


def test_kill_and_resume_matches_uninterrupted(tmp_path, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir):
    common = ("--type", "ab", "--ab_alpha", "0.5", "--ab_beta", "0.5", "--total-iters", 6, "--gradient-accumulation-steps", 2)
    finetune.main(_argv(tmp_path / "full", processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, *common))
    interrupted = tmp_path / "interrupted"
    finetune.main(_argv(interrupted, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, *common, "--stop-after-iters", 4))
    assert (interrupted / "4").is_dir() and not (interrupted / "6").exists()
    assert (interrupted / "checkpoints" / "latest").read_text() == "step4"
    # The epoch has 4 steps (80 - 8 dev = 72 examples, global batch 8 -> 9 steps); resume crosses no boundary
    # mid-accumulation, and the data order, optimizer, scheduler and RNG continue exactly.
    finetune.main(_argv(interrupted, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, *common, "--resume"))
    full, resumed = _weights(tmp_path / "full" / "6"), _weights(interrupted / "6")
    for name in full:
        torch.testing.assert_close(resumed[name], full[name], rtol=1e-6, atol=1e-7)
    log = (interrupted / "log.txt").read_text()
    assert "resumed from step4: step 4" in log
    steps = [int(line.split("train step ")[1].split()[0]) for line in log.splitlines() if "train step" in line]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_checkpoint_killed_mid_save_is_never_taken_as_complete(tmp_path, processed_dir, tiny_gpt2_dir):
    save = tmp_path / "run"
    finetune.main(_argv(save, processed_dir, tiny_gpt2_dir, None, "--type", "sft", "--total-iters", 2))
    # Simulate a crash while writing the next checkpoint: a partial directory in the staging area.
    partial = save / "checkpoints" / ".incomplete" / "step3"
    partial.mkdir(parents=True)
    (partial / "mp_rank_00_model_states.pt").write_bytes(b"truncated")
    from abkd.engine import complete_checkpoints, latest_checkpoint

    assert latest_checkpoint(save / "checkpoints") == "step2"
    assert [p.name for p in complete_checkpoints(save / "checkpoints")] == ["step2"]


def test_two_processes_equal_one_process_with_double_accumulation(tmp_path, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir):
    common = _argv(tmp_path / "x", processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, "--type", "rkl", "--total-iters", 3, "--batch-size", 2)
    common = common[: common.index("--save")] + common[common.index("--save") + 2 :]
    env = multiprocess_env(2, PYTHONUNBUFFERED="1")
    # KNOWN, NOT ROOT-CAUSED (2026-11-28): in 2 of 5 full-suite runs this gloo run hung inside
    # DeepSpeed's save_checkpoint at the end of training (the run itself takes ~30 s; it never hung
    # in 6 isolated runs). One retry keeps CI meaningful; a second hang still fails the test.
    for attempt in range(2):
        with socket.socket() as sock:  # a free port, not a fixed one another job may hold
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        shutil.rmtree(tmp_path / "two", ignore_errors=True)
        try:
            two = subprocess.run(
                [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
                 "-m", "distillation_llm.finetune", *common, "--save", str(tmp_path / "two"), "--gradient-accumulation-steps", "1"],
                cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
            )
            break
        except subprocess.TimeoutExpired:
            if attempt == 1:
                raise
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run(
        [sys.executable, "-m", "distillation_llm.finetune", *common, "--save", str(tmp_path / "one"), "--gradient-accumulation-steps", "2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    assert "world size 2" in (tmp_path / "two" / "log.txt").read_text()
    two_weights, one_weights = _weights(tmp_path / "two" / "3"), _weights(tmp_path / "one" / "3")
    assert _changed(_weights(tiny_gpt2_dir), one_weights) > 1e-4
    for name in one_weights:
        torch.testing.assert_close(two_weights[name], one_weights[name], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Bad input gives the documented errors.
# ---------------------------------------------------------------------------------------------


def _error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        finetune.main(argv)
    assert exit_info.value.code != 0
    return capsys.readouterr().err


def test_unknown_and_unsupported_types(tmp_path, capsys, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir):
    err = _error(capsys, _argv(tmp_path, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, "--type", "kl", "--total-iters", 1))
    assert "--type kl: supported values are sft, init, kd, fkl, rkl, jsd, tvd, sfkl, srkl, ab" in err
    err = _error(capsys, _argv(tmp_path, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, "--type", "pocl", "--total-iters", 1))
    assert "--type pocl (POCL is a curriculum: use --curriculum pocl with any divergence type)" in err
    err = _error(capsys, _argv(tmp_path, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, "--type", "minillm", "--no-student-gen", "--total-iters", 1))
    assert "--type minillm trains on its rollouts: drop --no-student-gen" in err
    err = _error(capsys, _argv(tmp_path, processed_dir, tiny_gpt2_dir, None, "--type", "ab", "--ab_alpha", "1", "--ab_beta", "0", "--total-iters", 1))
    assert "give --teacher-model-path" in err
    err = _error(capsys, _argv(tmp_path, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, "--type", "ab", "--total-iters", 1))
    assert "--type ab needs both --ab_alpha and --ab_beta" in err


def test_missing_model_path(tmp_path, capsys, processed_dir):
    err = _error(capsys, _argv(tmp_path, processed_dir, tmp_path / "nope", None, "--type", "sft", "--total-iters", 1))
    assert f"--model-path {tmp_path / 'nope'}: not a local model directory" in err


def test_vocabulary_mismatch(tmp_path, processed_dir, tiny_gpt2_dir):
    from distillation_llm.toy import make_causal_lm, train_bpe_tokenizer

    other_tokenizer = train_bpe_tokenizer(["completely different text " * 20, "zebra quantum lattice"], tmp_path / "tok", vocab_size=300)
    make_causal_lm("gpt2", tmp_path / "other_teacher", other_tokenizer, hidden_size=32, num_layers=1, num_heads=2)
    with pytest.raises(SystemExit, match="error: --teacher-model-path .*: student and teacher tokenizers differ: token .* token-level distillation needs a shared vocabulary"):
        finetune.main(_argv(tmp_path / "run", processed_dir, tiny_gpt2_dir, tmp_path / "other_teacher", "--type", "kd", "--total-iters", 1))


def test_language_modelling_loss_is_mixed_in(tmp_path, processed_dir, tiny_tokenizer_dir, tiny_gpt2_dir):
    from tools import process_data_pretrain

    corpus = tmp_path / "corpus" / "data.txt"
    corpus.parent.mkdir()
    corpus.write_text("".join(f"the quick {w} fox<@x(x!>jumps over the lazy dog {i}\n" for i, w in enumerate(["red", "blue", "green"] * 30)))
    lm_dir = tmp_path / "lm"
    process_data_pretrain.main([
        "--data-dir", str(corpus.parent), "--processed-data-dir", str(lm_dir), "--model-path", str(tiny_tokenizer_dir),
        "--max-length", "32", "--dev-num", "2",
    ])
    save = tmp_path / "run"
    finetune.main(_argv(save, processed_dir, tiny_gpt2_dir, None, "--type", "sft", "--total-iters", 2, "--lm-data-dir", lm_dir, "--lm-coef", 0.5))
    for line in (save / "log.txt").read_text().splitlines():
        if "train step" in line:
            loss, ce = (float(line.split(f"| {key} ")[1].split()[0]) for key in ("loss", "ce"))
            assert loss > ce + 0.5  # loss = ce + 0.5 * lm, and the LM loss of an untrained model is several nats


def test_zero2_config_and_model_type_check(tmp_path, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir):
    save = tmp_path / "zero2"
    config = REPO / "configs" / "deepspeed" / "ds_config_zero2.json"
    finetune.main(_argv(save, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, "--type", "jsd", "--total-iters", 2, "--deepspeed_config", config, "--model-type", "gpt2"))
    assert "ZeRO stage 2" in (save / "log.txt").read_text()
    assert _changed(_weights(tiny_gpt2_dir), _weights(save / "2")) > 1e-4
    with pytest.raises(ValueError, match="--model-type opt does not match"):
        finetune.main(_argv(tmp_path / "bad", processed_dir, tiny_gpt2_dir, None, "--type", "sft", "--total-iters", 1, "--model-type", "opt"))


def test_eval_gen_scores_rouge_and_selects_by_it(tmp_path, processed_dir, tiny_gpt2_dir):
    save = tmp_path / "gen"
    finetune.main(_argv(save, processed_dir, tiny_gpt2_dir, None, "--type", "sft", "--total-iters", 2, "--do-valid", "--eval-interval", 1, "--eval-gen", "--max-new-tokens", 6))
    valid_lines = [line for line in (save / "log.txt").read_text().splitlines() if "valid step" in line]
    assert len(valid_lines) == 2 and all("rougeL" in line and "gen_length" in line for line in valid_lines)
    lengths = [float(line.split("gen_length ")[1].split()[0]) for line in valid_lines]
    assert all(0 <= length <= 6 for length in lengths)
    best = json.loads((save / "best" / "best.json").read_text())
    rouges = {int(line.split("valid step ")[1].split()[0]): float(line.split("rougeL ")[1].split()[0]) for line in valid_lines}
    assert best["rougeL"] == pytest.approx(max(rouges.values()), abs=1e-3)
    assert "new best rougeL" in (save / "log.txt").read_text()


def test_validation_loss_is_the_mean_of_batch_means_as_distillm():
    """DistiLLM's `evaluate` averages each batch's token mean over batches: batches [1, 2] and
    [6] give (1.5 + 6) / 2 = 3.75, not the token mean 3."""
    from types import SimpleNamespace

    import torch

    from distillation_llm import finetune

    class Module(torch.nn.Module):
        pass

    def objective(batch):
        return SimpleNamespace(ce=batch["values"].mean(), kd=batch["values"].mean() * 0)

    objective.divergence = None
    engine = SimpleNamespace(module=Module())
    metrics = finetune.validate(
        engine, objective, [1.0, 2.0, 6.0], lambda rows: {"values": torch.tensor(rows)}, None,
        SimpleNamespace(eval_batch_size=2, eval_gen=False), torch.device("cpu"),
    )
    assert metrics == {"valid_loss": 3.75}
    assert engine.module.training


def test_a_nan_validation_loss_never_replaces_best(tmp_path, monkeypatch, processed_dir, tiny_gpt2_dir):
    """Before, NaN >= best was False, so a NaN validation loss replaced a finite best/."""
    validate, calls = finetune.validate, []

    def nan_second(*args, **kwargs):
        metrics = validate(*args, **kwargs)
        calls.append(metrics["valid_loss"])
        return {**metrics, "valid_loss": float("nan")} if len(calls) == 2 else metrics

    monkeypatch.setattr(finetune, "validate", nan_second)
    save = tmp_path / "run"
    finetune.main(_argv(save, processed_dir, tiny_gpt2_dir, None, "--type", "sft", "--total-iters", 2, "--do-valid", "--eval-interval", 1))
    best = json.loads((save / "best" / "best.json").read_text())
    assert len(calls) == 2 and best["step"] == 1 and best["valid_loss"] == calls[0]
    assert "validation valid_loss is nan at step 2: not a candidate for best/" in (save / "log.txt").read_text()


def test_record_best_keeps_nan_out_of_the_stage_best_too(tmp_path):
    """POCL's stage best (what the next stage starts from) ignores a NaN as best/ does."""
    from types import SimpleNamespace

    messages = []
    log = SimpleNamespace(info=messages.append)
    args = SimpleNamespace(eval_gen=False, type="kd")
    (tmp_path / "3").mkdir()
    state = {"best_metric": None, "best_step": None, "stage_best_metric": None, "stage_best_step": None, "stage_best_record": None}
    finetune.record_best(tmp_path, 3, {"valid_loss": float("nan")}, state, args, log)
    assert state["best_step"] is None and state["stage_best_step"] is None and not (tmp_path / "best").exists()
    finetune.record_best(tmp_path, 3, {"valid_loss": 2.0}, state, args, log)
    assert state["best_step"] == 3 and state["stage_best_step"] == 3
    finetune.record_best(tmp_path, 4, {"valid_loss": float("inf")}, state, args, log)
    assert state["best_metric"] == 2.0 and state["stage_best_metric"] == 2.0


def test_a_nan_training_loss_stops_the_run_naming_the_step(tmp_path, monkeypatch, processed_dir, tiny_gpt2_dir):
    forward_train, calls = finetune.Objective.forward_train, []

    def nan_on_step_2(self, *args, **kwargs):
        loss, parts = forward_train(self, *args, **kwargs)
        calls.append(1)
        return (loss * float("nan"), parts) if len(calls) == 2 else (loss, parts)

    monkeypatch.setattr(finetune.Objective, "forward_train", nan_on_step_2)
    save = tmp_path / "run"
    with pytest.raises(FloatingPointError, match=r"training loss is nan at step 2 \(loss nan, ce .*\): stopping"):
        finetune.main(_argv(save, processed_dir, tiny_gpt2_dir, None, "--type", "sft", "--total-iters", 3, "--save-interval", 1))
    assert (save / "1").is_dir() and not (save / "2").exists()  # nothing of the NaN step is saved


def test_zero2_offload_config_trains_as_zero2(tmp_path, processed_dir, tiny_gpt2_dir):
    """configs/deepspeed/ds_config_zero2_offload.json used to fail at start (DeepSpeed refuses a
    torch optimizer with ZeRO-Offload): the optimizer is now DeepSpeed's CPU Adam in AdamW mode,
    whose steps equal torch AdamW's under ZeRO-2. (CPU Adam is compiled on first use: minutes on
    a fresh machine, then cached under ~/.cache/torch_extensions.)"""
    runs = {}
    for name in ("ds_config_zero2.json", "ds_config_zero2_offload.json"):
        save = tmp_path / name
        finetune.main(_argv(save, processed_dir, tiny_gpt2_dir, None, "--type", "sft", "--total-iters", 2, "--weight-decay", 0.1,
                            "--deepspeed_config", REPO / "configs" / "deepspeed" / name))
        runs[name] = _weights(save / "2")
    assert _changed(_weights(tiny_gpt2_dir), runs["ds_config_zero2_offload.json"]) > 1e-4
    assert _changed(runs["ds_config_zero2.json"], runs["ds_config_zero2_offload.json"]) < 1e-5


def test_offload_with_another_optimizer_or_without_cpu_adam_is_one_clear_line(monkeypatch):
    import deepspeed.ops.adam

    from abkd import engine as E

    config = E.load_deepspeed_config(REPO / "configs" / "deepspeed" / "ds_config_zero2_offload.json", micro_batch_size=2, gradient_accumulation_steps=1)
    model = torch.nn.Linear(4, 2)
    with pytest.raises(ValueError, match=r"^--deepspeed_config x.json: ZeRO-Offload .* runs DeepSpeed's CPU Adam only, and this recipe trains with SGD"):
        E.initialize(model, torch.optim.SGD(model.parameters(), lr=0.1), None, config, "--deepspeed_config x.json")

    class Unbuildable:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("Error building extension 'cpu_adam'\nc++: not found")

    monkeypatch.setattr(deepspeed.ops.adam, "DeepSpeedCPUAdam", Unbuildable)
    with pytest.raises(RuntimeError, match=r"^--deepspeed_config x.json: ZeRO-Offload .* could not be built on this machine \(RuntimeError: c\+\+: not found\)"):
        E.adamw([{"params": list(model.parameters())}], 0.1, config, "--deepspeed_config x.json")
    assert type(E.adamw([{"params": list(model.parameters())}], 0.1, {"zero_optimization": {"stage": 2}})) is torch.optim.AdamW
