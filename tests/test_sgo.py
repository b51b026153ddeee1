"""Student-generated outputs (ImitKD, GKD, DistiLLM), SeqKD data and LoRA students, on tiny models."""

import json

import pytest
import torch
from safetensors.torch import load_file

from distillation_llm import finetune
from distillation_llm.data import InstructionCollator
from distillation_llm.generation import GenerationSettings
from distillation_llm.sources import AdaptiveThreshold, StudentGeneratedSource, fresh_share


@pytest.fixture(scope="module")
def processed_dir(tmp_path_factory, tiny_tokenizer_dir):
    from conftest import write_instruction_jsonl

    from tools import process_data_dolly

    root = tmp_path_factory.mktemp("sgo-data")
    write_instruction_jsonl(root / "raw" / "raw.jsonl", 40, seed=7)
    out = root / "processed"
    process_data_dolly.main([
        "--data-dir", str(root / "raw"), "--processed-data-dir", str(out), "--model-path", str(tiny_tokenizer_dir),
        "--max-prompt-length", "48", "--max-length", "64", "--dev-num", "8",
    ])
    return out


def _argv(save, data, student, teacher, *extra):
    argv = [
        "--model-path", str(student), "--data-dir", str(data), "--save", str(save), "--do-train", "--batch-size", "4",
        "--lr", "5e-3", "--log-interval", "1", "--seed", "3", "--max-length", "64", "--max-prompt-length", "48",
    ]
    return argv + (["--teacher-model-path", str(teacher)] if teacher else []) + [str(x) for x in extra]


def _changed(before, after):
    return max((after[k].float() - before[k].float()).abs().max().item() for k in before)


# ---------------------------------------------------------------------------------------------
# The adaptive threshold and the replay buffer, on their own.
# ---------------------------------------------------------------------------------------------


def test_threshold_follows_the_distillm_rule():
    # DistiLLM finetune.py: prev = evaluate(step 0); at each evaluation, if curr >= prev + eps the
    # threshold rises by 0.1 and prev = curr; otherwise prev stays (the loss at the last increase).
    # Binary-exact losses and eps, so that ">=" is tested at equality.
    threshold = AdaptiveThreshold(initial=0.2, loss_eps=0.25)
    scripted = [
        (2.0, 0.2),  # step 0: the reference, no change
        (2.125, 0.2),  # below 2.0 + 0.25
        (2.25, 0.3),  # equal to 2.0 + 0.25: ">=" raises (a strict ">" would not); reference 2.25
        (2.0, 0.3),  # better: the reference stays 2.25
        (2.375, 0.3),  # 2.375 >= 2.0 + 0.25 (previous validation) but < 2.25 + 0.25 (last increase)
        (2.5, 0.4),  # 2.25 + 0.25: raises; reference 2.5
    ]
    for loss, expected in scripted:
        assert threshold.update(loss) == pytest.approx(expected)
    assert threshold.reference_loss == 2.5
    capped = AdaptiveThreshold(initial=0.95, loss_eps=0.0)
    capped.update(1.0), capped.update(2.0), capped.update(3.0)
    assert capped.value == 1.0
    restored = AdaptiveThreshold(0.0, 0.25)
    restored.load_state_dict(threshold.state_dict())
    assert restored.update(2.625) == pytest.approx(0.4) and restored.update(2.75) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="--init-threshold"):
        AdaptiveThreshold(1.5, 0.1)


def test_fresh_share_schedules():
    # DistiLLM's samp_threshold / adaptive_threshold: constant 0.5, increasing step/T, decreasing 1 - step/T.
    assert [fresh_share("constant", p) for p in (0.0, 0.5, 1.0)] == [0.5, 0.5, 0.5]
    assert [fresh_share("increasing", p) for p in (0.0, 0.25, 1.0)] == [0.0, 0.25, 1.0]
    assert [fresh_share("decreasing", p) for p in (0.0, 0.25, 1.0)] == [1.0, 0.75, 0.0]
    with pytest.raises(ValueError, match="valid: constant, increasing, decreasing"):
        fresh_share("cosine", 0.5)


def _source(threshold, capacity, fresh, seed=1):
    return StudentGeneratedSource(
        InstructionCollator(0, 16), model=None, tokenizer=None, settings=GenerationSettings(), max_prompt_length=8,
        threshold=threshold, capacity=capacity, fresh=fresh, seed=seed,
    )


