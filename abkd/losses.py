"""The divergences every subproject distils with, written once.

Each divergence compares p = softmax(teacher_logits / T) with q = softmax(student_logits / T)
over the last axis of logits shaped [..., V]: tokens x vocabulary for LLMs, batch x classes
for images. `divergence` returns the per-position value, shape `logits.shape[:-1]`, in nats,
computed in float32 (float64 for float64 inputs) whatever the input precision. Reduction is a
separate step, `masked_mean`, so that chunking, temperature and masking compose.

Vocabulary entries whose teacher or student logit is -inf (padded or masked vocabulary)
contribute 0, and their gradient is 0.

| name   | definition                                              | params               |
|--------|---------------------------------------------------------|----------------------|
| `fkl`  | KL(p || q)                                              | -                    |
| `rkl`  | KL(q || p)                                              | -                    |
| `jsd`  | lam KL(q || m) + (1-lam) KL(p || m), m = (1-lam)p+lam q | `lam` (0.1)          |
| `tvd`  | 1/2 sum |p - q|                                         | -                    |
| `sfkl` | KL(p || lam p + (1-lam) q)   (DistiLLM skew KL)         | `lam` (0.1)          |
| `srkl` | KL(q || (1-lam) p + lam q)   (DistiLLM skew reverse KL) | `lam` (0.1)          |
| `ab`   | alpha-beta divergence, see `ab_divergence_terms`        | `alpha`, `beta`      |

Every loss also takes `temperature` (default 1.0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

# Largest exponent a negative power may reach (p^alpha with alpha < 0 grows without bound as
# p -> 0). Log-probabilities entering a negative power are floored at -_MAX_EXP/|negative
# exponent| so that exp() and a sum over a large vocabulary stay finite in the compute dtype.
_MAX_EXP = {torch.float32: 50.0, torch.float64: 500.0}


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (also for fp16/bf16 inputs)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def log_probs(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0
) -> tuple[Tensor, Tensor, Tensor]:
    """Tempered log-probabilities of student and teacher, made safe for element-wise maths.

    Returns (log_q, log_p, valid), each shaped [..., V]. `valid` is False where either logit is
    -inf; there both log-probabilities are replaced by 0 so no inf or NaN reaches the
    element-wise terms or their gradients, and callers zero those entries' contributions.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and teacher_logits "
            f"{tuple(teacher_logits.shape)} must have the same shape [..., V]"
        )
    dtype = compute_dtype(student_logits, teacher_logits)
    student_logits = student_logits.to(dtype)
    teacher_logits = teacher_logits.to(dtype)
    valid = (student_logits != -math.inf) & (teacher_logits != -math.inf)
    log_q = torch.log_softmax(student_logits / temperature, dim=-1)
    log_p = torch.log_softmax(teacher_logits / temperature, dim=-1)
    zero = log_q.new_zeros(())
    return torch.where(valid, log_q, zero), torch.where(valid, log_p, zero), valid


# ---------------------------------------------------------------------------------------------
# Element-wise terms. Each takes log_q, log_p shaped [..., V] (already sanitised) and returns the
# per-entry contributions whose sum over V is the divergence.
# ---------------------------------------------------------------------------------------------


def _kl_terms(log_a: Tensor, log_b: Tensor) -> Tensor:
    """a (log a - log b), the entries of KL(a || b); 0 where a underflows to 0."""
    return torch.exp(log_a) * (log_a - log_b)


def _fkl_terms(log_q: Tensor, log_p: Tensor) -> Tensor:
    return _kl_terms(log_p, log_q)


def _rkl_terms(log_q: Tensor, log_p: Tensor) -> Tensor:
    return _kl_terms(log_q, log_p)


# d(entry_k)/d(ln q_k) in closed form, for the divergences that have a short one (the fused loss
# turns it into the gradient with respect to the student logits, see `log_q_gradient`).
def _fkl_log_q_gradient(log_q: Tensor, log_p: Tensor) -> Tensor:
    return -torch.exp(log_p)  # entry p (ln p - ln q)


