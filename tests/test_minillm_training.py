"""--type minillm in the training loop: rounds of teacher-mixed rollouts, PPO epochs over them, the
LM term, and exact resume from a stop inside a PPO epoch, between PPO epochs and between rounds."""

from __future__ import annotations

import pytest
from test_preemption import lm_dir  # noqa: F401
from test_resume_reliability import _argv, _max_difference, _weights, processed_dir  # noqa: F401

from distillation_llm import finetune

# 16 rollouts a round; a step takes 4 x 2 of them: 2 steps a PPO epoch, 2 epochs, 4 steps a round.
MINILLM = ("--type", "minillm", "--num-rollouts", 16, "--rollout-chunk-size", 8, "--ppo-epochs", 2, "--teacher-mixed-alpha", 0.2,
           "--reward-scaling", 0.5, "--cliprange-reward", 100, "--single-step-reg", "--length-norm", "--kd-ratio", 0.5, "--total-iters", 7)


def _run(save, processed_dir, lm_dir, student, teacher, *extra):  # noqa: F811
    finetune.main(_argv(save, processed_dir, student, teacher, *MINILLM, "--lm-data-dir", lm_dir, *extra))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, processed_dir, lm_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir):  # noqa: F811
    save = tmp_path_factory.mktemp("minillm") / "full"
    _run(save, processed_dir, lm_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir)
    return save


def test_a_minillm_run_logs_what_it_trains_and_its_terms(uninterrupted):
    log = (uninterrupted / "log.txt").read_text()
    assert "what runs: loss PPO-clipped (0.2) policy gradient, rewards (log p - log q) / 0.5 clipped to +-100, gamma 0.95 + KL(student || teacher) " \
           "per token (single-step) + 1 * (0.5 * CE + 0.5 * fkl) on LM data; rounds of 16 rollouts, each token from 0.8 student + 0.2 teacher, " \
           "2 PPO epochs each" in log
    steps = [line for line in log.splitlines() if "] train step " in line]
    assert len(steps) == 7 and all(all(f"| {term} " in line for term in ("pg", "reg", "pt", "reward")) for line in steps)
    # The first step of a round also samples it: it takes longer than the PPO steps after it.
    seconds = [float(line.split("| s_per_step ")[1].split()[0]) for line in steps]
    assert seconds[0] > max(seconds[1:4]) and seconds[4] > max(seconds[5:7])


@pytest.mark.parametrize("stop", [1, 2, 4])
def test_stop_and_resume_anywhere_in_a_round_equals_the_uninterrupted_run(stop, uninterrupted, tmp_path, processed_dir, lm_dir, tiny_gpt2_dir,  # noqa: F811
                                                                          tiny_gpt2_teacher_dir):
    """Step 1 stops inside the first PPO epoch, 2 between PPO epochs, 4 between rounds."""
    save = tmp_path / "run"
    _run(save, processed_dir, lm_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, "--stop-after-iters", stop)
    _run(save, processed_dir, lm_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, "--resume")
    assert _max_difference(_weights(save / "7"), _weights(uninterrupted / "7")) == 0.0
