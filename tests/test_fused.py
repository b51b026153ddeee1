"""The fused chunked loss equals the naive full-logits path, on the loss and on every gradient."""

import math

import pytest
import torch
import torch.nn.functional as F

from abkd import fused as fused_module
from abkd.fused import FusedLossOutput, default_chunk_size, fused_linear_divergence
from abkd.losses import DIVERGENCES, divergence, masked_mean

N, H, HT, V = 37, 12, 20, 53  # N is not a multiple of any chunk size used below
CASES = [
    ("fkl", {}),
    ("rkl", {}),
    ("jsd", {"lam": 0.3}),
    ("tvd", {}),
    ("sfkl", {"lam": 0.1}),
    ("srkl", {"lam": 0.2}),
    ("ab", {"alpha": 0.2, "beta": 0.7}),
    ("ab", {"alpha": 1.0, "beta": 0.0}),
    ("ab", {"alpha": 0.0, "beta": 1.0}),
    ("ab", {"alpha": 0.0, "beta": 0.0}),
    ("ab", {"alpha": 0.6, "beta": -0.6}),
    ("ab", {"alpha": 0.0, "beta": 0.5}),
    ("ab", {"alpha": -0.5, "beta": 1.5}),
]
assert {name for name, _ in CASES} == set(DIVERGENCES)


def _inputs(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    student_hidden = randn(N, H).requires_grad_()
    student_weight = randn(V, H, scale=0.7).requires_grad_()
    student_bias = randn(V, scale=0.3).requires_grad_()
    teacher_hidden = randn(N, HT)
    teacher_weight = randn(V, HT, scale=0.6)
    labels = torch.randint(0, V, (N,), generator=g)
    labels[:9] = -100  # a prompt
    labels[20:23] = -100
    return student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight, labels


def _naive(name, params, hidden, weight, bias, teacher_logits, mask, temperature):
    student_logits = hidden @ weight.T + bias
    return masked_mean(divergence(name, student_logits, teacher_logits, temperature=temperature, **params), mask)


def _grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("name,params", CASES)
@pytest.mark.parametrize("chunk_size", [8, 64])
def test_fused_equals_naive_loss_and_gradients(name, params, chunk_size):
    hidden, weight, bias, teacher_hidden, teacher_weight, labels = _inputs()
    teacher_logits = teacher_hidden @ teacher_weight.T
    mask = labels != -100
    leaves = (hidden, weight, bias)
    expected = _naive(name, params, hidden, weight, bias, teacher_logits, mask, 1.7)
    expected_grads = _grads(expected, leaves)
    for teacher in ({"teacher_logits": teacher_logits}, {"teacher_hidden": teacher_hidden, "teacher_weight": teacher_weight}):
        fused = fused_linear_divergence(
            name, hidden, weight, student_bias=bias, mask=mask, chunk_size=chunk_size, temperature=1.7, **teacher, **params
        ).loss
        torch.testing.assert_close(fused, expected, rtol=1e-10, atol=1e-12)
        for got, want in zip(_grads(fused, leaves), expected_grads):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name,params", [CASES[1], CASES[2], CASES[6]])
def test_float32_within_1e5_relative(name, params):
    hidden, weight, bias, teacher_hidden, teacher_weight, labels = (
        t.detach().float().requires_grad_(t.requires_grad) if t.is_floating_point() else t for t in _inputs(seed=1)
    )
    teacher_logits = teacher_hidden @ teacher_weight.T
    leaves = (hidden, weight, bias)
    expected = _naive(name, params, hidden.double(), weight.double(), bias.double(), teacher_logits.double(), None, 2.0)
    expected_grads = _grads(expected, leaves)
    fused = fused_linear_divergence(name, hidden, weight, student_bias=bias, teacher_logits=teacher_logits, chunk_size=16, temperature=2.0, **params).loss
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused.double(), expected, rtol=1e-5, atol=1e-7)
    for got, want in zip(_grads(fused, leaves), expected_grads):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want.double(), rtol=1e-5, atol=1e-7)


