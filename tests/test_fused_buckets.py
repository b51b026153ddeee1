"""A truncated teacher (top K tokens + one tail bucket, as an offline cache stores it): the bucket
maths against hand-written formulas, K = V against the online loss, and the fused chunked path
against autograd through the full-logits reference, on the loss and on every gradient."""

import math

import pytest
import torch
from test_fused import CASES, N, V, _inputs

from abkd import fused as fused_module
from abkd.fused import TeacherBuckets, fused_linear_divergence
from abkd.losses import bucketed_divergence, divergence, masked_mean, teacher_bucket_log_probs


def _buckets(teacher_logits: torch.Tensor, k: int, temperature: float) -> TeacherBuckets:
    """What a cache stores, built the way the cache builder does: top-K logits shifted by the row
    maximum, and the tail's log-mass at the temperature."""
    top_logits, ids = teacher_logits.topk(k, dim=-1)
    log_p = torch.log_softmax(teacher_logits.double() / temperature, dim=-1)
    outside = torch.ones_like(log_p, dtype=torch.bool).scatter(-1, ids, False)
    tail = torch.where(outside, log_p, -math.inf).logsumexp(-1)
    shifted = top_logits - top_logits[..., :1]
    return TeacherBuckets(ids, teacher_bucket_log_probs(shifted, tail.to(teacher_logits.dtype), temperature))


