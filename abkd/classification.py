"""Distillation terms for classification (CIFAR and CLIP), all built on `abkd.losses` over the class axis.

Every term is an `nn.Module` called as `loss(student_logits, teacher_logits, labels, epoch)`
with logits [B, C], labels [B] (int64) and the 0-based epoch, and returns a scalar: the batch
mean of a per-sample divergence. `DISTILL_LOSSES` maps each `--distill` name to its builder;
`PromptKDLoss` is the CLIP recipe's reduction of the same terms.

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
    """Decoupled KD (Zhao et al., CVPR 2022, eq. 7): warmup(epoch) x T^2 x (w_t TCKD + w_n NCKD).

    The paper calls the weights w_t, w_n alpha and beta; here they are `tckd_weight` and
    `nckd_weight`, so that alpha/beta always mean the alpha-beta divergence's parameters.

    TCKD = KL(b_teacher || b_student) between the binary (target, non-target) distributions
    b = [p_t, 1 - p_t] of softmax(z / T); NCKD = KL(p~_teacher || p~_student) between the
    distributions over the non-target classes only, softmax over C - 1 classes (here the target
    logit is set to -inf, which `abkd.losses` treats as absent). The factor min((epoch + 1) /
    warmup, 1) ramps the term in linearly over the first `warmup` epochs, as in the paper's code.
    """

    def __init__(self, temperature: float, tckd_weight: float = 1.0, nckd_weight: float = 8.0, warmup: int = 20):
        super().__init__()
        if warmup < 0:
            raise ValueError(f"--dkd-warmup must be >= 0, got {warmup}")
        self.temperature, self.tckd_weight, self.nckd_weight, self.warmup = check_temperature(temperature), tckd_weight, nckd_weight, warmup

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
        return ramp * self.temperature**2 * (self.tckd_weight * tckd + self.nckd_weight * nckd)

    def extra_repr(self) -> str:
        return f"T={self.temperature}, tckd_weight={self.tckd_weight}, nckd_weight={self.nckd_weight}, warmup={self.warmup}"


def build_kd(*, temperature: float, **_: float) -> nn.Module:
    """Vanilla KD (Hinton et al., 2015): T^2 KL(p_teacher || q_student)."""
    return DistillLoss("fkl", temperature)


def build_ab(*, temperature: float, ab_alpha: float, ab_beta: float, **_: float) -> nn.Module:
    """ABKD (Wang et al., ICML 2025): T^2 D_AB^(alpha, beta)(p_teacher || q_student)."""
    return DistillLoss("ab", temperature, alpha=ab_alpha, beta=ab_beta)


def build_dkd(*, temperature: float, tckd_weight: float, nckd_weight: float, dkd_warmup: int = 0, **_: float) -> nn.Module:
    return DKDLoss(temperature, tckd_weight, nckd_weight, dkd_warmup)


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
    """The distillation term `name` with its options (temperature, ab_alpha, ab_beta, tckd_weight,
    nckd_weight, dkd_warmup; each builder takes the ones it needs). Unknown name -> ValueError."""
    if name not in DISTILL_LOSSES:
        raise ValueError(f"unknown distillation loss '{name}'; valid names: {', '.join(DISTILL_LOSSES)}")
    return DISTILL_LOSSES[name](**options)


# ---------------------------------------------------------------------------------------------
# PromptKD's reduction (base_to_new_classification).
# ---------------------------------------------------------------------------------------------

# The terms PromptKD is run with, and the command-line parameters each needs.
PROMPTKD_LOSSES: dict[str, tuple[str, ...]] = {
    "kd": (),
    "dkd": ("tckd_weight", "nckd_weight"),
    "ls": (),
    "ab": ("ab_alpha", "ab_beta"),
}


class PromptKDLoss:
    """`kd_ratio * T^2 * mean_B D(teacher || student) / num_classes` for logits [B, C].

    PromptKD sums the KL over batch and classes and divides by B*C ("/ stu_logits.numel()"), so
    its KD_WEIGHT values carry over unchanged as `kd_ratio`. It trains on unlabeled images, so
    DKD's target class is the teacher's prediction and DKD's epoch warm-up is off.
    """

    def __init__(self, name: str, *, temperature: float, kd_ratio: float, num_classes: int, **params: float | None):
        if name not in PROMPTKD_LOSSES:
            raise ValueError(f"unknown distillation loss '{name}'; valid names: {', '.join(PROMPTKD_LOSSES)}")
        missing = [key for key in PROMPTKD_LOSSES[name] if params.get(key) is None]
        if missing:
            raise ValueError(f"--distill {name} requires {', '.join('--' + key.replace('_weight', '-weight') for key in missing)}")
        options = {key: float(params[key]) for key in PROMPTKD_LOSSES[name]}
        self.name, self.kd_ratio, self.num_classes = name, float(kd_ratio), num_classes
        self.loss = build_distill_loss(name, temperature=check_temperature(temperature), **options)

    def __call__(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        target = teacher_logits.argmax(dim=-1)  # used by dkd only
        return self.kd_ratio * self.loss(student_logits, teacher_logits, target, 0) / self.num_classes


# ---------------------------------------------------------------------------------------------
# The supervised objective of the CIFAR recipe, in the interface of `abkd.run`.
# ---------------------------------------------------------------------------------------------


class LogitDistillation:
    """`ce_weight * CE(student) + kd_ratio * distill(student_logits, teacher_logits)` on a batch
    (images [B, ...], labels [B]); without a teacher, cross-entropy only (teacher training).

    Called on a batch it returns `(loss, parts)`, the objective interface of `abkd.run`: parts
    are detached scalars, "ce", "kd" (with a teacher) and "acc" (top-1 % on the batch).
    `epoch` (0-based) is set by the caller for terms with an epoch warm-up (DKD).
    """

    def __init__(self, student, *, ce_weight: float = 1.0, kd_ratio: float = 0.0, teacher: nn.Module | None = None,
                 distill: nn.Module | None = None, dtype: torch.dtype = torch.float32):
        if (teacher is None) != (distill is None):
            raise ValueError("a teacher and a distillation term go together")
        self.student, self.teacher, self.distill = student, teacher, distill
        self.ce_weight, self.kd_ratio, self.dtype = ce_weight, kd_ratio, dtype
        self.epoch = 0

    def __call__(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        images, labels = batch
        images = images.to(self.dtype)
        student_logits = self.student(images)
        ce = torch.nn.functional.cross_entropy(student_logits.float(), labels)
        parts = {"ce": ce.detach(), "acc": 100.0 * (student_logits.argmax(dim=-1) == labels).float().mean()}
        loss = self.ce_weight * ce
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(images)
            kd = self.distill(student_logits, teacher_logits, labels, self.epoch)
            parts["kd"] = kd.detach()
            loss = loss + self.kd_ratio * kd
        return loss, parts
