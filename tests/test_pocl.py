"""POCL end to end: the student ranks the data, and one finetune run walks the Baby Step stages."""

import json

import pytest
import torch
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_post_hook

from distillation_llm import finetune
from distillation_llm import rank_difficulty as curriculum_cli
from distillation_llm.data import InstructionCollator


@pytest.fixture(scope="module")
def processed_dir(tmp_path_factory, tiny_tokenizer_dir):
    from conftest import write_instruction_jsonl

    from tools import process_data_dolly

    root = tmp_path_factory.mktemp("pocl-data")
    write_instruction_jsonl(root / "raw" / "raw.jsonl", 80, seed=4)
    out = root / "processed"
    process_data_dolly.main([
        "--data-dir", str(root / "raw"), "--processed-data-dir", str(out), "--model-path", str(tiny_tokenizer_dir),
        "--max-prompt-length", "64", "--max-length", "96", "--dev-num", "8",
    ])
    return out


@pytest.fixture(scope="module")
def ranking(tmp_path_factory, processed_dir, tiny_gpt2_dir):
    path = tmp_path_factory.mktemp("ranking") / "ranking.jsonl"
    curriculum_cli.main(["rank", "--model-path", str(tiny_gpt2_dir), "--data-dir", str(processed_dir), "--ranking", str(path), "--max-new-tokens", "8", "--batch-size", "16"])
    return path


def test_ranking_covers_the_training_set_in_rrf_order(ranking, processed_dir, tiny_gpt2_dir, capsys):
    import datasets

    rows = [json.loads(line) for line in ranking.read_text().splitlines()]
    train_ids = datasets.load_from_disk(str(processed_dir))["train"]["id"]
    assert sorted(row["id"] for row in rows) == sorted(train_ids)
    for row in rows:
        assert row["score"] == pytest.approx(1 / (60 + row["rank_rouge"]) + 1 / (60 + row["rank_loss"]))
        assert 0.0 <= row["rouge"] <= 1.0 and row["loss"] > 0
    scores = [row["score"] for row in rows]
    assert scores == sorted(scores, reverse=True)
    meta = json.loads(ranking.with_suffix(".meta.json").read_text())
    assert meta["examples"] == len(rows) and meta["rrf_k"] == 60
    # A second request with the same checkpoint and data reuses the ranking.
    capsys.readouterr()
    curriculum_cli.main(["rank", "--model-path", str(tiny_gpt2_dir), "--data-dir", str(processed_dir), "--ranking", str(ranking), "--max-new-tokens", "8", "--batch-size", "16"])
    assert "reusing" in capsys.readouterr().out


def _argv(save, processed_dir, student, teacher, ranking, *extra):
    return [
        "--type", "kd", "--model-path", str(student), "--teacher-model-path", str(teacher), "--data-dir", str(processed_dir),
        "--save", str(save), "--do-train", "--batch-size", "4", "--lr", "5e-3", "--log-interval", "1", "--seed", "3",
        "--curriculum", "pocl", "--ranking", str(ranking), "--num-stages", "3", "--stage-epochs", "1", *map(str, extra),
    ]


class RecordingCollator(InstructionCollator):
    seen: list[list[int]] = []

    def __call__(self, rows):
        RecordingCollator.seen.append([row["id"] for row in rows])
        return super().__call__(rows)