def _rkl_log_q_gradient(log_q: Tensor, log_p: Tensor) -> Tensor:
    return torch.exp(log_q) * (log_q - log_p + 1.0)  # entry q (ln q - ln p)


def _log_mixture(log_a: Tensor, log_b: Tensor, weight_a: float) -> Tensor:
    """log(weight_a a + (1 - weight_a) b) in log space."""
    if weight_a == 1.0:
        return log_a
    if weight_a == 0.0:
        return log_b
    return torch.logaddexp(log_a + math.log(weight_a), log_b + math.log1p(-weight_a))


def _jsd_terms(log_q: Tensor, log_p: Tensor, lam: float) -> Tensor:
    """Generalised JSD as in DistiLLM: lam KL(q||m) + (1-lam) KL(p||m), m = (1-lam) p + lam q."""
    log_m = _log_mixture(log_p, log_q, 1.0 - lam)
    return lam * _kl_terms(log_q, log_m) + (1.0 - lam) * _kl_terms(log_p, log_m)


def _tvd_terms(log_q: Tensor, log_p: Tensor) -> Tensor:
    return 0.5 * (torch.exp(log_p) - torch.exp(log_q)).abs()


def _sfkl_terms(log_q: Tensor, log_p: Tensor, lam: float) -> Tensor:
    """Skew KL (DistiLLM, Ko et al. 2024, eq. 3): KL(p || lam p + (1-lam) q)."""
    return _kl_terms(log_p, _log_mixture(log_p, log_q, lam))


def _srkl_terms(log_q: Tensor, log_p: Tensor, lam: float) -> Tensor:
    """Skew reverse KL (DistiLLM, Ko et al. 2024, eq. 4): KL(q || (1-lam) p + lam q)."""
    return _kl_terms(log_q, _log_mixture(log_q, log_p, lam))


def _floor_for_negative_powers(alpha: float, beta: float, dtype: torch.dtype) -> float | None:
    """The log-probability floor that keeps every negative power finite, or None if no power
    in the divergence has a negative exponent (then nothing is clamped)."""
    growth = max(max(-alpha, 0.0) + max(-beta, 0.0), max(-(alpha + beta), 0.0))
    if growth == 0.0:
        return None
    # A vanishing negative exponent (say -1e-38) would ask for a floor beyond the dtype's range.
    return max(-_MAX_EXP[dtype] / growth, torch.finfo(dtype).min)


# ---------------------------------------------------------------------------------------------
# The alpha-beta divergence as divided differences of exp.
#
# Written this way (derivation in `ab_divergence_terms`) no division by alpha, beta or
# alpha + beta is left: the special cases are ordinary points of smooth functions, and float32
# keeps its accuracy arbitrarily close to them.
# ---------------------------------------------------------------------------------------------

# Spread of the three exponents below which exp[0, h1, h2] is summed as a series: the n-th term
# is at most (n + 1) 0.1^n / (n + 2)!, so 6 terms leave < 1e-8 relative in float32 and 11 leave
# < 1e-17 in float64. Above it, the two-point formula loses at most ~40 ulps to cancellation
# (the ratio of its two terms' sum to their difference is ~4/spread).
_SERIES_SPREAD = 0.1
_SERIES_TERMS = {torch.float32: 6, torch.float64: 11}


def _phi1(t: Tensor) -> Tensor:
    """phi1(t) = (e^t - 1)/t = exp[0, t], with phi1(0) = 1; accurate to a few ulps for every t
    (expm1 is). Forward-only (its autograd derivative would cancel near 0); overwrites nothing."""
    zero = t == 0
    safe = t.masked_fill(zero, 1.0)
    return torch.expm1(safe).div_(safe).masked_fill_(zero, 1.0)


