"""POCL ranking (reciprocal rank fusion) and the Baby Step scheduler on hand-checkable examples."""

import pytest
import torch

from abkd.pocl import BabyStepScheduler, fractional_ranks, reciprocal_rank_fusion


def test_fractional_ranks_share_ties():
    assert fractional_ranks([0.9, 0.1, 0.5, 0.5], descending=True) == [1.0, 4.0, 2.5, 2.5]
    assert fractional_ranks([3.0, 1.0, 2.0], descending=False) == [3.0, 1.0, 2.0]
    assert fractional_ranks([7.0, 7.0, 7.0], descending=False) == [2.0, 2.0, 2.0]


def test_reciprocal_rank_fusion_by_hand():
    ids = [10, 11, 12, 13]
    rouge = [0.9, 0.1, 0.5, 0.5]  # ranks (higher easier): 1, 4, 2.5, 2.5
    loss = [1.0, 3.0, 0.5, 2.0]  # ranks (lower easier):  2, 4, 1, 3
    ranked = reciprocal_rank_fusion(ids, rouge, loss, k=60, ties="mean")
    expected = {
        10: 1 / 61 + 1 / 62,
        11: 1 / 64 + 1 / 64,
        12: 1 / 62.5 + 1 / 61,
        13: 1 / 62.5 + 1 / 63,
    }
    assert [e.id for e in ranked] == [10, 12, 13, 11]
    for example in ranked:
        assert example.score == pytest.approx(expected[example.id], rel=1e-12)
    assert {e.id: (e.rank_rouge, e.rank_loss) for e in ranked} == {10: (1, 2), 11: (4, 4), 12: (2.5, 1), 13: (2.5, 3)}


def test_sequential_ranks_follow_pocl_rank_py():
    # POCL tools/rank.py: sorted(by Rouge_L, reverse=True) -> ranks 1..N; that list sorted by
    # lm_loss -> ranks 1..N; that list sorted by the score, reverse=True. Python sorts are stable.
    ids = [10, 11, 12, 13]
    rouge = [0.9, 0.1, 0.5, 0.5]  # by ROUGE-L: 10, 12, 13 (12 before 13: data order), 11
    loss = [1.0, 3.0, 0.5, 0.5]  # that list by loss: 12, 13 (12 first: ROUGE-L order), 10, 11
    ranked = reciprocal_rank_fusion(ids, rouge, loss, k=60)
    assert {e.id: (e.rank_rouge, e.rank_loss) for e in ranked} == {10: (1, 3), 11: (4, 4), 12: (2, 1), 13: (3, 2)}
    assert [e.id for e in ranked] == [12, 10, 13, 11]  # 1/61+1/62 > 1/61+1/63 > 1/62+1/63 > 2/64
    assert ranked[0].score == pytest.approx(1 / 61 + 1 / 62, rel=1e-12)
    # Equal scores keep the loss-sorted order (the last stable sort's input), not the id order.
    swapped = reciprocal_rank_fusion([1, 2], [0.4, 0.2], [0.5, 0.3], k=60)
    assert [e.id for e in swapped] == [2, 1] and swapped[0].score == swapped[1].score
    assert [e.id for e in reciprocal_rank_fusion([1, 2], [0.4, 0.2], [0.5, 0.3], k=60, ties="mean")] == [1, 2]
    # Tied values: the example that comes first in the data gets the better rank.
    ordered = reciprocal_rank_fusion([20, 10], [0.3, 0.3], [1.0, 1.0], k=60)
    assert [(e.id, e.rank_rouge, e.rank_loss) for e in ordered] == [(20, 1, 1), (10, 2, 2)]
    with pytest.raises(ValueError, match="valid: sequential, mean"):
        reciprocal_rank_fusion([1], [0.1], [0.2], ties="dense")


def test_rrf_k_changes_the_balance_and_ties_are_deterministic():
    # With k = 0 the top rank of one signal dominates; with mean ranks equal scores keep id order.
    ranked = reciprocal_rank_fusion([5, 3], [0.2, 0.2], [1.0, 1.0], k=0, ties="mean")
    assert [e.id for e in ranked] == [3, 5]
    with pytest.raises(ValueError, match="same length"):
        reciprocal_rank_fusion([1, 2], [0.1], [0.2, 0.3])


def test_baby_step_schedule_values():
    scheduler = BabyStepScheduler(list(range(100, 110)), num_stages=4)
    assert [scheduler.size(s) for s in range(4)] == [2, 4, 6, 10]  # (s + 1) * floor(10 / 4), then all (POCL rank.py)
    assert [scheduler.temperature(s) for s in range(4)] == pytest.approx([1.0, 4 / 3, 5 / 3, 2.0])
    assert [scheduler.kd_ratio(s) for s in range(4)] == pytest.approx([0.7, 0.8, 0.9, 1.0])
    assert scheduler.active_ids(0) == [100, 101]
    assert scheduler.active_ids(3) == list(range(100, 110))
    single = BabyStepScheduler([1, 2], num_stages=1, temperature=(1.5, 3.0))
    assert single.temperature() == 1.5 and single.size() == 2


def test_epoch_rule():
    scheduler = BabyStepScheduler(list(range(8)), num_stages=2, stage_epochs=2)
    assert [scheduler.on_epoch_end() for _ in range(4)] == [False, True, False, True]
    assert scheduler.finished and scheduler.total_epochs() == 4