def test_one_draw_decides_the_origin_as_in_distillm():
    # threshold 0.8, "decreasing" at progress 0.25: samp_threshold = 0.8 x 0.75 = 0.6. A draw r
    # generates if r < 0.6, or if r < 0.8 while the buffer is not full; replays if 0.6 <= r < 0.8
    # with a full buffer; else takes the dataset batch.
    source = _source(0.8, capacity=3, fresh=lambda progress: fresh_share("decreasing", progress))
    draws = iter([0.9, 0.5, 0.7, 0.7, 0.7, 0.5, 0.85, 0.65])
    source.rng.random = lambda: next(draws)
    assert [source.choose(2, 0.25) for _ in range(3)] == ["dataset", "generated", "generated"]
    source.buffer.extend({"id": i, "prompt_ids": [1], "response_ids": [2]} for i in range(2))
    assert source.choose(2, 0.25) == "generated"  # 0.7, but 2 of 3: replay waits for a full buffer
    source.buffer.append({"id": 2, "prompt_ids": [1], "response_ids": [2]})
    assert [source.choose(2, 0.25) for _ in range(3)] == ["replayed", "generated", "dataset"]
    assert source.choose(2, 0.25) == "replayed"


@pytest.mark.parametrize("probability", [0.3, 1.0])
def test_replay_share_grows_with_decreasing(probability):
    source = _source(probability, capacity=10, fresh=lambda progress: fresh_share("decreasing", progress))
    source.buffer.extend({"id": i, "prompt_ids": [1], "response_ids": [2]} for i in range(10))
    for progress in (0.2, 0.8):
        origins = [source.choose(4, progress) for _ in range(4000)]
        student = [origin for origin in origins if origin != "dataset"]
        assert len(student) / 4000 == pytest.approx(probability, abs=0.03)
        assert student.count("replayed") / len(student) == pytest.approx(progress, abs=0.05)


def _fake_generation(monkeypatch, responses):
    """sources.generate returning `responses` (continuations without EOS, as generation.py does)."""
    from types import SimpleNamespace

    from distillation_llm import sources

    calls = iter(responses)
    monkeypatch.setattr(sources, "generate", lambda model, tokenizer, prompts, settings, **kwargs: SimpleNamespace(token_ids=next(calls)))


def test_gkd_and_imitkd_train_on_random_buffer_batches(monkeypatch):
    # DistiLLM's mixed-* types: move_to_memory(generation), then train on replay_buffer.sample().
    _fake_generation(monkeypatch, [[[5], [6]], [[7], [8]], [[9], [10]]])
    tokenizer = type("Tokenizer", (), {"eos_token_id": 0})()
    rows = [{"id": 0, "prompt_ids": [1], "response_ids": [3]}, {"id": 1, "prompt_ids": [2], "response_ids": [3]}]
    source = StudentGeneratedSource(
        InstructionCollator(0, 16), None, tokenizer, GenerationSettings(max_new_tokens=4), max_prompt_length=8, threshold=1.0, capacity=4, seed=0,
    )
    trained = [source(rows)["input_ids"][:, 1].tolist() for _ in range(3)]
    assert sorted(trained[0]) == [5, 6]  # the buffer holds just this generation
    assert [row["response_ids"][0] for row in source.buffer] == [7, 8, 9, 10]  # FIFO of capacity 4
    drawn = {token for batch in trained[1:] for token in batch}
    assert drawn <= {5, 6, 7, 8, 9, 10} and drawn - {7, 8, 9, 10} <= {5, 6}
    assert source.counts == {"dataset": 0, "generated": 3, "replayed": 0}

    _fake_generation(monkeypatch, [[[5], [6]], [[7], [8]]])
    fresh_only = StudentGeneratedSource(
        InstructionCollator(0, 16), None, tokenizer, GenerationSettings(max_new_tokens=4), max_prompt_length=8, threshold=1.0, capacity=0,
    )
    assert [fresh_only(rows)["input_ids"][:, 1].tolist() for _ in range(2)] == [[5, 6], [7, 8]]