def _exp_divided_difference(h1: Tensor, h2: Tensor) -> Tensor:
    """psi(h1, h2) = exp[0, h1, h2], the second divided difference of exp at 0, h1 and h2, for
    h2 <= h1 <= 0. By Hermite-Genocchi it is the integral of exp(t1 h1 + t2 h2) over the simplex
    t1, t2 >= 0, t1 + t2 <= 1, so it lies in (0, 1/2]: positive and never overflowing.

    - Spread -h2 <= 0.1: psi = sum_n H_n(h1, h2) / (n + 2)!, the Taylor series of the divided
      difference, with H_n(h1, h2) = sum_{i+j=n} h1^i h2^j (so H_n = h1 H_(n-1) + h2^n).
    - Otherwise the two extreme points are at least 0.1 apart and
          psi = (exp[0, h1] - exp[h1, h2]) / (0 - h2) = (phi1(h1) - e^h1 phi1(h2 - h1)) / (-h2).
    Each branch may produce inf/NaN where it is not selected. Forward-only and in place where
    possible (a [chunk, V] temporary is ~100 MB for an LLM vocabulary); the gradient is taken
    in closed form by `_ABTerms`.
    """
    total = torch.full_like(h1, 0.5)
    complete = torch.ones_like(h1)  # H_0
    power = torch.ones_like(h2)
    factorial = 2.0
    for n in range(1, _SERIES_TERMS[h1.dtype]):
        power.mul_(h2)
        complete.mul_(h1).add_(power)
        factorial *= n + 2
        total.add_(complete, alpha=1.0 / factorial)
    del complete, power
    direct = _phi1(h2 - h1).mul_(torch.exp(h1)).neg_().add_(_phi1(h1)).div_(h2.neg())
    return torch.where(h2 >= -_SERIES_SPREAD, total, direct)


def _peak_exponent(sign: float, alpha: float, beta: float) -> tuple[str, float, float]:
    """For entries with sign(ln q - ln p) = `sign`: which exponent is the largest ("B", "C" or
    "A", see `ab_divergence_terms`) and the magnitudes |gap| / |d| of the two gaps from it to
    the others, smaller first. Relative to B the exponents sit at 0, s d and b d; the gaps
    between them are |s d|, |b d| and |a d|, exact multiples of |d|."""
    s = alpha + beta
    positions = {"B": 0.0, "C": sign * s, "A": sign * beta}
    peak = max(positions, key=positions.get)
    gaps = {"B": (abs(s), abs(beta)), "C": (abs(s), abs(alpha)), "A": (abs(beta), abs(alpha))}[peak]
    return peak, min(gaps), max(gaps)


def _ab_terms(log_q: Tensor, log_p: Tensor, alpha: float, beta: float) -> Tensor:
    """The entries d^2 e^M psi(h1, h2) of `ab_divergence_terms` (see there), forward only."""
    s = alpha + beta
    exponents = {
        "B": lambda: log_p * s,
        "C": lambda: log_q * s,
        "A": lambda: (log_p * alpha).add_(log_q, alpha=beta),
    }
    d = log_q - log_p
    distance = d.abs()
    up_peak, up_near, up_far = _peak_exponent(1.0, alpha, beta)
    down_peak, down_near, down_far = _peak_exponent(-1.0, alpha, beta)
    if (up_peak, up_near, up_far) == (down_peak, down_near, down_far):
        peak = exponents[up_peak]()
        h1, h2 = distance * -up_near, distance * -up_far
    else:
        up = d >= 0
        peak = torch.where(up, exponents[up_peak](), exponents[down_peak]())
        h1 = torch.full_like(d, -down_near).masked_fill_(up, -up_near).mul_(distance)
        h2 = torch.full_like(d, -down_far).masked_fill_(up, -up_far).mul_(distance)
    del distance
    return _exp_divided_difference(h1, h2).mul_(peak.exp_()).mul_(d).mul_(d)


def _ab_log_derivative(log_q: Tensor, log_p: Tensor, alpha: float, beta: float) -> Tensor:
    """d(entry)/d(ln q) = (e^C - e^A)/a = d exp[C, A] = d e^max(C, A) phi1(-|a d|): the first
    divided difference of exp, so finite and accurate at a = 0 too (there q^b (ln q - ln p)).
    By the symmetry D^(a,b)(p || q) = D^(b,a)(q || p), d(entry)/d(ln p) is this with
    (q, a) and (p, b) swapped."""
    d = log_q - log_p
    top = torch.maximum(log_q * (alpha + beta), (log_p * alpha).add_(log_q, alpha=beta))
    return _phi1((d * alpha).abs_().neg_()).mul_(top.exp_()).mul_(d)