def test_stages_see_only_their_fraction_and_resume_mid_curriculum(tmp_path, monkeypatch, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, ranking):
    ranked = [json.loads(line)["id"] for line in ranking.read_text().splitlines()]  # 72 training examples
    monkeypatch.setattr(finetune, "InstructionCollator", RecordingCollator)
    RecordingCollator.seen = []
    finetune.main(_argv(tmp_path / "full", processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, ranking))

    # Stage sizes (s+1) * floor(72/3) = 24, 48, then all 72 examples -> 6, 12, 18 steps of 4 examples.
    seen = RecordingCollator.seen
    RecordingCollator.seen = []
    assert len(seen) == 36
    stages = [seen[:6], seen[6:18], seen[18:]]
    for stage, (batches, size) in enumerate(zip(stages, (24, 48, 72))):
        ids = [i for batch in batches for i in batch]
        assert sorted(ids) == sorted(ranked[:size]), f"stage {stage} saw examples outside its fraction"
    log = (tmp_path / "full" / "log.txt").read_text()
    for text in ("stage 1/3: easiest 33% (24 examples), kd temperature 1, kd-ratio 0.7",
                 "stage 2/3: easiest 67% (48 examples), kd temperature 1.5, kd-ratio 0.85",
                 "stage 3/3: easiest 100% (72 examples), kd temperature 2, kd-ratio 1",
                 "curriculum finished after 3 stages at step 36"):
        assert text in log

    # Interrupted in the middle of stage 2, then resumed: same stage, same data, same weights.
    interrupted = tmp_path / "interrupted"
    finetune.main(_argv(interrupted, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, ranking, "--stop-after-iters", 10))
    RecordingCollator.seen = []
    finetune.main(_argv(interrupted, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, ranking, "--resume"))
    assert RecordingCollator.seen == seen[10:]
    resumed_log = (interrupted / "log.txt").read_text().split("resumed from step10")[1]
    assert resumed_log.splitlines()[1].endswith("curriculum stage 2/3: easiest 67% (48 examples), kd temperature 1.5, kd-ratio 0.85")
    full, resumed = load_file(tmp_path / "full" / "36" / "model.safetensors"), load_file(interrupted / "36" / "model.safetensors")
    for name in full:
        torch.testing.assert_close(resumed[name], full[name], rtol=1e-6, atol=1e-7)


def test_patience_advances_stages_early(tmp_path, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, ranking):
    save = tmp_path / "patience"
    finetune.main(_argv(save, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, ranking, "--stage-epochs", 5, "--stage-patience", 1, "--do-valid", "--eval-interval", 2, "--lr", "1e-1"))
    log = (save / "log.txt").read_text()
    assert "curriculum finished after 3 stages" in log
    steps = [int(line.split("train step ")[1].split()[0]) for line in log.splitlines() if "train step" in line]
    assert steps[-1] < 5 * (6 + 12 + 18)  # some stage converged before its 5 epochs


def test_ranking_for_another_dataset_is_refused(tmp_path, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, ranking):
    meta = json.loads(ranking.with_suffix(".meta.json").read_text())
    other = tmp_path / "other.jsonl"
    other.write_text(ranking.read_text())
    other.with_suffix(".meta.json").write_text(json.dumps({**meta, "dataset_fingerprint": "something else"}))
    with pytest.raises(ValueError, match="was made for .* not for --data-dir"):
        finetune.main(_argv(tmp_path / "x", processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, other))