def test_bfloat16_inputs_within_documented_tolerance():
    """bf16 hidden states and weights: the matmuls run in bf16 (as the model's own head would), the
    divergence in float32. Documented tolerance: 2e-2 relative on the loss, 5e-2 on gradients,
    measured against float64 maths on the same bf16-rounded inputs."""
    hidden, weight, _, teacher_hidden, teacher_weight, _ = (t.detach() if t.is_floating_point() else t for t in _inputs(seed=2))
    hidden = hidden.bfloat16().requires_grad_()
    weight = weight.bfloat16().requires_grad_()
    teacher_logits = (teacher_hidden @ teacher_weight.T).bfloat16()
    reference_hidden = hidden.detach().double().requires_grad_()
    reference_weight = weight.detach().double().requires_grad_()
    expected = masked_mean(divergence("ab", reference_hidden @ reference_weight.T, teacher_logits.double(), alpha=0.2, beta=0.7))
    expected_grads = _grads(expected, (reference_hidden, reference_weight))
    fused = fused_linear_divergence("ab", hidden, weight, teacher_logits=teacher_logits, chunk_size=16, alpha=0.2, beta=0.7).loss
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused.double(), expected, rtol=2e-2, atol=1e-4)
    for got, want in zip(_grads(fused, (hidden, weight)), expected_grads):
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.double(), want, rtol=5e-2, atol=5e-3)