class _ABTerms(torch.autograd.Function):
    """Element-wise alpha-beta terms with their gradient in closed form (two first divided
    differences), which is both cheaper and more accurate than differentiating the series."""

    @staticmethod
    def forward(log_q: Tensor, log_p: Tensor, alpha: float, beta: float) -> Tensor:
        return _ab_terms(log_q, log_p, alpha, beta)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        log_q, log_p, ctx.alpha, ctx.beta = inputs
        ctx.save_for_backward(log_q, log_p)

    @staticmethod
    def backward(ctx, grad: Tensor):
        log_q, log_p = ctx.saved_tensors
        grad_q = grad * _ab_log_derivative(log_q, log_p, ctx.alpha, ctx.beta) if ctx.needs_input_grad[0] else None
        grad_p = grad * _ab_log_derivative(log_p, log_q, ctx.beta, ctx.alpha) if ctx.needs_input_grad[1] else None
        return grad_q, grad_p, None, None


def _clamp_for_negative_powers(log_q: Tensor, log_p: Tensor, alpha: float, beta: float) -> tuple[Tensor, Tensor]:
    floor = _floor_for_negative_powers(alpha, beta, log_q.dtype)
    if floor is None:
        return log_q, log_p
    return log_q.clamp(min=floor), log_p.clamp(min=floor)


def ab_divergence_terms(log_q: Tensor, log_p: Tensor, alpha: float, beta: float) -> Tensor:
    """Entries of the alpha-beta divergence D_AB(p || q) (Cichocki, Cruces & Amari 2011, eq. 4;
    ABKD, Wang et al., ICML 2025, eq. 6). Shapes [..., V] in, [..., V] out.

    General case:
        D = -1/(ab) sum_k [ p^a q^b - a/(a+b) p^(a+b) - b/(a+b) q^(a+b) ]
    and its continuous limits (the original ABKD code used 1/b and 1/a here, which is not
    continuous in (a, b)):
        a = 0:      1/b^2 sum [ q^b ln(q^b/p^b) - q^b + p^b ]
        b = 0:      1/a^2 sum [ p^a ln(p^a/q^a) - p^a + q^a ]
        a = -b:     1/a^2 sum [ ln(q^a/p^a) + (q^a/p^a)^-1 - 1 ]
        a = b = 0:  1/2 sum (ln p - ln q)^2
    (a, b) = (1, 0) is KL(p||q) and (0, 1) is KL(q||p).

    How it is computed. Per entry let x = ln p, y = ln q, d = y - x, s = a + b, and take the
    three exponents B = s x, C = s y, A = a x + b y. When s != 0, A = w B + (1 - w) C with
    w = a/s, so the bracket is minus a Jensen gap of exp, and for any f
        w f(B) + (1 - w) f(C) - f(w B + (1 - w) C) = w (1 - w) (B - C)^2 f[B, C, A]
    (f[., ., .] the second divided difference). With w (1 - w) = ab/s^2 and (B - C)^2 = s^2 d^2:
        entry = d^2 exp[B, C, A] = d^2 e^M psi(h1, h2),
    where M = max(B, C, A) and h2 <= h1 <= 0 are the other two exponents minus M
    (`_exp_divided_difference`). Relative to B the exponents sit at 0, s d and b d, so M and the
    gaps come without subtracting large rounded exponents. Every special case above is this same
    formula (a = -b: B = C = 0 and exp[0, 0, -a d] = (e^(-a d) - 1 + a d)/(a d)^2), so nothing
    switches at a special case, float32 keeps a few ulps of relative accuracy arbitrarily close
    to one, and every entry is >= 0 by construction.

    The gradient is taken in closed form (`_ab_log_derivative`), not through the series.
    """
    log_q, log_p = _clamp_for_negative_powers(log_q, log_p, alpha, beta)
    if torch.is_grad_enabled() and (log_q.requires_grad or log_p.requires_grad):
        return _ABTerms.apply(log_q, log_p, alpha, beta)
    return _ab_terms(log_q, log_p, alpha, beta)


