"""POCL ranking (reciprocal rank fusion) and the Baby Step scheduler on hand-checkable examples."""

import pytest

from abkd.pocl import BabyStepScheduler, fractional_ranks, reciprocal_rank_fusion


def test_fractional_ranks_share_ties():
    assert fractional_ranks([0.9, 0.1, 0.5, 0.5], descending=True) == [1.0, 4.0, 2.5, 2.5]
    assert fractional_ranks([3.0, 1.0, 2.0], descending=False) == [3.0, 1.0, 2.0]
    assert fractional_ranks([7.0, 7.0, 7.0], descending=False) == [2.0, 2.0, 2.0]


def test_reciprocal_rank_fusion_by_hand():
    ids = [10, 11, 12, 13]
    rouge = [0.9, 0.1, 0.5, 0.5]  # ranks (higher easier): 1, 4, 2.5, 2.5
    loss = [1.0, 3.0, 0.5, 2.0]  # ranks (lower easier):  2, 4, 1, 3
    ranked = reciprocal_rank_fusion(ids, rouge, loss, k=60)
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


def test_rrf_k_changes_the_balance_and_ties_are_deterministic():
    # With k = 0 the top rank of one signal dominates; equal scores keep id order.
    ranked = reciprocal_rank_fusion([5, 3], [0.2, 0.2], [1.0, 1.0], k=0)
    assert [e.id for e in ranked] == [3, 5]
    with pytest.raises(ValueError, match="same length"):
        reciprocal_rank_fusion([1, 2], [0.1], [0.2, 0.3])


def test_baby_step_schedule_values():
    scheduler = BabyStepScheduler(list(range(100, 110)), num_stages=4)
    assert [scheduler.size(s) for s in range(4)] == [3, 5, 8, 10]  # ceil(10 * (s + 1) / 4)
    assert [scheduler.temperature(s) for s in range(4)] == pytest.approx([1.0, 4 / 3, 5 / 3, 2.0])
    assert [scheduler.kd_ratio(s) for s in range(4)] == pytest.approx([0.7, 0.8, 0.9, 1.0])
    assert scheduler.active_ids(0) == [100, 101, 102]
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