def test_student_generated_labels_are_next_tokens_on_real_token_ids(monkeypatch, tiny_tokenizer):
    # Row 12 of the reference comparison: DistiLLM's SampleGenerator writes the response ids at
    # their own positions (no_model_batch[i, len(prompt):len(prompt + response)] = response) and
    # its loss does not shift logits, and it strips pad = EOS. Our dataset batches (like the
    # reference's own dataset collate) put at position t the token t + 1. A student sample must be
    # trained exactly like a dataset row with the same response, EOS included.
    prompt = tiny_tokenizer("Name a colour.")["input_ids"]
    answer = tiny_tokenizer(" Red, like a fox.")["input_ids"]
    eos = tiny_tokenizer.eos_token_id
    row = {"id": 0, "prompt_ids": prompt, "response_ids": answer + [eos]}
    collate = InstructionCollator(tiny_tokenizer.pad_token_id, 64)
    _fake_generation(monkeypatch, [[answer]])
    source = StudentGeneratedSource(collate, None, tiny_tokenizer, GenerationSettings(max_new_tokens=32), max_prompt_length=48, threshold=1.0)
    generated = source([{"id": 0, "prompt_ids": prompt, "response_ids": [eos]}])
    from_data = collate([row])
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(generated[key], from_data[key])
    input_ids, labels = generated["input_ids"][0], generated["labels"][0]
    targets = labels != -100
    positions = targets.nonzero().flatten()
    assert positions[0] == len(prompt) - 1  # the last prompt token predicts the first answer token
    assert torch.equal(labels[positions[:-1]], input_ids[positions[:-1] + 1])  # next token everywhere
    assert tiny_tokenizer.decode(labels[targets]) == " Red, like a fox." + tiny_tokenizer.eos_token
    # The reference's layout: the label at each response position is the token already read
    # there, so its CE asks the model to copy its input (and it never sees the EOS).
    reference = torch.full_like(input_ids, -100)
    reference[len(prompt) : len(prompt) + len(answer)] = torch.tensor(answer)
    span = reference != -100
    assert torch.equal(reference[span], input_ids[span])


# ---------------------------------------------------------------------------------------------
# Every type trains through the real engine.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind,extra",
    [
        ("imitkd", ["--type", "imitkd", "--kd-ratio", "1.0"]),
        ("gkd", ["--type", "gkd", "--mixed-alpha", "0.5", "--gkd-beta", "0.5", "--kd-ratio", "1.0"]),
        ("distillm", ["--type", "distillm", "--init-threshold", "0.5", "--do-valid", "--eval-interval", "2", "--capacity", "8"]),
        ("adaptive-sfkl", ["--type", "adaptive-sfkl", "--init-threshold", "1.0", "--do-valid", "--replay-ratio", "increasing"]),
    ],
)
def test_student_generated_types_train(tmp_path, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, kind, extra):
    save = tmp_path / kind
    finetune.main(_argv(save, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, "--total-iters", 4, *extra))
    assert _changed(load_file(tiny_gpt2_dir / "model.safetensors"), load_file(save / "4" / "model.safetensors")) > 1e-4
    state = torch.load(save / "checkpoints" / "step4" / "rank_state_0.pt", weights_only=True)["rank_state"]["source"]
    counts = state["counts"]
    assert sum(counts.values()) == 4
    if kind == "imitkd" or kind == "adaptive-sfkl":
        assert counts["dataset"] == 0  # every batch is the student's own
    generated = [row for row in state["buffer"]]
    if kind in ("distillm", "adaptive-sfkl"):
        assert len(generated) > 0 and all(row["response_ids"] for row in generated)
    if kind == "distillm":
        assert "threshold" in state and 0.5 <= state["threshold"]["value"] <= 1.0
        assert "student-generated batch probability" in (save / "log.txt").read_text()


