"""MiniLLM's terms (abkd.minillm) against hand-written float64 versions of DistiLLM's formulas
(minillm/sampler.py, losses.py, utils.py), element by element, and the fused single-step
regulariser against the full-vocabulary one."""

from __future__ import annotations

import math

import pytest
import torch

from abkd import minillm
from abkd.fused import fused_linear_divergence


def _batch(seed: int = 0, b: int = 3, t: int = 7):
    g = torch.Generator().manual_seed(seed)
    student = -torch.rand(b, t, generator=g, dtype=torch.float64) * 4
    teacher = -torch.rand(b, t, generator=g, dtype=torch.float64) * 4
    lengths = torch.tensor([t, 4, 1][:b])
    mask = (torch.arange(t)[None, :] < lengths[:, None]).double()
    return student * mask, teacher * mask, mask, g


def test_importance_weights_are_the_student_over_the_mixture():
    student, teacher, mask, _ = _batch()
    alpha = 0.2
    w = minillm.importance_weights(student, teacher, alpha)
    for i in range(student.shape[0]):
        for j in range(student.shape[1]):
            q, p = math.exp(student[i, j]), math.exp(teacher[i, j])
            assert w[i, j].item() == pytest.approx(q / ((1 - alpha) * q + alpha * p), rel=1e-6)
            if mask[i, j] == 0:
                assert w[i, j].item() == pytest.approx(1.0)
    assert torch.equal(minillm.importance_weights(student, teacher, None), torch.ones_like(student))
    with pytest.raises(ValueError, match="teacher-mixed-alpha"):
        minillm.importance_weights(student, teacher, 1.5)


def test_rewards_are_scaled_and_clipped_log_ratios():
    student, teacher, mask, _ = _batch()
    rewards = minillm.token_rewards(teacher, student, mask, scaling=0.5, clip=3.0)
    for i in range(student.shape[0]):
        for j in range(student.shape[1]):
            expected = (teacher[i, j] - student[i, j]).item() / 0.5 if mask[i, j] else 0.0
            assert rewards[i, j].item() == pytest.approx(min(max(expected, -3.0), 3.0))
    assert (minillm.token_rewards(teacher, student, mask, 0.5, 3.0).abs() <= 3.0).all()
    assert (minillm.token_rewards(teacher, student, mask, 0.5, 3.0) != minillm.token_rewards(teacher, student, mask, 0.5, None)).any()


@pytest.mark.parametrize("gamma", [0.95, 1.0])
def test_advantages_are_whitened_length_normalised_returns(gamma):
    student, teacher, mask, _ = _batch(1)
    rewards = minillm.token_rewards(teacher, student, mask, scaling=0.5)
    b, t = rewards.shape
    returns = [[0.0] * t for _ in range(b)]
    for i in range(b):
        for j in range(t):
            discounted = sum(gamma ** (k - j) * rewards[i, k].item() for k in range(j, t))
            remaining = sum(mask[i, k].item() for k in range(j, t)) or 1.0
            returns[i][j] = discounted / remaining
    flat = [x for row in returns for x in row]
    mean = sum(flat) / len(flat)
    var = sum((x - mean) ** 2 for x in flat) / (len(flat) - 1)
    expected = torch.tensor([[(x - mean) / math.sqrt(var + 1e-8) for x in row] for row in returns], dtype=torch.float64)
    torch.testing.assert_close(minillm.advantages(rewards, mask, gamma).double(), expected, rtol=1e-5, atol=1e-6)
    unwhitened = minillm.advantages(rewards, mask, gamma, whiten=False).double()
    torch.testing.assert_close(unwhitened, torch.tensor(returns, dtype=torch.float64), rtol=1e-5, atol=1e-6)


