"""Distillation terms for classification, all built on `abkd.losses` over the class axis.

Every term is an `nn.Module` called as `loss(student_logits, teacher_logits, labels, epoch)`
with logits [B, C], labels [B] (int64) and the 0-based epoch, and returns a scalar: the batch
mean of a per-sample divergence. `DISTILL_LOSSES` maps each `--distill` name to its builder.

Temperature scaling. Every term is multiplied by T^2 (Hinton et al., 2015): the gradient of a
divergence between softmax(z / T) distributions shrinks like 1/T^2, and the factor keeps the
distillation gradient on the scale of the cross-entropy's whatever T is. For `ab` the same
factor is used, so `ab` at (alpha, beta) = (1, 0) is exactly `kd`, and a sweep over (alpha, beta)
compares divergences at one scale (ABKD, Wang et al., ICML 2025).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from abkd.losses import check_temperature, compute_dtype, divergence


def _promote(logits: Tensor) -> Tensor:
    """float32 (float64 stays float64), the precision `abkd.losses` computes in."""
    return logits.to(compute_dtype(logits))


def standardize(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Per-sample z-score of logits [B, C]: (z - mean) / (std + eps) over classes, with the
    population standard deviation (Sun et al., CVPR 2024, eq. 9), in float32 or float64."""
    logits = _promote(logits)
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True, correction=0)
    return (logits - mean) / (std + eps)


class DistillLoss(nn.Module):
    """Batch mean of `divergence(name, student, teacher, temperature=T, **params)` x T^2,
    optionally on standardised logits."""

    def __init__(self, name: str, temperature: float, *, standardized: bool = False, **params: float):
        super().__init__()
        self.name, self.temperature, self.standardized = name, check_temperature(temperature), standardized
        self.params = params
        divergence(name, torch.zeros(1, 2), torch.zeros(1, 2), temperature=self.temperature, **params)  # validate now

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor | None = None, epoch: int = 0) -> Tensor:
        if self.standardized:
            student_logits, teacher_logits = standardize(student_logits), standardize(teacher_logits)
        per_sample = divergence(self.name, student_logits, teacher_logits, temperature=self.temperature, **self.params)
        return per_sample.mean() * self.temperature**2

    def extra_repr(self) -> str:
        params = "".join(f", {key}={value}" for key, value in self.params.items())
        return f"{self.name}, T={self.temperature}, standardized={self.standardized}{params}"


def binary_log_probs(logits: Tensor, target: Tensor, temperature: float) -> Tensor:
    """[B, 2] log-probabilities (target class, all other classes) of softmax(logits / T)."""
    log_probs = torch.log_softmax(_promote(logits) / temperature, dim=-1)
    log_target = log_probs.gather(1, target[:, None])
    log_other = log_probs.masked_fill(target_mask(logits, target), -torch.inf).logsumexp(dim=-1, keepdim=True)
    return torch.cat([log_target, log_other], dim=1)


def target_mask(logits: Tensor, target: Tensor) -> Tensor:
    return torch.zeros_like(logits, dtype=torch.bool).scatter_(1, target[:, None], True)


class DKDLoss(nn.Module):
    """Decoupled KD (Zhao et al., CVPR 2022, eq. 7): warmup(epoch) x T^2 x (alpha TCKD + beta NCKD).

    TCKD = KL(b_teacher || b_student) between the binary (target, non-target) distributions
    b = [p_t, 1 - p_t] of softmax(z / T); NCKD = KL(p~_teacher || p~_student) between the
    distributions over the non-target classes only, softmax over C - 1 classes (here the target
    logit is set to -inf, which `abkd.losses` treats as absent). The factor min((epoch + 1) /
    warmup, 1) ramps the term in linearly over the first `warmup` epochs, as in the paper's code.
    """

    def __init__(self, temperature: float, alpha: float = 1.0, beta: float = 8.0, warmup: int = 20):
        super().__init__()
        if warmup < 0:
            raise ValueError(f"--dkd_warmup must be >= 0, got {warmup}")
        self.temperature, self.alpha, self.beta, self.warmup = check_temperature(temperature), alpha, beta, warmup

    def parts(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """(TCKD, NCKD), batch means, without T^2 and weights."""
        T = self.temperature
        # Binary log-probabilities are their own log-softmax, so fkl at T = 1 is the binary KL.
        tckd = divergence("fkl", binary_log_probs(student_logits, labels, T), binary_log_probs(teacher_logits, labels, T))
        mask = target_mask(student_logits, labels)
        nckd = divergence(
            "fkl", _promote(student_logits).masked_fill(mask, -torch.inf), _promote(teacher_logits).masked_fill(mask, -torch.inf), temperature=T
        )
        return tckd.mean(), nckd.mean()

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, epoch: int = 0) -> Tensor:
        tckd, nckd = self.parts(student_logits, teacher_logits, labels)
        ramp = min((epoch + 1) / self.warmup, 1.0) if self.warmup else 1.0
        return ramp * self.temperature**2 * (self.alpha * tckd + self.beta * nckd)

    def extra_repr(self) -> str:
        return f"T={self.temperature}, alpha={self.alpha}, beta={self.beta}, warmup={self.warmup}"


def build_kd(*, temperature: float, **_: float) -> nn.Module:
    """Vanilla KD (Hinton et al., 2015): T^2 KL(p_teacher || q_student)."""
    return DistillLoss("fkl", temperature)


def build_ab(*, temperature: float, ab_alpha: float, ab_beta: float, **_: float) -> nn.Module:
    """ABKD (Wang et al., ICML 2025): T^2 D_AB^(alpha, beta)(p_teacher || q_student)."""
    return DistillLoss("ab", temperature, alpha=ab_alpha, beta=ab_beta)


def build_dkd(*, temperature: float, dkd_alpha: float, dkd_beta: float, dkd_warmup: int, **_: float) -> nn.Module:
    return DKDLoss(temperature, dkd_alpha, dkd_beta, dkd_warmup)


def build_ls(*, temperature: float, **_: float) -> nn.Module:
    """Logit standardisation (Sun et al., CVPR 2024): KD at T between z-scored logits."""
    return DistillLoss("fkl", temperature, standardized=True)


def build_abls(*, temperature: float, ab_alpha: float, ab_beta: float, **_: float) -> nn.Module:
    """The alpha-beta divergence between z-scored logits."""
    return DistillLoss("ab", temperature, standardized=True, alpha=ab_alpha, beta=ab_beta)


DISTILL_LOSSES: dict[str, Callable[..., nn.Module]] = {
    "kd": build_kd,
    "ab": build_ab,
    "dkd": build_dkd,
    "ls": build_ls,
    "abls": build_abls,
}


def build_distill_loss(name: str, **options: float) -> nn.Module:
    """The distillation term `name` with its options (temperature, ab_alpha, ab_beta, dkd_alpha,
    dkd_beta, dkd_warmup; each builder takes the ones it needs). Unknown name -> ValueError."""
    if name not in DISTILL_LOSSES:
        raise ValueError(f"unknown distillation loss '{name}'; valid names: {', '.join(DISTILL_LOSSES)}")
    return DISTILL_LOSSES[name](**options)