@pytest.mark.parametrize("kd_ratio", [0.0, 0.4, 1.0])
def test_cross_entropy_in_the_same_pass(kd_ratio):
    hidden, weight, bias, teacher_hidden, teacher_weight, labels = _inputs(seed=3)
    teacher_logits = teacher_hidden @ teacher_weight.T
    leaves = (hidden, weight, bias)
    student_logits = hidden @ weight.T + bias
    ce = F.cross_entropy(student_logits, labels, ignore_index=-100)
    kd = masked_mean(divergence("ab", student_logits, teacher_logits, temperature=2.0, alpha=0.3, beta=0.9), labels != -100)
    expected = (1 - kd_ratio) * ce + kd_ratio * kd
    expected_grads = _grads(expected, leaves)
    out = fused_linear_divergence(
        "ab", hidden, weight, student_bias=bias, teacher_logits=teacher_logits, labels=labels,
        kd_ratio=kd_ratio, chunk_size=10, temperature=2.0, alpha=0.3, beta=0.9,
    )
    assert isinstance(out, FusedLossOutput)
    torch.testing.assert_close(out.ce, ce.detach(), rtol=1e-10, atol=0)
    torch.testing.assert_close(out.kd, kd.detach(), rtol=1e-10, atol=0)
    torch.testing.assert_close(out.loss, expected, rtol=1e-10, atol=1e-12)
    assert not out.kd.requires_grad and not out.ce.requires_grad
    for got, want in zip(_grads(out.loss, leaves), expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_cross_entropy_alone():
    hidden, weight, bias, _, _, labels = _inputs(seed=4)
    out = fused_linear_divergence(None, hidden, weight, student_bias=bias, labels=labels, chunk_size=7)
    expected = F.cross_entropy(hidden @ weight.T + bias, labels, ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)
    for got, want in zip(_grads(out.loss, (hidden, weight, bias)), _grads(expected, (hidden, weight, bias))):
        torch.testing.assert_close(got, want)


def test_all_masked_batch_gives_zero_loss_and_zero_gradients():
    hidden, weight, bias, teacher_hidden, teacher_weight, labels = _inputs(seed=5)
    labels = torch.full_like(labels, -100)
    out = fused_linear_divergence(
        "ab", hidden, weight, student_bias=bias, teacher_hidden=teacher_hidden, teacher_weight=teacher_weight,
        labels=labels, kd_ratio=0.5, alpha=0.2, beta=0.7,
    )
    assert out.loss.item() == 0.0 and out.kd.item() == 0.0 and out.ce.item() == 0.0
    for grad in _grads(out.loss, (hidden, weight, bias)):
        assert torch.isfinite(grad).all() and (grad == 0).all()


def test_masked_rows_receive_no_gradient():
    hidden, weight, bias, teacher_hidden, teacher_weight, labels = _inputs(seed=6)
    mask = labels != -100
    fused = fused_linear_divergence("rkl", hidden, weight, teacher_hidden=teacher_hidden, teacher_weight=teacher_weight, mask=mask).loss
    (grad_hidden,) = _grads(fused, (hidden,))
    assert (grad_hidden[~mask] == 0).all() and (grad_hidden[mask] != 0).any()


def test_batched_leading_dimensions():
    hidden, weight, bias, teacher_hidden, teacher_weight, labels = _inputs(seed=7)
    teacher_logits = teacher_hidden @ teacher_weight.T
    flat = fused_linear_divergence("jsd", hidden[:36], weight, teacher_logits=teacher_logits[:36], labels=labels[:36], kd_ratio=0.5)
    batched = fused_linear_divergence(
        "jsd", hidden[:36].reshape(4, 9, H), weight, teacher_logits=teacher_logits[:36].reshape(4, 9, V),
        labels=labels[:36].reshape(4, 9), kd_ratio=0.5,
    )
    torch.testing.assert_close(batched.loss, flat.loss)


@pytest.mark.parametrize("name,params", CASES)
def test_padded_vocabulary_tail_gives_finite_gradients(name, params):
    """A vocabulary padded to a multiple of 8: pad entries have -inf bias and -inf teacher logits."""
    hidden, weight, bias, teacher_hidden, teacher_weight, labels = (t.detach() if t.is_floating_point() else t for t in _inputs(seed=8))
    pad = 11
    weight = torch.cat([weight, torch.randn(pad, H, dtype=weight.dtype)]).requires_grad_()
    bias = torch.cat([bias, torch.full((pad,), -math.inf, dtype=bias.dtype)]).requires_grad_()
    hidden.requires_grad_()
    teacher_logits = torch.cat([teacher_hidden @ teacher_weight.T, torch.full((N, pad), -math.inf, dtype=bias.dtype)], -1)
    out = fused_linear_divergence(name, hidden, weight, student_bias=bias, teacher_logits=teacher_logits, labels=labels, kd_ratio=0.7, chunk_size=16, **params)
    assert torch.isfinite(out.loss)
    grads = _grads(out.loss, (hidden, weight, bias))
    for grad in grads:
        assert torch.isfinite(grad).all()
    assert (grads[1][-pad:] == 0).all() and (grads[2][-pad:] == 0).all()
    # The padded tail changes nothing: same value as on the unpadded vocabulary.
    unpadded = fused_linear_divergence(
        name, hidden, weight[:-pad], student_bias=bias[:-pad], teacher_logits=teacher_logits[:, :-pad], labels=labels, kd_ratio=0.7, **params
    )
    torch.testing.assert_close(out.loss, unpadded.loss)


def test_compiled_path_matches_eager():
    hidden, weight, bias, teacher_hidden, teacher_weight, labels = (
        t.detach().float().requires_grad_(t.requires_grad) if t.is_floating_point() else t for t in _inputs(seed=9)
    )
    results = []
    for compile in (False, True):
        out = fused_linear_divergence(
            "ab", hidden, weight, student_bias=bias, teacher_hidden=teacher_hidden.float(), teacher_weight=teacher_weight.float(),
            labels=labels, kd_ratio=0.6, chunk_size=16, temperature=1.5, compile=compile, alpha=0.4, beta=0.8,
        )
        results.append((out, _grads(out.loss, (hidden, weight, bias))))
    (eager, eager_grads), (compiled, compiled_grads) = results
    torch.testing.assert_close(compiled.loss, eager.loss, rtol=1e-5, atol=1e-7)
    for got, want in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_bad_arguments_are_clear_errors():
    hidden, weight, _, teacher_hidden, teacher_weight, labels = _inputs()
    teacher_logits = teacher_hidden @ teacher_weight.T
    with pytest.raises(ValueError, match="valid names"):
        fused_linear_divergence("kl", hidden, weight, teacher_logits=teacher_logits)
    with pytest.raises(ValueError, match="exactly one of teacher_logits"):
        fused_linear_divergence("fkl", hidden, weight)
    with pytest.raises(ValueError, match="give kd_ratio"):
        fused_linear_divergence("fkl", hidden, weight, teacher_logits=teacher_logits, labels=labels)
    with pytest.raises(ValueError, match="teacher_weight must be"):
        fused_linear_divergence("fkl", hidden, weight, teacher_hidden=teacher_hidden, teacher_weight=teacher_weight[:-1])
    with pytest.raises(ValueError, match="teacher_logits must be"):
        fused_linear_divergence("fkl", hidden, weight, teacher_logits=teacher_logits[:, :-3])
    with pytest.raises(ValueError, match="chunk_size"):
        fused_linear_divergence("fkl", hidden, weight, teacher_logits=teacher_logits, chunk_size=0)


@pytest.mark.parametrize("name,params", CASES)
def test_one_sided_minus_inf_entries_match_naive(name, params):
    """Teacher-only -inf entries (a teacher that masks tokens the student still scores) drop out
    of the divergence; the closed-form gradients must still agree with autograd."""
    hidden, weight, bias, teacher_hidden, teacher_weight, _ = _inputs(seed=10)
    teacher_logits = teacher_hidden @ teacher_weight.T
    g = torch.Generator().manual_seed(0)
    teacher_logits[torch.rand(N, V, generator=g) < 0.1] = -math.inf
    leaves = (hidden, weight, bias)
    expected = _naive(name, params, hidden, weight, bias, teacher_logits, None, 1.3)
    fused = fused_linear_divergence(name, hidden, weight, student_bias=bias, teacher_logits=teacher_logits, chunk_size=16, temperature=1.3, **params).loss
    torch.testing.assert_close(fused, expected, rtol=1e-10, atol=1e-12)
    for got, want in zip(_grads(fused, leaves), _grads(expected, leaves)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


NEAR_ZERO = sorted({sign * m for m in (0.0, 1e-8, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2) for sign in (1, -1)})


@pytest.mark.parametrize(
    "family",
    {
        "alpha~0": lambda e: (e, 0.7),
        "beta~0": lambda e: (0.4, e),
        "alpha+beta~0": lambda e: (0.6, -0.6 + e),
        "alpha~0,beta~0": lambda e: (e, -2.5 * e),
    }.items(),
    ids=lambda item: item[0],
)
def test_ab_float32_matches_float64_near_special_cases(family):
    """The fused path in float32 (closed-form gradient) against itself in float64 on the same
    float32 inputs, next to alpha = 0, beta = 0 and alpha + beta = 0: loss within 1e-4, hidden
    and weight gradients within 1e-3 (relative, in norm)."""
    _, near = family
    hidden, weight, _, teacher_hidden, teacher_weight, labels = (t.detach() if t.is_floating_point() else t for t in _inputs(seed=5))
    hidden32, weight32 = (hidden * 3).float(), weight.float()  # scale 3: varied log-probabilities
    teacher32 = (teacher_hidden @ teacher_weight.T * 3).float()
    mask = labels != -100
    for e in NEAR_ZERO:
        alpha, beta = near(e)
        results = []
        for dtype in (torch.float32, torch.float64):
            leaves = (hidden32.to(dtype).requires_grad_(), weight32.to(dtype).requires_grad_())
            loss = fused_linear_divergence(
                "ab", *leaves, teacher_logits=teacher32.to(dtype), mask=mask, chunk_size=16, compile=False, alpha=alpha, beta=beta
            ).loss
            results.append((loss.double(), [g.double() for g in _grads(loss, leaves)]))
        (loss32, grads32), (loss64, grads64) = results
        assert loss64 > 0 and loss32 > 0
        assert abs(loss32 - loss64) <= 1e-4 * loss64, (alpha, beta, loss32, loss64)
        for got, want in zip(grads32, grads64):
            assert (got - want).norm() <= 1e-3 * want.norm(), (alpha, beta, ((got - want).norm() / want.norm()).item())


def test_without_labels_the_output_is_the_divergence_alone():
    hidden, weight, _, _, _, labels = _inputs(seed=12)
    teacher_logits = torch.randn(N, V, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    out = fused_linear_divergence("tvd", hidden, weight, teacher_logits=teacher_logits, chunk_size=8)
    assert isinstance(out, FusedLossOutput)
    expected = masked_mean(divergence("tvd", hidden @ weight.T, teacher_logits))
    torch.testing.assert_close(out.loss, expected, rtol=1e-10, atol=1e-12)
    assert out.kd == out.loss.detach() and out.ce == 0 and not out.kd.requires_grad


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the tensor-core path of the head gradient needs CUDA")
def test_bfloat16_on_cuda_accumulates_the_head_gradient_in_float32():
    """On CUDA the bf16 head gradient is multiplied on tensor cores and accumulated in fp32
    (`_fp32_output_matmul`); same documented tolerance as on CPU against float64 maths."""
    device = torch.device("cuda")
    hidden, weight, _, teacher_hidden, teacher_weight, _ = (t.detach() if t.is_floating_point() else t for t in _inputs(seed=2))
    hidden = hidden.bfloat16().to(device).requires_grad_()
    weight = weight.bfloat16().to(device).requires_grad_()
    teacher_logits = (teacher_hidden @ teacher_weight.T).bfloat16().to(device)
    reference_hidden = hidden.detach().double().cpu().requires_grad_()
    reference_weight = weight.detach().double().cpu().requires_grad_()
    expected = masked_mean(divergence("ab", reference_hidden @ reference_weight.T, teacher_logits.double().cpu(), alpha=0.2, beta=0.7))
    expected_grads = _grads(expected, (reference_hidden, reference_weight))
    fused = fused_linear_divergence("ab", hidden, weight, teacher_logits=teacher_logits, chunk_size=16, alpha=0.2, beta=0.7).loss
    torch.testing.assert_close(fused.double().cpu(), expected, rtol=2e-2, atol=1e-4)
    for got, want in zip(_grads(fused, (hidden, weight)), expected_grads):
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.double().cpu(), want, rtol=5e-2, atol=5e-3)


@pytest.mark.parametrize("name,params", CASES)
def test_head_padded_to_an_aligned_vocabulary_changes_nothing(monkeypatch, name, params):
    """On CUDA the head is padded to a multiple of 128 rows for aligned GEMMs; here CPU is made
    to pad V = 53 to 64. The padded logits must lie outside both distributions: loss, parts and
    every gradient equal the unpadded pass, for both teacher inputs and with the cross-entropy."""
    hidden, weight, bias, teacher_hidden, teacher_weight, labels = _inputs(seed=5)
    teacher_logits = teacher_hidden @ teacher_weight.T
    leaves = (hidden, weight, bias)

    def run(**teacher):
        out = fused_linear_divergence(
            name, hidden, weight, student_bias=bias, labels=labels, kd_ratio=0.6, chunk_size=16, temperature=1.5, **teacher, **params
        )
        return out, _grads(out.loss, leaves)

    for teacher in ({"teacher_logits": teacher_logits}, {"teacher_hidden": teacher_hidden, "teacher_weight": teacher_weight}):
        expected, expected_grads = run(**teacher)
        with monkeypatch.context() as patch:
            patch.setitem(fused_module.VOCAB_ALIGNMENT, "cpu", 64)
            assert fused_module.padded_vocab(V, hidden.device) == 64
            got, got_grads = run(**teacher)
        for part in range(3):
            torch.testing.assert_close(got[part], expected[part], rtol=1e-12, atol=1e-14)
        for got_grad, want in zip(got_grads, expected_grads):
            assert got_grad.shape == want.shape
            torch.testing.assert_close(got_grad, want, rtol=1e-10, atol=1e-13)


def test_chunk_size_for_the_device():
    assert default_chunk_size(torch.device("cpu"), 50257) == fused_module.DEFAULT_CHUNK_SIZE
    budget, most = fused_module.CUDA_CHUNK_BYTES, fused_module.CUDA_CHUNK_ROWS
    for vocab in (53, 50257, 128256, 151936, 1 << 22):
        rows = default_chunk_size(torch.device("cuda"), vocab)
        assert rows & (rows - 1) == 0 and 256 <= rows <= most
        # the largest power of two whose fp32 logits fit the budget (or the 256-row floor)
        assert rows == 256 or (4 * rows * vocab <= budget and (rows == most or 8 * rows * vocab > budget))
    assert default_chunk_size(torch.device("cuda"), 50257) == 2048 and default_chunk_size(torch.device("cuda"), 151936) == 512