def ab_grad_weights(log_q: Tensor, log_p: Tensor, alpha: float, beta: float) -> Tensor:
    """u_k such that dD_AB/dz_j = u_j - q_j sum_k u_k for student logits z (temperature 1).

    With q = softmax(z), dq_k/dz_j = q_k (delta_kj - q_j), so dD/dz_j = sum_k (dD/dq_k) q_k
    (delta_kj - q_j), and u_k = (dD/dq_k) q_k = d(entry_k)/d(ln q_k). Differentiating the general
    case, u_k = -(1/a)(p^a q^b - q^(a+b)) = (e^C - e^A)/a = d exp[C, A] in the notation of
    `ab_divergence_terms` (C - A = a d), evaluated as d e^max(C, A) phi1(-|a d|): no division by
    a, so a = 0 (u = q^b (ln q - ln p)) is covered too. FKL (1, 0) gives u = q - p, RKL (0, 1)
    gives u = q (ln q - ln p).
    """
    log_q, log_p = _clamp_for_negative_powers(log_q, log_p, alpha, beta)
    return _ab_log_derivative(log_q, log_p, alpha, beta)


# ---------------------------------------------------------------------------------------------
# Registry and parameter validation.
# ---------------------------------------------------------------------------------------------

_REQUIRED = object()


def _unit_interval(name: str) -> Callable[[float], None]:
    def check(value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"'{name}' must lie in [0, 1], got {value}")

    return check


def _finite(name: str) -> Callable[[float], None]:
    def check(value: float) -> None:
        if not math.isfinite(value):
            raise ValueError(f"'{name}' must be a finite number, got {value}")

    return check


_LAM = (0.1, _unit_interval("lam"))


@dataclass(frozen=True)
class _Divergence:
    """One divergence: its element-wise terms, its parameters ({name: (default or _REQUIRED,
    validator)}) and, when it has one, the closed form of d(entry_k)/d(ln q_k)."""

    terms: Callable[..., Tensor]
    params: dict[str, tuple[Any, Callable[[float], None]]] = field(default_factory=dict)
    log_q_gradient: Callable[..., Tensor] | None = None


_SPECS: dict[str, _Divergence] = {
    "fkl": _Divergence(_fkl_terms, log_q_gradient=_fkl_log_q_gradient),
    "rkl": _Divergence(_rkl_terms, log_q_gradient=_rkl_log_q_gradient),
    "jsd": _Divergence(_jsd_terms, {"lam": _LAM}),
    "tvd": _Divergence(_tvd_terms),
    "sfkl": _Divergence(_sfkl_terms, {"lam": _LAM}),
    "srkl": _Divergence(_srkl_terms, {"lam": _LAM}),
    "ab": _Divergence(
        ab_divergence_terms,
        {"alpha": (_REQUIRED, _finite("alpha")), "beta": (_REQUIRED, _finite("beta"))},
        log_q_gradient=ab_grad_weights,
    ),
}

DIVERGENCES: tuple[str, ...] = tuple(_SPECS)


def resolve_params(name: str, params: Mapping[str, Any]) -> dict[str, float]:
    """Validate `params` for divergence `name` and fill in defaults.

    Raises ValueError naming the valid choices for an unknown name, an unknown parameter or a
    missing required one. `temperature` is not a divergence parameter; pass it separately.
    """
    if name not in _SPECS:
        raise ValueError(f"unknown divergence '{name}'; valid names: {', '.join(DIVERGENCES)}")
    spec = _SPECS[name].params
    unknown = sorted(set(params) - set(spec))
    if unknown:
        valid = ", ".join(spec) or "none"
        raise ValueError(f"divergence '{name}' got unknown parameter(s) {unknown}; valid: {valid}")
    resolved = {}
    for key, (default, check) in spec.items():
        value = params.get(key, default)
        if value is _REQUIRED:
            raise ValueError(f"divergence '{name}' requires parameter '{key}' (all: {', '.join(spec)})")
        value = float(value)
        check(value)
        resolved[key] = value
    return resolved


