"""Collation, batch sampling and learning-rate schedules of the LLM loop."""

import math

import pytest
import torch

from abkd.sampling import GlobalBatchSampler
from abkd.schedules import lr_multiplier
from distillation_llm.data import InstructionCollator, LMCollator


def test_collator_puts_labels_on_response_tokens_only():
    rows = [
        {"id": 7, "prompt_ids": [11, 12, 13], "response_ids": [21, 22, 2]},
        {"id": 9, "prompt_ids": [14], "response_ids": [23, 2]},
    ]
    batch = InstructionCollator(pad_token_id=0, max_length=10)(rows)
    assert batch["input_ids"].tolist() == [[11, 12, 13, 21, 22, 2], [14, 23, 2, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]
    # Position t predicts token t + 1: the last prompt position predicts the first response token.
    assert batch["labels"].tolist() == [[-100, -100, 21, 22, 2, -100], [23, 2, -100, -100, -100, -100]]
    assert batch["ids"].tolist() == [7, 9]


def test_collator_truncates_to_max_length():
    rows = [{"id": 0, "prompt_ids": [1, 2], "response_ids": [3, 4, 5, 6]}]
    batch = InstructionCollator(pad_token_id=0, max_length=4)(rows)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4]]
    assert batch["labels"].tolist() == [[-100, 3, 4, -100]]


def test_lm_collator_predicts_every_next_token():
    batch = LMCollator()([{"input_ids": [5, 6, 7]}])
    assert batch["labels"].tolist() == [[6, 7, -100]]


def _steps(sampler):
    micro = list(sampler)
    return [micro[i : i + sampler.grad_accum] for i in range(0, len(micro), sampler.grad_accum)]


def test_sampler_layout_invariance():
    """2 processes x 1 accumulation see the micro-batches of 1 process x 2 accumulation steps."""
    one = _steps(GlobalBatchSampler(23, 3, 2, world=1, rank=0, seed=5))
    rank0 = _steps(GlobalBatchSampler(23, 3, 1, world=2, rank=0, seed=5))
    rank1 = _steps(GlobalBatchSampler(23, 3, 1, world=2, rank=1, seed=5))
    assert len(one) == len(rank0) == 3  # 23 // 6
    for step_one, step0, step1 in zip(one, rank0, rank1):
        assert step_one == [step0[0], step1[0]]


def test_sampler_epochs_are_permutations_and_differ():
    sampler = GlobalBatchSampler(20, 2, 1, world=2, rank=0, seed=1)
    other = GlobalBatchSampler(20, 2, 1, world=2, rank=1, seed=1)
    seen = {}
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        other.set_epoch(epoch)
        seen[epoch] = [i for batch in list(sampler) + list(other) for i in batch]
        assert sorted(seen[epoch]) == list(range(20))
    assert seen[0] != seen[1]
    assert sampler.dropped == 0


def test_sampler_resumes_mid_epoch_and_counts_dropped():
    sampler = GlobalBatchSampler(11, 2, 2, world=1, rank=0, seed=3)
    assert sampler.steps_per_epoch == 2 and sampler.dropped == 3
    sampler.set_epoch(4)
    full = list(sampler)
    sampler.set_epoch(4, skip_steps=1)
    assert list(sampler) == full[2:]
    assert len(sampler) == 2
    with pytest.raises(ValueError, match="fewer than one global batch"):
        GlobalBatchSampler(3, 2, 2, world=1, rank=0, seed=0)


def test_lr_schedules():
    kwargs = dict(warmup=4, total=14)
    assert [lr_multiplier(s, style="constant", **kwargs) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_multiplier(4, style="linear", **kwargs) == 1.0
    assert lr_multiplier(9, style="linear", **kwargs) == pytest.approx(0.5)
    assert lr_multiplier(14, style="linear", **kwargs) == 0.0
    assert lr_multiplier(9, style="cosine", **kwargs) == pytest.approx(0.5)
    assert lr_multiplier(6.5, style="cosine", **kwargs) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_multiplier(14, style="cosine", min_ratio=0.1, **kwargs) == pytest.approx(0.1)
    assert lr_multiplier(99, style="cosine", **kwargs) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="valid: constant, cosine, linear"):
        lr_multiplier(0, style="step", **kwargs)


def test_lr_schedule_drives_the_optimizer():
    from abkd.schedules import build_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = build_scheduler(optimizer, warmup=2, total=4, style="linear")
    lrs = []
    for _ in range(4):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([1.0, 2.0, 2.0, 1.0])


def test_instruction_data_of_an_older_format_is_refused(tmp_path):
    import json

    from distillation_llm.data import INSTRUCTION_FORMAT_VERSION, load_processed

    # Version 1 chose the valid split at random, kept prompts' ends and tokenised responses alone.
    (tmp_path / "meta.json").write_text(json.dumps({"format_version": 1, "max_prompt_length": 256}))
    with pytest.raises(ValueError, match="older tools.process_data_dolly .*re-process it with --overwrite"):
        load_processed(tmp_path)
    assert INSTRUCTION_FORMAT_VERSION == 2