def test_distillm_resume_restores_buffer_and_threshold(tmp_path, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir):
    common = ("--type", "distillm", "--init-threshold", "0.6", "--do-valid", "--eval-interval", "1", "--loss-eps", "-1", "--capacity", "12", "--total-iters", 6)
    finetune.main(_argv(tmp_path / "full", processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, *common))
    interrupted = tmp_path / "interrupted"
    finetune.main(_argv(interrupted, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, *common, "--stop-after-iters", 3))
    saved = torch.load(interrupted / "checkpoints" / "step3" / "rank_state_0.pt", weights_only=True)["rank_state"]["source"]
    # loss-eps -1 makes every evaluation after the one at step 0 (which sets the reference) count
    # as "worse": the evaluations at steps 1, 2 and 3 raised the threshold three times.
    assert saved["threshold"]["value"] == pytest.approx(0.9)
    finetune.main(_argv(interrupted, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, *common, "--resume"))
    full = torch.load(tmp_path / "full" / "checkpoints" / "step6" / "rank_state_0.pt", weights_only=True)["rank_state"]["source"]
    resumed = torch.load(interrupted / "checkpoints" / "step6" / "rank_state_0.pt", weights_only=True)["rank_state"]["source"]
    assert resumed["buffer"] == full["buffer"] and resumed["counts"] == full["counts"]
    assert resumed["threshold"] == full["threshold"]
    a, b = load_file(tmp_path / "full" / "6" / "model.safetensors"), load_file(interrupted / "6" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# SeqKD: the teacher writes the targets, and the student trains on them.
# ---------------------------------------------------------------------------------------------


def test_seqkd_data_generation_and_training(tmp_path, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, tiny_tokenizer):
    import datasets

    from tools import generate_data_seqkd

    out = tmp_path / "seqkd"
    generate_data_seqkd.main([
        "--model-path", str(tiny_gpt2_teacher_dir), "--data-dir", str(processed_dir), "--processed-data-dir", str(out),
        "--max-new-tokens", "12", "--batch-size", "8", "--max-prompt-length", "48",
    ])
    source, generated = datasets.load_from_disk(str(processed_dir)), datasets.load_from_disk(str(out))
    assert generated["train"]["prompt_ids"] == source["train"]["prompt_ids"]
    assert generated["train"]["id"] == source["train"]["id"]
    assert generated["valid"]["response_ids"] == source["valid"]["response_ids"]  # validation stays real
    assert generated["train"]["response_ids"] != source["train"]["response_ids"]
    for response in generated["train"]["response_ids"]:
        assert 1 <= len(response) <= 12  # at most max-new-tokens: a stopped answer ends in EOS, a cut one hits the cap
        assert response[-1] == tiny_tokenizer.eos_token_id or len(response) == 12
    meta = json.loads((out / "meta.json").read_text())
    assert meta["seqkd"]["teacher"].endswith(tiny_gpt2_teacher_dir.name) and meta["vocab_size"] == len(tiny_tokenizer)

    save = tmp_path / "student"
    finetune.main(_argv(save, out, tiny_gpt2_dir, None, "--type", "seqkd", "--total-iters", 3))
    assert _changed(load_file(tiny_gpt2_dir / "model.safetensors"), load_file(save / "3" / "model.safetensors")) > 1e-4


# ---------------------------------------------------------------------------------------------
# LoRA students and LoRA teachers.
# ---------------------------------------------------------------------------------------------


def test_lora_trains_only_adapters_and_reloads(tmp_path, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    save = tmp_path / "lora"
    finetune.main(_argv(save, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, "--type", "kd", "--total-iters", 3, "--peft", "lora", "--peft-lora-r", 4, "--lr", "5e-2"))
    adapter = save / "3"
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "model.safetensors").exists()
    adapter_weights = load_file(adapter / "adapter_model.safetensors")
    assert adapter_weights and all("lora_" in name for name in adapter_weights)
    assert any(tensor.abs().max() > 0 for name, tensor in adapter_weights.items() if "lora_B" in name)  # B starts at 0

    base = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    reloaded = PeftModel.from_pretrained(base, str(adapter))
    merged = reloaded.merge_and_unload()
    changed = [k for k, v in merged.state_dict().items() if not torch.equal(v, original[k])]
    assert changed and all(k.endswith(("c_attn.weight",)) for k in changed)  # only the adapted projections moved

    # The adapter also serves as a LoRA-tuned teacher, merged for inference.
    teacher_run = tmp_path / "from-lora-teacher"
    finetune.main(_argv(teacher_run, processed_dir, tiny_gpt2_dir, tiny_gpt2_dir, "--type", "fkl", "--total-iters", 1, "--teacher-peft-path", adapter))
    assert f"merged the teacher's LoRA adapter {adapter} (3)" in (teacher_run / "log.txt").read_text()

    # --peft-path continues training the saved adapter (DistiLLM's --peft-path): at a negligible
    # learning rate the next adapter is the loaded one, whose lora_B is far from a fresh zero init.
    resumed = tmp_path / "from-lora-student"
    finetune.main(_argv(
        resumed, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, "--type", "kd", "--total-iters", 1, "--peft", "lora", "--peft-lora-r", 4,
        "--peft-path", adapter, "--peft-name", "lora-step3", "--lr", "1e-12",
    ))
    assert f"student LoRA adapter lora-step3 loaded from {adapter}" in (resumed / "log.txt").read_text()
    continued = load_file(resumed / "1" / "adapter_model.safetensors")
    assert continued.keys() == adapter_weights.keys()
    for name, tensor in adapter_weights.items():
        torch.testing.assert_close(continued[name], tensor, atol=1e-6, rtol=0)


def test_student_samples_need_room_after_the_prompt(tmp_path, capsys, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir):
    with pytest.raises(SystemExit):
        finetune.main(_argv(tmp_path, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, "--type", "gkd", "--total-iters", 1, "--max-prompt-length", "64"))
    assert "need --max-length (64) > --max-prompt-length (64)" in capsys.readouterr().err