def test_patience_rule():
    scheduler = BabyStepScheduler(list(range(8)), num_stages=3, stage_epochs=10, patience=2)
    # Stage 0: improves, improves, worse, equal -> converged after two evaluations without improvement.
    assert [scheduler.on_validation(loss) for loss in (3.0, 2.5, 2.6, 2.5)] == [False, False, False, True]
    assert scheduler.stage == 1 and scheduler.best_loss is None
    # The epoch cap still applies with patience.
    assert [scheduler.on_epoch_end() for _ in range(10)][-1] is True and scheduler.stage == 2
    no_patience = BabyStepScheduler(list(range(8)), num_stages=2)
    assert not any(no_patience.on_validation(loss) for loss in (1.0, 2.0, 3.0))


def test_state_round_trip_mid_stage():
    scheduler = BabyStepScheduler(list(range(12)), num_stages=3, stage_epochs=3, patience=2)
    scheduler.on_epoch_end(), scheduler.on_epoch_end(), scheduler.on_epoch_end(), scheduler.on_epoch_end()
    scheduler.on_validation(1.0), scheduler.on_validation(1.2)
    restored = BabyStepScheduler(list(range(12)), num_stages=3, stage_epochs=3, patience=2)
    restored.load_state_dict(scheduler.state_dict())
    assert restored.state_dict() == scheduler.state_dict() == {"stage": 1, "epochs_in_stage": 1, "best_loss": 1.0, "bad_evaluations": 1}
    assert restored.on_validation(1.1) is True and restored.stage == 2


def test_bad_configuration_is_a_clear_error():
    with pytest.raises(ValueError, match="--num-stages"):
        BabyStepScheduler([1, 2, 3], num_stages=0)
    with pytest.raises(ValueError, match="cannot fill 4 stages"):
        BabyStepScheduler([1, 2, 3], num_stages=4)
    with pytest.raises(ValueError, match="--stage-patience"):
        BabyStepScheduler([1, 2, 3], num_stages=1, patience=0)


def test_processed_ranking_loss_scores_the_response_without_its_eos(tiny_gpt2_dir, tiny_tokenizer):
    # `--rank-inputs processed`: the processed response, its EOS left out, cut to
    # max_length - max_prompt_length (256) tokens.
    import torch.nn.functional as F

    from distillation_llm.models import load_causal_lm
    from distillation_llm.rank_difficulty import example_losses, processed_example, scored_row

    eos = tiny_tokenizer.eos_token_id
    prompt = tiny_tokenizer("Describe the sea.")["input_ids"]
    long_answer = tiny_tokenizer(" The sea is wide and deep and blue." * 40)["input_ids"]
    assert len(long_answer) > 256
    row = {"id": 0, "prompt_ids": prompt, "response_ids": long_answer + [eos]}
    assert scored_row(row, eos, 256)["response_ids"] == long_answer[:256]
    short = {"id": 1, "prompt_ids": prompt, "response_ids": long_answer[:5] + [eos]}
    assert scored_row(short, eos, 256)["response_ids"] == long_answer[:5]
    assert scored_row(short, eos, 256, score_eos=True)["response_ids"] == long_answer[:5] + [eos]

    model = load_causal_lm(tiny_gpt2_dir)
    # Batched with a longer example, so the short one is padded.
    longer = {"id": 2, "prompt_ids": prompt, "response_ids": long_answer[:30] + [eos]}
    loss, _ = example_losses(model, [processed_example(short, eos, 256, 512), processed_example(longer, eos, 256, 512)], 2, torch.device("cpu"))
    ids = torch.tensor([prompt + long_answer[:5]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    by_hand = F.cross_entropy(logits[len(prompt) - 1 : -1], ids[0, len(prompt) :])
    assert loss == pytest.approx(by_hand.item(), rel=1e-5)


def test_ranking_lines_are_refused_with_file_and_line(tmp_path):
    """A ranking orders each example once by its integer id: a float id (read as a truncated int
    before), a string, a bool, an id ranked twice or a line that is not UTF-8 is refused naming
    the file and the line; unranked or unknown examples are refused by `check_ranks_all`."""
    from abkd.pocl import check_ranks_all, read_ranked_ids

    path = tmp_path / "ranking.jsonl"
    for lines, message in (
        ([b'{"id": 0}', b'{"id": 2.7}'], r"ranking.jsonl:2: id 2.7 is not an integer"),
        ([b'{"id": 1.0}'], r"ranking.jsonl:1: id 1.0 is not an integer"),
        ([b'{"id": "1"}'], r"ranking.jsonl:1: id '1' is not an integer"),
        ([b'{"id": true}'], r"ranking.jsonl:1: id True is not an integer"),
        ([b'{"id": 0}', b'{"id": 1}', b'{"id": 0}'], r"ranking.jsonl:3: id 0 is ranked twice \(first at line 1\)"),
        ([b'{"id": 0}', b'{"id": "\xe9"}'], r"ranking.jsonl:2: invalid UTF-8 \(byte 0xe9 at column 9\)"),
        ([b'{"id": 0}', b'{"rank": 1}'], r"ranking.jsonl:2: not a ranking line"),
    ):
        path.write_bytes(b"\n".join(lines) + b"\n")
        with pytest.raises(ValueError, match=message):
            read_ranked_ids(path)
    path.write_bytes(b'{"id": 2}\n{"id": 0}\n')
    assert read_ranked_ids(path) == [2, 0]
    with pytest.raises(ValueError, match=r"ranking.jsonl ranks 2 of the 3 training examples: 1 are missing \(ids 1\)"):
        check_ranks_all(path, read_ranked_ids(path), [0, 1, 2])
    with pytest.raises(ValueError, match=r"ranking.jsonl:1: id 2 is not a training example"):
        check_ranks_all(path, read_ranked_ids(path), [0, 1])
    check_ranks_all(path, read_ranked_ids(path), [0, 2])