def check_temperature(temperature: float) -> float:
    temperature = float(temperature)
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")
    return temperature


def divergence_terms(name: str, log_q: Tensor, log_p: Tensor, valid: Tensor, params: Mapping[str, float]) -> Tensor:
    """Per-position divergence from prepared log-probabilities (see `log_probs`); no validation.

    The building block shared by `divergence` and the chunked fused loss.
    """
    terms = _SPECS[name].terms(log_q, log_p, **params)
    return torch.where(valid, terms, terms.new_zeros(())).sum(dim=-1)


def log_q_gradient(name: str) -> Callable[..., Tensor] | None:
    """The closed form u(log_q, log_p, **params) = d(entry_k)/d(ln q_k) of divergence `name`, or
    None if it has none (then differentiate `divergence_terms` instead).

    For q = softmax(z / T) the gradient of the per-position divergence with respect to the
    student logits is then (u_j - q_j sum_k u_k) / T, since d ln q_k / dz_j = (delta_kj - q_j) / T.
    The fused loss uses this to skip autograd's saved intermediates.
    """
    return _SPECS[name].log_q_gradient


def divergence(
    name: str, student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 1.0, **params: float
) -> Tensor:
    """Per-position divergence D(p || q) between teacher p and student q, in nats.

    Args:
        name: one of `DIVERGENCES`.
        student_logits, teacher_logits: [..., V], any float dtype.
        temperature: both distributions are softmax(logits / temperature).
        **params: the divergence's parameters (`lam` for jsd/sfkl/srkl, `alpha`/`beta` for ab).

    Returns:
        [...] (the logits' shape without V), float32 or float64.
    """
    resolved = resolve_params(name, params)
    log_q, log_p, valid = log_probs(student_logits, teacher_logits, check_temperature(temperature))
    return divergence_terms(name, log_q, log_p, valid, resolved)


# ---------------------------------------------------------------------------------------------
# A truncated teacher: its top K tokens and one tail bucket (offline teacher caches).
# ---------------------------------------------------------------------------------------------


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0, accurate near 0 and at -inf (which gives 0)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def teacher_bucket_log_probs(top_logits: Tensor, tail_log_mass: Tensor, temperature: float = 1.0) -> Tensor:
    """The teacher's distribution on K + 1 buckets: its top K tokens, then the tail.

    Args:
        top_logits: [..., K] the teacher's K largest logits (any common shift, e.g. minus the
            row's maximum: softmax does not see it).
        tail_log_mass: [...] ln sum_{j outside the top K} softmax(z / T)_j at this temperature
            (-inf when K = V).
    Returns:
        [..., K + 1] log-probabilities, float32 (float64 for float64 inputs): ln p_k =
        z_k / T - LSE_top(z / T) + ln(1 - tail mass) for the top K, then `tail_log_mass`.
    """
    temperature = check_temperature(temperature)
    dtype = compute_dtype(top_logits)
    scaled = top_logits.to(dtype) / temperature
    tail = tail_log_mass.to(dtype)
    top = scaled - scaled.logsumexp(dim=-1, keepdim=True) + _log1mexp(tail)[..., None]
    return torch.cat([top, tail[..., None]], dim=-1)


def student_bucket_log_probs(log_q: Tensor, teacher_ids: Tensor) -> Tensor:
    """The student's log-probabilities log_q [..., V] coarse-grained on the teacher's buckets:
    [..., K + 1], its log-probability of each of the teacher's top-K ids `teacher_ids` [..., K],
    then ln of its mass outside them (-inf if none is left). The empty-tail case is computed on a
    placeholder, so gradients stay finite."""
    top = log_q.gather(-1, teacher_ids)
    outside = torch.ones_like(log_q, dtype=torch.bool).scatter(-1, teacher_ids, False) & (log_q != -math.inf)
    empty = ~outside.any(dim=-1, keepdim=True)
    tail_input = torch.where(outside, log_q, -math.inf).masked_fill(empty, 0.0)
    tail = torch.where(empty.squeeze(-1), -math.inf, tail_input.logsumexp(dim=-1))
    return torch.cat([top, tail[..., None]], dim=-1)