def test_each_stage_is_its_own_run_from_the_previous_selection(tmp_path, monkeypatch, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, ranking):
    """POCL's launchers t0..t3: each stage starts from the previous stage's last step (POCL's
    published runs; with --stage-start best from its best validation, here not its last step), with
    a fresh AdamW and a cosine schedule from the peak lr to --lr-min over the stage's own steps; and
    --resume right after a stage boundary continues exactly."""
    from abkd.schedules import lr_multiplier

    # Scripted validation: within a stage the loss grows with the engine's own step count, so each
    # stage selects its first validation (steps 2, 8, 20), never its last step (6, 18, 36).
    def scripted_validate(engine, *args, **kwargs):
        return {"valid_loss": 1.0 + engine.global_steps, "valid_kd": 0.0}

    monkeypatch.setattr(finetune, "validate", scripted_validate)
    starts = []  # the student's weights each time an engine is built
    real_initialize = finetune.E.initialize

    def recording_initialize(model, *args, **kwargs):
        starts.append({name: value.detach().clone() for name, value in model.state_dict().items()})
        return real_initialize(model, *args, **kwargs)

    monkeypatch.setattr(finetune.E, "initialize", recording_initialize)
    steps = []  # (optimizer, lr of the step, AdamW's step count after it)

    def record_step(optimizer, args, kwargs):
        if isinstance(optimizer, torch.optim.AdamW):
            first = optimizer.param_groups[0]["params"][0]
            record = (optimizer, optimizer.param_groups[0]["lr"], int(optimizer.state[first]["step"]))
            if not steps or steps[-1][0] is not optimizer or steps[-1][2] != record[2]:  # ZeRO steps one group at a time
                steps.append(record)

    hook = register_optimizer_step_post_hook(record_step)
    lr, lr_min = 5e-3, 5e-4
    extra = ["--do-valid", "--eval-interval", 2, "--lr-decay-style", "cosine", "--lr-min", lr_min, "--save-interval", -1]
    try:
        full = tmp_path / "full"
        finetune.main(_argv(full, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, ranking, *extra, "--stage-start", "best"))
        full_steps, steps[:] = steps[:], []

        # Fresh optimizer and schedule per stage: 6, 12, 18 steps, AdamW's count restarting at 1, the
        # lr at each stage's first step the peak, then cosine towards --lr-min at the stage's end.
        optimizers = list(dict.fromkeys(optimizer for optimizer, _, _ in full_steps))
        assert len(optimizers) == 3
        for optimizer, length in zip(optimizers, (6, 12, 18)):
            stage = [(step_lr, count) for o, step_lr, count in full_steps if o is optimizer]
            assert [count for _, count in stage] == list(range(1, length + 1))
            expected = [lr * lr_multiplier(i, warmup=0, total=length, style="cosine", min_ratio=lr_min / lr) for i in range(length)]
            assert [step_lr for step_lr, _ in stage] == pytest.approx(expected, rel=1e-6)
            assert stage[0][0] == pytest.approx(lr)
            assert lr * lr_multiplier(length, warmup=0, total=length, style="cosine", min_ratio=lr_min / lr) == pytest.approx(lr_min)

        # Stage 2 starts from stage 1's selection (step 2), not its last step (6); stage 3 from step 8.
        assert len(starts) == 3
        for start, selected, last in zip(starts[1:], (2, 8), (6, 18)):
            saved, final = load_file(full / str(selected) / "model.safetensors"), load_file(full / str(last) / "model.safetensors")
            for name in saved:
                torch.testing.assert_close(start[name], saved[name], rtol=0, atol=0)
            assert any(not torch.equal(saved[name], final[name]) for name in saved)
        for k, selected in enumerate((2, 8, 20), start=1):
            assert json.loads((full / f"best_stage{k}" / f"best_stage{k}.json").read_text())["step"] == selected
        assert json.loads((full / "best" / "best.json").read_text())["step"] == 2  # best/ is the best over all stages
        assert "stage 2 starts from step 2's model (the previous stage's best, --stage-start best) with a fresh AdamW" in (full / "log.txt").read_text()

        # By default (POCL's published runs) each stage starts from the previous stage's last step.
        starts.clear()
        last = tmp_path / "last"
        finetune.main(_argv(last, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, ranking, *extra, "--stop-after-iters", 6))
        steps.clear()
        finetune.main(_argv(last, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, ranking, *extra, "--resume"))
        assert [step_lr for _, step_lr, _ in steps] == pytest.approx([step_lr for _, step_lr, _ in full_steps[6:]], rel=1e-6)
        assert [count for _, _, count in steps] == [count for _, _, count in full_steps[6:]]
        # Engines: stage 1, stage 2 at the boundary before the stop, the resumed run's (built before its
        # checkpoint is loaded), stage 3.
        assert len(starts) == 4
        for start, step in ((starts[1], 6), (starts[3], 18)):
            saved = load_file(last / str(step) / "model.safetensors")
            for name in saved:
                torch.testing.assert_close(start[name], saved[name], rtol=0, atol=0)
        assert "stage 3 starts from step 18's model (the previous stage's last step, --stage-start last)" in (last / "log.txt").read_text()
    finally:
        hook.remove()
    for k in (1, 2, 3):  # the stages' best models are still kept
        assert json.loads((last / f"best_stage{k}" / f"best_stage{k}.json").read_text())["step"] == (2, 8, 20)[k - 1]
    uninterrupted = tmp_path / "uninterrupted"
    finetune.main(_argv(uninterrupted, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, ranking, *extra))
    full_weights, resumed = load_file(uninterrupted / "36" / "model.safetensors"), load_file(last / "36" / "model.safetensors")
    for name in full_weights:
        torch.testing.assert_close(resumed[name], full_weights[name], rtol=1e-6, atol=1e-7)