def test_policy_loss_is_the_clipped_objective_on_weighted_ratios():
    student, teacher, mask, g = _batch(2)
    old = student
    new = (student + 0.3 * torch.randn(student.shape, generator=g, dtype=torch.float64)) * mask
    weights = minillm.importance_weights(old, teacher, 0.2)
    advantage = torch.randn(student.shape, generator=g, dtype=torch.float64)
    loss = minillm.clipped_policy_loss(new, old, advantage, mask, weights, cliprange=0.2)
    total, count = 0.0, 0.0
    for i in range(new.shape[0]):
        for j in range(new.shape[1]):
            if not mask[i, j]:
                continue
            ratio = math.exp(new[i, j] - old[i, j]) * weights[i, j].item()
            a = advantage[i, j].item()
            total += max(-a * ratio, -a * min(max(ratio, 0.8), 1.2))
            count += 1
    assert loss.item() == pytest.approx(total / count, rel=1e-6)


def test_sequence_reward_is_the_length_normalised_discounted_sum():
    student, teacher, mask, _ = _batch(3)
    rewards = minillm.token_rewards(teacher, student, mask)
    got = minillm.sequence_reward(rewards, mask, gamma=0.95, length_norm=True)
    for i in range(rewards.shape[0]):
        total = 0.0
        for j in reversed(range(rewards.shape[1])):
            total = 0.95 * total + rewards[i, j].item()
        assert got[i].item() == pytest.approx(total / mask[i].sum().item(), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_single_step_regulariser_equals_the_full_vocabulary_one(dtype):
    """The reference's `_reg_loss`: sum((x-entropy(q, p) - entropy(q)) * mask) / sum(mask), the
    per-token KL(q || p), with gradients through the student's logits in both terms."""
    g = torch.Generator().manual_seed(4)
    b, t, h, v = 2, 5, 8, 37
    hidden = torch.randn(b, t, h, generator=g, dtype=dtype, requires_grad=True)
    weight = torch.randn(v, h, generator=g, dtype=dtype, requires_grad=True)
    teacher_hidden = torch.randn(b, t, h, generator=g, dtype=dtype)
    teacher_weight = torch.randn(v, h, generator=g, dtype=dtype)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)

    logits, t_logits = hidden @ weight.T, teacher_hidden @ teacher_weight.T
    q, log_q, log_p = torch.softmax(logits.double(), -1), torch.log_softmax(logits.double(), -1), torch.log_softmax(t_logits.double(), -1)
    xent, ent = -(q * log_p).sum(-1), -(q * log_q).sum(-1)
    expected = ((xent - ent) * mask).sum() / mask.sum()
    expected.backward()
    expected_grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad, weight.grad = None, None

    fused = fused_linear_divergence("rkl", hidden, weight, teacher_hidden=teacher_hidden, teacher_weight=teacher_weight, mask=mask, chunk_size=3)
    fused.loss.backward()
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(fused.loss.double(), expected.detach(), **tol)
    torch.testing.assert_close(hidden.grad.double(), expected_grads[0].double(), **tol)
    torch.testing.assert_close(weight.grad.double(), expected_grads[1].double(), **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_chunked_token_logprobs_equal_the_full_log_softmax_in_value_and_gradient(dtype):
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(3, 5, 8, generator=g, dtype=dtype, requires_grad=True)
    weight = torch.randn(29, 8, generator=g, dtype=dtype, requires_grad=True)
    bias = torch.randn(29, generator=g, dtype=dtype)
    targets = torch.randint(0, 29, (3, 5), generator=g)
    coefficients = torch.randn(3, 5, generator=g, dtype=torch.float64)
    full = torch.log_softmax((hidden @ weight.T + bias).double(), -1).gather(-1, targets[..., None]).squeeze(-1)
    (full * coefficients).sum().backward()
    expected = full.detach(), hidden.grad.clone(), weight.grad.clone()
    hidden.grad, weight.grad = None, None
    got = minillm.token_logprobs(hidden, weight, targets, bias, chunk_size=4)
    (got.double() * coefficients).sum().backward()
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    assert got.shape == targets.shape
    torch.testing.assert_close(got.double(), expected[0], **tol)
    torch.testing.assert_close(hidden.grad.double(), expected[1].double(), **tol)
    torch.testing.assert_close(weight.grad.double(), expected[2].double(), **tol)