def test_teacher_buckets_are_the_teacher_distribution_summed_onto_buckets():
    logits = torch.randn(5, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    ids, log_probs = _buckets(logits, 7, 1.5)
    p = torch.softmax(logits / 1.5, -1)
    torch.testing.assert_close(log_probs[:, :7].exp(), p.gather(-1, ids), rtol=1e-12, atol=0)
    torch.testing.assert_close(log_probs[:, 7].exp(), 1 - p.gather(-1, ids).sum(-1), rtol=1e-10, atol=1e-15)
    assert torch.all(ids == logits.argsort(-1, descending=True)[:, :7])
    full = _buckets(logits, 30, 1.5)  # K = V: the tail is empty
    assert torch.all(full.log_probs[:, -1] == -math.inf)
    torch.testing.assert_close(full.log_probs[:, :-1].logsumexp(-1), torch.zeros(5, dtype=torch.float64), rtol=0, atol=1e-14)


def test_fkl_on_buckets_by_hand():
    """KL(p_b || q_b) over the teacher's top 3 and the rest, written out for one row."""
    student = torch.tensor([[0.3, -1.0, 2.0, 0.5, 0.0, -0.4]], dtype=torch.float64)
    teacher = torch.tensor([[1.0, 0.2, 2.5, -0.3, 0.1, -2.0]], dtype=torch.float64)
    p, q = torch.softmax(teacher[0], 0).tolist(), torch.softmax(student[0], 0).tolist()
    top = [2, 0, 1]  # the teacher's three largest logits: 2.5, 1.0, 0.2
    p_b = [p[i] for i in top] + [1 - sum(p[i] for i in top)]
    q_b = [q[i] for i in top] + [1 - sum(q[i] for i in top)]
    expected = sum(a * math.log(a / b) for a, b in zip(p_b, q_b))
    ids, log_probs = _buckets(teacher, 3, 1.0)
    assert ids.tolist() == [top]
    got = bucketed_divergence("fkl", student, ids, log_probs)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # coarse-graining loses information: KL on buckets <= KL on tokens (data processing inequality)
    assert got.item() < divergence("fkl", student, teacher).item()


@pytest.mark.parametrize("name,params", CASES)
def test_k_equal_to_v_is_the_online_divergence(name, params):
    hidden, weight, bias, teacher_hidden, teacher_weight, labels = _inputs(seed=6)
    teacher_logits = teacher_hidden @ teacher_weight.T
    student_logits = hidden @ weight.T + bias
    buckets = _buckets(teacher_logits, V, 1.3)
    exact = divergence(name, student_logits, teacher_logits, temperature=1.3, **params)
    bucketed = bucketed_divergence(name, student_logits, *buckets, temperature=1.3, **params)
    torch.testing.assert_close(bucketed, exact, rtol=1e-10, atol=1e-12)
    leaves = (hidden, weight, bias)
    for got, want in zip(torch.autograd.grad(bucketed.sum(), leaves, retain_graph=True), torch.autograd.grad(exact.sum(), leaves)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    # the fused path with a full cache equals the fused online loss, cross-entropy included
    kwargs = {"student_bias": bias, "labels": labels, "kd_ratio": 0.7, "chunk_size": 16, "temperature": 1.3, **params}
    online = fused_linear_divergence(name, hidden, weight, teacher_logits=teacher_logits, **kwargs)
    cached = fused_linear_divergence(name, hidden, weight, teacher_buckets=buckets, **kwargs)
    for part in range(3):
        torch.testing.assert_close(cached[part], online[part], rtol=1e-10, atol=1e-12)
    for got, want in zip(torch.autograd.grad(cached.loss, leaves), torch.autograd.grad(online.loss, leaves)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name,params", CASES)
@pytest.mark.parametrize("k", [1, 5, 52])
def test_fused_buckets_equal_the_full_logits_reference(name, params, k):
    """The closed-form gradient of the fused path against autograd through the reference."""
    hidden, weight, bias, teacher_hidden, teacher_weight, labels = _inputs(seed=7)
    teacher_logits = teacher_hidden @ teacher_weight.T
    buckets = _buckets(teacher_logits, k, 2.0)
    mask = labels != -100
    leaves = (hidden, weight, bias)
    per_token = bucketed_divergence(name, hidden @ weight.T + bias, *buckets, temperature=2.0, **params)
    expected = masked_mean(per_token, mask)
    out = fused_linear_divergence(name, hidden, weight, student_bias=bias, teacher_buckets=buckets, mask=mask, chunk_size=8, temperature=2.0, **params)
    torch.testing.assert_close(out.loss, expected, rtol=1e-10, atol=1e-12)
    for got, want in zip(torch.autograd.grad(out.loss, leaves), torch.autograd.grad(expected, leaves)):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name,params", [CASES[0], CASES[5], CASES[6]])
def test_fused_buckets_in_float32_and_with_a_padded_head(monkeypatch, name, params):
    hidden, weight, bias, teacher_hidden, teacher_weight, labels = _inputs(seed=8)
    teacher_logits = teacher_hidden @ teacher_weight.T
    buckets = _buckets(teacher_logits, 6, 1.0)
    expected = fused_linear_divergence(name, hidden, weight, student_bias=bias, teacher_buckets=buckets, labels=labels, kd_ratio=0.5, chunk_size=8, **params)
    expected_grads = torch.autograd.grad(expected.loss, (hidden, weight, bias))
    monkeypatch.setitem(fused_module.VOCAB_ALIGNMENT, "cpu", 64)
    single = [t.detach().float().requires_grad_() for t in (hidden, weight, bias)]
    single_buckets = TeacherBuckets(buckets.ids, buckets.log_probs.float())
    out = fused_linear_divergence(name, *single[:2], student_bias=single[2], teacher_buckets=single_buckets, labels=labels, kd_ratio=0.5, chunk_size=8, **params)
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss.double(), expected.loss, rtol=2e-6, atol=1e-7)
    for got, want in zip(torch.autograd.grad(out.loss, single), expected_grads):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)


def test_compiled_bucket_path_matches_eager():
    hidden, weight, bias, teacher_hidden, teacher_weight, labels = _inputs(seed=9)
    buckets = _buckets(teacher_hidden @ teacher_weight.T, 8, 1.0)
    hidden, weight = hidden.detach().float().requires_grad_(), weight.detach().float().requires_grad_()
    buckets = TeacherBuckets(buckets.ids, buckets.log_probs.float())
    results = []
    for compile in (False, True):
        out = fused_linear_divergence("ab", hidden, weight, teacher_buckets=buckets, labels=labels, kd_ratio=0.5, chunk_size=16, compile=compile, alpha=0.2, beta=0.7)
        results.append((out.loss, *torch.autograd.grad(out.loss, (hidden, weight))))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_bad_buckets_are_clear_errors():
    hidden, weight, _, teacher_hidden, teacher_weight, _ = _inputs()
    buckets = _buckets(teacher_hidden @ teacher_weight.T, 4, 1.0)
    with pytest.raises(ValueError, match="teacher_buckets must be"):
        fused_linear_divergence("fkl", hidden, weight, teacher_buckets=TeacherBuckets(buckets.ids, buckets.log_probs[:, :4]))
    with pytest.raises(ValueError, match="exactly one of"):
        fused_linear_divergence("fkl", hidden, weight, teacher_buckets=buckets, teacher_logits=teacher_hidden @ teacher_weight.T)
    with pytest.raises(ValueError, match="must agree"):
        bucketed_divergence("fkl", torch.zeros(N, V), buckets.ids, buckets.log_probs[:, :3])
