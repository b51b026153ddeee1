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
from typing import Any

import torch
from torch import Tensor, nn

# Near a special case the general alpha-beta formula divides a cancelling difference by a
# vanishing alpha*beta; within this distance of 0 the exact limit is used instead. The jump
# this introduces is O(_SPECIAL_TOL) relative, far below float32 resolution of the result.
_SPECIAL_TOL = 1e-6

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


def _is_zero(x: float) -> bool:
    return abs(x) < _SPECIAL_TOL


def _floor_for_negative_powers(alpha: float, beta: float, dtype: torch.dtype) -> float | None:
    """The log-probability floor that keeps every negative power finite, or None if no power
    in the divergence has a negative exponent (then nothing is clamped)."""
    growth = max(max(-alpha, 0.0) + max(-beta, 0.0), max(-(alpha + beta), 0.0))
    if growth == 0.0:
        return None
    return -_MAX_EXP[dtype] / growth


def ab_divergence_terms(log_q: Tensor, log_p: Tensor, alpha: float, beta: float) -> Tensor:
    """Entries of the alpha-beta divergence D_AB(p || q) (Cichocki, Cruces & Amari 2011, eq. 4;
    ABKD, Wang et al., ICML 2025, eq. 6). Shapes [..., V] in, [..., V] out.

    General case:
        D = -1/(ab) sum_k [ p^a q^b - a/(a+b) p^(a+b) - b/(a+b) q^(a+b) ]
    and the continuous limits (the original ABKD code used 1/b and 1/a here, which is not
    continuous in (a, b)):
        a = 0:      1/b^2 sum [ q^b ln(q^b/p^b) - q^b + p^b ]
        b = 0:      1/a^2 sum [ p^a ln(p^a/q^a) - p^a + q^a ]
        a = -b:     1/a^2 sum [ ln(q^a/p^a) + (q^a/p^a)^-1 - 1 ]
        a = b = 0:  1/2 sum (ln p - ln q)^2
    (a, b) = (1, 0) is KL(p||q) and (0, 1) is KL(q||p). Powers are taken in log space.
    """
    floor = _floor_for_negative_powers(alpha, beta, log_q.dtype)
    if floor is not None:
        log_q = log_q.clamp(min=floor)
        log_p = log_p.clamp(min=floor)
    a0, b0, s0 = _is_zero(alpha), _is_zero(beta), _is_zero(alpha + beta)
    if a0 and b0:
        return 0.5 * (log_p - log_q) ** 2
    if a0:
        q_b = torch.exp(beta * log_q)
        return (q_b * beta * (log_q - log_p) - q_b + torch.exp(beta * log_p)) / beta**2
    if b0:
        p_a = torch.exp(alpha * log_p)
        return (p_a * alpha * (log_p - log_q) - p_a + torch.exp(alpha * log_q)) / alpha**2
    if s0:
        log_ratio = alpha * (log_q - log_p)  # ln(q^a / p^a)
        return (log_ratio + torch.exp(-log_ratio) - 1.0) / alpha**2
    s = alpha + beta
    cross = torch.exp(alpha * log_p + beta * log_q)
    return -(cross - alpha / s * torch.exp(s * log_p) - beta / s * torch.exp(s * log_q)) / (
        alpha * beta
    )


def ab_grad_weights(log_q: Tensor, log_p: Tensor, alpha: float, beta: float) -> Tensor:
    """u_k such that dD_AB/dz_j = u_j - q_j sum_k u_k for student logits z (temperature 1).

    With q = softmax(z), dq_k/dz_j = q_k (delta_kj - q_j), so dD/dz_j = sum_k (dD/dq_k) q_k
    (delta_kj - q_j). Differentiating the general case, (dD/dq_k) q_k = -(1/a)(p^a q^b - q^(a+b)),
    which is already right at b = 0 and at a = -b (both limits give the same expression). Only
    a = 0 needs its own limit: u_k = q^b (ln q - ln p); at a = b = 0 that is ln q - ln p.
    FKL (1, 0) gives u = q - p, RKL (0, 1) gives u = q (ln q - ln p).
    """
    floor = _floor_for_negative_powers(alpha, beta, log_q.dtype)
    if floor is not None:
        log_q = log_q.clamp(min=floor)
        log_p = log_p.clamp(min=floor)
    if _is_zero(alpha):
        return torch.exp(beta * log_q) * (log_q - log_p)
    return (torch.exp((alpha + beta) * log_q) - torch.exp(alpha * log_p + beta * log_q)) / alpha


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

# name -> (element-wise terms, {param: (default or _REQUIRED, validator)})
_SPECS: dict[str, tuple[Callable[..., Tensor], dict[str, tuple[Any, Callable[[float], None]]]]] = {
    "fkl": (_fkl_terms, {}),
    "rkl": (_rkl_terms, {}),
    "jsd": (_jsd_terms, {"lam": _LAM}),
    "tvd": (_tvd_terms, {}),
    "sfkl": (_sfkl_terms, {"lam": _LAM}),
    "srkl": (_srkl_terms, {"lam": _LAM}),
    "ab": (ab_divergence_terms, {"alpha": (_REQUIRED, _finite("alpha")), "beta": (_REQUIRED, _finite("beta"))}),
}

DIVERGENCES: tuple[str, ...] = tuple(_SPECS)


def resolve_params(name: str, params: Mapping[str, Any]) -> dict[str, float]:
    """Validate `params` for divergence `name` and fill in defaults.

    Raises ValueError naming the valid choices for an unknown name, an unknown parameter or a
    missing required one. `temperature` is not a divergence parameter; pass it separately.
    """
    if name not in _SPECS:
        raise ValueError(f"unknown divergence '{name}'; valid names: {', '.join(DIVERGENCES)}")
    spec = _SPECS[name][1]
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
    terms = _SPECS[name][0](log_q, log_p, **params)
    return torch.where(valid, terms, terms.new_zeros(())).sum(dim=-1)


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