def test_stage_engines_under_zero3(tmp_path, monkeypatch, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, ranking):
    """ZeRO-3 partitions the student: the next stage's engine is built on the partitioned model
    (same AdamW groups, the selected weights gathered in), and --resume at the boundary is exact."""
    from pathlib import Path

    import deepspeed

    monkeypatch.setattr(finetune, "validate", lambda engine, *args, **kwargs: {"valid_loss": 1.0 + engine.global_steps, "valid_kd": 0.0})
    starts = []
    real_initialize = finetune.E.initialize

    def recording_initialize(model, *args, **kwargs):
        with deepspeed.zero.GatheredParameters(list(model.parameters())) if hasattr(next(model.parameters()), "ds_id") else torch.no_grad():
            starts.append({name: value.detach().clone() for name, value in model.state_dict().items()})
        return real_initialize(model, *args, **kwargs)

    monkeypatch.setattr(finetune.E, "initialize", recording_initialize)
    config = Path(finetune.__file__).resolve().parents[1] / "configs" / "deepspeed" / "ds_config_zero3.json"
    # stages of 9 and 18 steps; --stage-start best loads the selected (not the last) weights into the partitioned model
    extra = ["--do-valid", "--eval-interval", 2, "--num-stages", 2, "--deepspeed_config", config, "--stage-start", "best"]
    full = tmp_path / "full"
    finetune.main(_argv(full, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, ranking, *extra))
    assert len(starts) == 2
    selected, final = load_file(full / "2" / "model.safetensors"), load_file(full / "27" / "model.safetensors")
    for name in selected:
        torch.testing.assert_close(starts[1][name], selected[name], rtol=0, atol=0)
    assert any(not torch.equal(final[name], selected[name]) for name in selected)
    interrupted = tmp_path / "interrupted"
    finetune.main(_argv(interrupted, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, ranking, *extra, "--stop-after-iters", 9))
    finetune.main(_argv(interrupted, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, ranking, *extra, "--resume"))
    resumed = load_file(interrupted / "27" / "model.safetensors")
    for name in final:
        torch.testing.assert_close(resumed[name], final[name], rtol=1e-6, atol=1e-7)


def test_a_ranking_with_an_id_twice_and_one_missing_is_refused(tmp_path, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, ranking):
    """Same length, every id known: only the duplicate (and the example it displaces) is wrong.
    Before, such a ranking trained one example twice per epoch and another never."""
    lines = ranking.read_text().splitlines()
    bad = tmp_path / "ranking.jsonl"
    bad.write_text("\n".join([*lines[:-1], lines[0]]) + "\n")
    bad.with_suffix(".meta.json").write_text(ranking.with_suffix(".meta.json").read_text())
    with pytest.raises(ValueError, match=rf"{bad}:{len(lines)}: id {json.loads(lines[0])['id']} is ranked twice \(first at line 1\)"):
        finetune.main(_argv(tmp_path / "run", processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, bad))
    bad.write_text("\n".join(lines[:-1]) + "\n")  # one example never ranked
    with pytest.raises(ValueError, match=rf"--ranking {bad} ranks {len(lines) - 1} of the {len(lines)} training examples: 1 are missing \(ids {json.loads(lines[-1])['id']}\)"):
        finetune.main(_argv(tmp_path / "run2", processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, bad))