def bucket_valid(log_q_buckets: Tensor, log_p_buckets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(log_q, log_p, valid) on buckets, sanitised as `log_probs` does: a bucket empty on either
    side (-inf, e.g. the tail when K = V) contributes 0."""
    valid = (log_q_buckets != -math.inf) & (log_p_buckets != -math.inf)
    zero = log_q_buckets.new_zeros(())
    return torch.where(valid, log_q_buckets, zero), torch.where(valid, log_p_buckets, zero), valid


def bucketed_divergence(
    name: str, student_logits: Tensor, teacher_ids: Tensor, teacher_bucket_log_probs: Tensor, *, temperature: float = 1.0, **params: float
) -> Tensor:
    """Per-position D(p || q) between a truncated teacher and the student coarse-grained on it.

    The teacher is given by its top-K token ids `teacher_ids` [..., K] (int64) and its bucket
    log-probabilities [..., K + 1] at `temperature` (`teacher_bucket_log_probs`); the student
    q = softmax(student_logits / T) [..., V] is summed onto the same K + 1 buckets (its tail
    is its whole mass outside the teacher's top K). Every divergence of `DIVERGENCES` applies
    unchanged to the K + 1 entries; with K = V (an empty tail) this is `divergence` exactly.

    Returns [...], float32 or float64.
    """
    resolved = resolve_params(name, params)
    temperature = check_temperature(temperature)
    k = teacher_ids.shape[-1]
    if teacher_bucket_log_probs.shape != (*teacher_ids.shape[:-1], k + 1) or student_logits.shape[:-1] != teacher_ids.shape[:-1]:
        raise ValueError(
            f"teacher_ids {tuple(teacher_ids.shape)} [..., K], teacher_bucket_log_probs {tuple(teacher_bucket_log_probs.shape)} "
            f"[..., K + 1] and student_logits {tuple(student_logits.shape)} [..., V] must agree"
        )
    dtype = compute_dtype(student_logits, teacher_bucket_log_probs)
    log_q = torch.log_softmax(student_logits.to(dtype) / temperature, dim=-1)
    log_q, log_p, valid = bucket_valid(student_bucket_log_probs(log_q, teacher_ids), teacher_bucket_log_probs.to(dtype))
    return divergence_terms(name, log_q, log_p, valid, resolved)


def masked_mean(values: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean of `values` over the positions where `mask` is True (all positions if None).

    An all-masked batch gives exactly 0 with a zero gradient, never NaN; values at masked
    positions (even inf or NaN) do not reach the result.
    """
    if mask is None:
        return values.mean()
    if mask.shape != values.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must match values {tuple(values.shape)}")
    mask = mask.bool()
    total = torch.where(mask, values, values.new_zeros(())).sum()
    return total / mask.sum().clamp(min=1)


class DivergenceLoss(nn.Module):
    """`masked_mean(divergence(name, student_logits, teacher_logits, ...), mask)` as a module."""

    def __init__(self, name: str, temperature: float = 1.0, **params: float):
        super().__init__()
        self.name = name
        self.params = resolve_params(name, params)
        self.temperature = check_temperature(temperature)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None) -> Tensor:
        log_q, log_p, valid = log_probs(student_logits, teacher_logits, self.temperature)
        return masked_mean(divergence_terms(self.name, log_q, log_p, valid, self.params), mask)

    def extra_repr(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"name={self.name!r}, temperature={self.temperature}" + (f", {params}" if params else "")


def get_loss(name: str, **params: float) -> DivergenceLoss:
    """The loss module for `name`; `params` may include `temperature`. Validates at construction."""
    return DivergenceLoss(name, **params)
