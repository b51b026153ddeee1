"""Distillation terms for classification (CIFAR and CLIP), all built on `abkd.losses` over the class axis.

Every term is an `nn.Module` called as `loss(student_logits, teacher_logits, labels, epoch)`
with logits [B, C], labels [B] (int64) and the 0-based epoch, and returns a scalar: the batch
mean of a per-sample divergence (DIST: of its batch relations). `DISTILL_LOSSES` maps each
`--distill` name to its builder; `PromptKDLoss` is the CLIP recipe's reduction of the same terms.
The feature-based terms (CRD, ITRD) live in `abkd.feature_distillation`.

Temperature scaling follows the reference code of each term. `kd`, `ls`, `abls`, `dkd` and
`abdkd` are multiplied by T^2 (Hinton et al., 2015: the gradient of a divergence between
softmax(z / T) distributions shrinks like 1/T^2). `ab` is not: ABKD's CIFAR code
(standard_classification/distiller_zoo/abkl.py) returns the plain batch mean of D_AB and its
scripts choose the KD weight per pair, so `ab` at (alpha, beta) = (1, 0) is `kd` / T^2.
The other divergences of `abkd.losses` (`fkl` = `kd`, `rkl`, `jsd`, `tvd`, `sfkl`, `srkl`) have no
classification reference of their own; they take `kd`'s convention (T^2, batch mean), so that
replacing `kd` by one of them changes the divergence and nothing else. `dist` carries DIST's own
tau^2 (Huang et al., 2022). `ttm`, `wttm` and `abttm` have no temperature: the teacher is
sharpened by a power instead (Zheng & Yang, 2024), and the references apply no factor.

Precision. Every term computes in float32 (float64 stays float64) whatever the logits' dtype;
`autocast_context` is the bf16 opt-in of the CIFAR and CLIP recipes (weights, BatchNorm
statistics and the losses stay float32).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from abkd.losses import check_temperature, compute_dtype, divergence


def _promote(logits: Tensor) -> Tensor:
    """float32 (float64 stays float64), the precision `abkd.losses` computes in."""
    return logits.to(compute_dtype(logits))


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def autocast_context(device: torch.device | str, precision: str):
    """`torch.autocast` to bf16 for precision "bf16" (matmuls and convolutions in bf16, weights
    and BatchNorm in float32), a no-op for "fp32"."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}'; valid: {', '.join(PRECISIONS)}")
    if PRECISIONS[precision] is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=PRECISIONS[precision])


def fp32_deepspeed_config(config: dict) -> dict:
    """`config` with DeepSpeed's fp16/bf16 switched off: the CIFAR and CLIP references train in
    float32 (RepDistiller, ABKD, PromptKD's `PREC: fp32`), and their bf16 opt-in is autocast,
    which keeps the weights, and so the BatchNorm statistics, in float32."""
    return {**config, **{key: {**config.get(key, {}), "enabled": False} for key in ("fp16", "bf16")}}


def standardize(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Per-sample z-score of logits [B, C]: (z - mean) / (std + eps) over classes, in float32 or
    float64. The standard deviation is the unbiased one (divisor C - 1), as in the reference code
    of logit standardisation (Sun et al., CVPR 2024; `logit.std(dim=-1)`) and of ABKD."""
    logits = _promote(logits)
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True, correction=1)
    return (logits - mean) / (std + eps)


class DistillLoss(nn.Module):
    """Batch mean of `divergence(name, student, teacher, temperature=T, **params)`, times T^2
    when `t_squared`, optionally on standardised logits."""

    def __init__(self, name: str, temperature: float, *, standardized: bool = False, t_squared: bool = True, **params: float):
        super().__init__()
        self.name, self.temperature, self.standardized = name, check_temperature(temperature), standardized
        self.t_squared = t_squared
        self.params = params
        divergence(name, torch.zeros(1, 2), torch.zeros(1, 2), temperature=self.temperature, **params)  # validate now

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor | None = None, epoch: int = 0) -> Tensor:
        if self.standardized:
            student_logits, teacher_logits = standardize(student_logits), standardize(teacher_logits)
        per_sample = divergence(self.name, student_logits, teacher_logits, temperature=self.temperature, **self.params)
        return per_sample.mean() * (self.temperature**2 if self.t_squared else 1.0)

    def extra_repr(self) -> str:
        params = "".join(f", {key}={value}" for key, value in self.params.items())
        return f"{self.name}, T={self.temperature}, standardized={self.standardized}, t_squared={self.t_squared}{params}"


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
    b = [p_t, 1 - p_t] of softmax(z / T); NCKD = D(p~_teacher || p~_student) between the
    distributions over the non-target classes only, softmax over C - 1 classes (here the target
    logit is set to -inf, which `abkd.losses` treats as absent). D is KL (mdistiller's DKD), or
    with `ab=(alpha, beta)` the alpha-beta divergence D_AB, ABKD's variant
    (standard_classification/distiller_zoo/dkd.py). The factor min((epoch + 1) / warmup, 1)
    (epoch 0-based) ramps the term in linearly over the first `warmup` epochs, as both references
    do with their 1-based epoch.
    """

    def __init__(self, temperature: float, tckd_weight: float = 1.0, nckd_weight: float = 8.0, warmup: float = 20,
                 ab: tuple[float, float] | None = None):
        super().__init__()
        if warmup < 0:
            raise ValueError(f"--dkd-warmup must be >= 0, got {warmup}")
        self.temperature, self.tckd_weight, self.nckd_weight, self.warmup = check_temperature(temperature), tckd_weight, nckd_weight, warmup
        self.nckd_params = {} if ab is None else {"alpha": float(ab[0]), "beta": float(ab[1])}
        if ab is not None:
            divergence("ab", torch.zeros(1, 2), torch.zeros(1, 2), **self.nckd_params)  # validate now

    def parts(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """(TCKD, NCKD), batch means, without T^2 and weights."""
        T = self.temperature
        # Binary log-probabilities are their own log-softmax, so fkl at T = 1 is the binary KL.
        tckd = divergence("fkl", binary_log_probs(student_logits, labels, T), binary_log_probs(teacher_logits, labels, T))
        mask = target_mask(student_logits, labels)
        nckd = divergence(
            "ab" if self.nckd_params else "fkl",
            _promote(student_logits).masked_fill(mask, -torch.inf), _promote(teacher_logits).masked_fill(mask, -torch.inf),
            temperature=T, **self.nckd_params,
        )
        return tckd.mean(), nckd.mean()

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, epoch: int = 0) -> Tensor:
        tckd, nckd = self.parts(student_logits, teacher_logits, labels)
        ramp = min((epoch + 1) / self.warmup, 1.0) if self.warmup else 1.0
        return ramp * self.temperature**2 * (self.tckd_weight * tckd + self.nckd_weight * nckd)

    def extra_repr(self) -> str:
        nckd = f", nckd=ab{tuple(self.nckd_params.values())}" if self.nckd_params else ""
        return f"T={self.temperature}, tckd_weight={self.tckd_weight}, nckd_weight={self.nckd_weight}, warmup={self.warmup}{nckd}"


def build_kd(*, temperature: float, **_: float) -> nn.Module:
    """Vanilla KD (Hinton et al., 2015): T^2 KL(p_teacher || q_student)."""
    return DistillLoss("fkl", temperature)


def build_ab(*, temperature: float, ab_alpha: float, ab_beta: float, **_: float) -> nn.Module:
    """ABKD (Wang et al., ICML 2025): D_AB^(alpha, beta)(p_teacher || q_student) at temperature T,
    without the T^2 factor, as in ABKD's CIFAR code."""
    return DistillLoss("ab", temperature, t_squared=False, alpha=ab_alpha, beta=ab_beta)


def build_dkd(*, temperature: float, tckd_weight: float, nckd_weight: float, dkd_warmup: float = 0, **_: float) -> nn.Module:
    """Decoupled KD with KL in both parts (Zhao et al., CVPR 2022; mdistiller)."""
    return DKDLoss(temperature, tckd_weight, nckd_weight, dkd_warmup)


def build_abdkd(*, temperature: float, tckd_weight: float, nckd_weight: float, ab_alpha: float, ab_beta: float,
                dkd_warmup: float = 0, **_: float) -> nn.Module:
    """ABKD's DKD: NCKD's KL replaced by D_AB^(alpha, beta) (ABKD, Wang et al., ICML 2025)."""
    return DKDLoss(temperature, tckd_weight, nckd_weight, dkd_warmup, ab=(ab_alpha, ab_beta))


def build_ls(*, temperature: float, **_: float) -> nn.Module:
    """Logit standardisation (Sun et al., CVPR 2024): KD at T between z-scored logits."""
    return DistillLoss("fkl", temperature, standardized=True)


def build_abls(*, temperature: float, ab_alpha: float, ab_beta: float, **_: float) -> nn.Module:
    """The alpha-beta divergence between z-scored logits."""
    return DistillLoss("ab", temperature, standardized=True, alpha=ab_alpha, beta=ab_beta)


# The `abkd.losses` divergences offered under kd's convention (T^2 x batch mean), and the option
# holding each one's mixing weight lam (absent: `abkd.losses`' default, 0.1).
KD_DIVERGENCE_OPTIONS = {"fkl": None, "rkl": None, "jsd": "jsd_lam", "tvd": None, "sfkl": "skew_alpha", "srkl": "skew_alpha"}


def build_divergence(name: str, *, temperature: float, **options: float) -> nn.Module:
    """T^2 x the batch mean of `abkd.losses` divergence `name`, `kd`'s convention: fkl (= kd), rkl,
    jsd (lam = jsd_lam), tvd, and DistiLLM's skew KL / skew reverse KL (Ko et al., ICML 2024,
    eqs. 3-4; lam = skew_alpha)."""
    option = KD_DIVERGENCE_OPTIONS[name]
    params = {"lam": options[option]} if option is not None and options.get(option) is not None else {}
    return DistillLoss(name, temperature, **params)


class TTMLoss(nn.Module):
    """Transformed teacher matching (Zheng & Yang, ICLR 2024, "Knowledge distillation based on
    transformed teacher matching"): the student at temperature 1 against the teacher's power
    transform p~ = p^gamma / sum_k p_k^gamma, p = softmax(teacher_logits).

      ttm   mean_B D(p~ || q)
      wttm  mean_B U_gamma(p) D(p~ || q), with the power sum U_gamma(p) = sum_k p_k^gamma as the
            sample-adaptive weight (WTTM)

    D is KL (the paper's), or with `ab=(alpha, beta)` the alpha-beta divergence, ABKD's TTM variant
    (its train_ttm.sh: "ABTTM degenerates to TTM when choosing alpha=1 and beta=0"). Logits [B, C]
    in, a scalar out; no T^2 (the reference codes apply none). gamma = `exponent` (the references'
    `--ttm_l`) is the inverse of a teacher temperature: p~ = softmax(gamma * teacher_logits), which
    is how it is computed (in log space, so no power of an underflowed probability is taken).
    """

    def __init__(self, exponent: float, *, weighted: bool = False, ab: tuple[float, float] | None = None):
        super().__init__()
        exponent = float(exponent)
        if not (math.isfinite(exponent) and exponent > 0):
            raise ValueError(f"--ttm-exponent must be a positive finite number, got {exponent}")
        self.exponent, self.weighted = exponent, weighted
        self.name, self.params = ("fkl", {}) if ab is None else ("ab", {"alpha": float(ab[0]), "beta": float(ab[1])})
        divergence(self.name, torch.zeros(1, 2), torch.zeros(1, 2), **self.params)  # validate now

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor | None = None, epoch: int = 0) -> Tensor:
        log_powered = self.exponent * torch.log_softmax(_promote(teacher_logits), dim=-1)  # log p^gamma
        per_sample = divergence(self.name, student_logits, log_powered, **self.params)
        if self.weighted:
            per_sample = per_sample * torch.logsumexp(log_powered, dim=-1).exp()
        return per_sample.mean()

    def extra_repr(self) -> str:
        params = "".join(f", {key}={value}" for key, value in self.params.items())
        return f"{self.name}, exponent={self.exponent}, weighted={self.weighted}{params}"


def build_ttm(*, ttm_exponent: float, **_: float) -> nn.Module:
    """TTM: KL(p^gamma / sum p^gamma || q) (Zheng & Yang, ICLR 2024)."""
    return TTMLoss(ttm_exponent)


def build_wttm(*, ttm_exponent: float, **_: float) -> nn.Module:
    """WTTM: TTM weighted per sample by the power sum sum_k p_k^gamma (Zheng & Yang, ICLR 2024)."""
    return TTMLoss(ttm_exponent, weighted=True)


def build_abttm(*, ttm_exponent: float, ab_alpha: float, ab_beta: float, **_: float) -> nn.Module:
    """ABKD's TTM: D_AB^(alpha, beta)(p^gamma / sum p^gamma || q) (ABKD's distiller_zoo/ttm.py)."""
    return TTMLoss(ttm_exponent, ab=(ab_alpha, ab_beta))


def pearson(a: Tensor, b: Tensor, dim: int, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of a and b along `dim`, with `eps` added to the product of the norms of
    the centred vectors (DIST's reference code), so that a constant vector correlates 0."""
    a, b = a - a.mean(dim=dim, keepdim=True), b - b.mean(dim=dim, keepdim=True)
    return (a * b).sum(dim=dim) / (a.norm(dim=dim) * b.norm(dim=dim) + eps)


class DISTLoss(nn.Module):
    """DIST (Huang et al., NeurIPS 2022, "Knowledge distillation from a stronger teacher"):
    with Y = softmax(logits / tau) [B, C] of student and teacher,

      inter = 1 - mean_i rho(Y_s[i, :], Y_t[i, :])   (each sample's class relation)
      intra = 1 - mean_j rho(Y_s[:, j], Y_t[:, j])   (each class's relation over the batch)
      loss  = tau^2 (inter_weight inter + intra_weight intra)

    rho is the Pearson correlation (`pearson`). The paper's beta and gamma are `inter_weight` and
    `intra_weight` here; the tau^2 factor is the reference code's. A batch relation, not a batch
    mean of per-sample values, so it is not divided by the class count in the CLIP recipe either.
    """

    def __init__(self, temperature: float, inter_weight: float = 1.0, intra_weight: float = 1.0):
        super().__init__()
        self.temperature, self.inter_weight, self.intra_weight = check_temperature(temperature), float(inter_weight), float(intra_weight)

    def parts(self, student_logits: Tensor, teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
        """(inter, intra), without tau^2 and weights."""
        student = torch.softmax(_promote(student_logits) / self.temperature, dim=-1)
        teacher = torch.softmax(_promote(teacher_logits) / self.temperature, dim=-1)
        return 1 - pearson(student, teacher, dim=1).mean(), 1 - pearson(student, teacher, dim=0).mean()

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor | None = None, epoch: int = 0) -> Tensor:
        inter, intra = self.parts(student_logits, teacher_logits)
        return self.temperature**2 * (self.inter_weight * inter + self.intra_weight * intra)

    def extra_repr(self) -> str:
        return f"tau={self.temperature}, inter_weight={self.inter_weight}, intra_weight={self.intra_weight}"


def build_dist(*, dist_temperature: float, dist_inter_weight: float = 1.0, dist_intra_weight: float = 1.0, **_: float) -> nn.Module:
    """DIST (Huang et al., NeurIPS 2022): tau^2 (beta inter-class + gamma intra-class relation)."""
    return DISTLoss(dist_temperature, dist_inter_weight, dist_intra_weight)


DISTILL_LOSSES: dict[str, Callable[..., nn.Module]] = {
    "kd": build_kd,
    **{name: functools.partial(build_divergence, name) for name in KD_DIVERGENCE_OPTIONS},
    "ab": build_ab,
    "dkd": build_dkd,
    "abdkd": build_abdkd,
    "ls": build_ls,
    "abls": build_abls,
    "ttm": build_ttm,
    "wttm": build_wttm,
    "abttm": build_abttm,
    "dist": build_dist,
}
# Terms the CIFAR recipe can add beside the main one (ABKD's `--add`, weighted by `-a`).
ADD_LOSSES = ("kd", "ttm", "wttm")


def build_distill_loss(name: str, **options: float) -> nn.Module:
    """The distillation term `name` with its options (temperature, ab_alpha, ab_beta, tckd_weight,
    nckd_weight, dkd_warmup, jsd_lam, skew_alpha, ttm_exponent, dist_temperature,
    dist_inter_weight, dist_intra_weight; each builder takes the ones it needs). Unknown name ->
    ValueError listing the valid names."""
    if name not in DISTILL_LOSSES:
        raise ValueError(f"unknown distillation loss '{name}'; valid names: {', '.join(DISTILL_LOSSES)}")
    return DISTILL_LOSSES[name](**options)


# ---------------------------------------------------------------------------------------------
# PromptKD's reduction (base_to_new_classification).
# ---------------------------------------------------------------------------------------------

# The terms the CLIP recipe is run with and the command-line parameters each needs.
PROMPTKD_LOSSES: dict[str, tuple[str, ...]] = {
    "kd": (),
    **{name: () if option is None else (option,) for name, option in KD_DIVERGENCE_OPTIONS.items()},
    "dkd": ("tckd_weight", "nckd_weight"),
    "ls": (),
    "ab": ("ab_alpha", "ab_beta"),
    "ttm": ("ttm_exponent",),
    "dist": ("dist_temperature", "dist_inter_weight", "dist_intra_weight"),
}
# Whether the term is divided by the class count C. ABKD's PromptKD trainer: losses/kd.py and the
# `ls` branch of trainers/promptkd.py sum over batch and classes and divide by B * C (kl_div(sum) /
# numel); losses/abkl.py, losses/dkd.py and losses/ttm.py average over the batch only; losses/dist.py
# averages correlations. The divergences without a PromptKD reference (fkl = kd, rkl, jsd, tvd, sfkl,
# srkl) replace kd's KL in kd's formula, so they keep its T^2 / C: switching kd to one of them at the
# same --kd-ratio (PromptKD's KD_WEIGHT, tuned for that scale) changes the divergence only.
PROMPTKD_PER_CLASS = {"kd": True, **dict.fromkeys(KD_DIVERGENCE_OPTIONS, True), "ls": True, "ab": False, "dkd": False, "ttm": False, "dist": False}
# The command-line flag of each parameter, for the error that names a missing one.
FLAGS = {
    "ab_alpha": "--ab_alpha", "ab_beta": "--ab_beta", "tckd_weight": "--tckd-weight", "nckd_weight": "--nckd-weight",
    "jsd_lam": "--jsd-lam", "skew_alpha": "--skew-alpha", "ttm_exponent": "--ttm-exponent", "dist_temperature": "--dist-temperature",
    "dist_inter_weight": "--dist-inter-weight", "dist_intra_weight": "--dist-intra-weight",
}  # fmt: skip


class PromptKDLoss:
    """ABKD's PromptKD objective, `kd_ratio * term` for logits [B, C], labels [B], 0-based epoch:

      kd, fkl, rkl, jsd, tvd, sfkl, srkl, ls
              T^2 * mean_B D(teacher || student) / C (PromptKD's "/ stu_logits.numel()"; ls on z-scores)
      ab      mean_B D_AB(teacher || student), no T^2 and no / C
      dkd     min((epoch + 1) / warmup, 1) * T^2 * (w_t TCKD + w_n NCKD), batch mean, with the
              ground-truth labels as the target class (ABKD's trainers/promptkd.py passes `label`)
      ttm     mean_B KL(p^gamma / sum p^gamma || q) at T = 1, no / C (ABKD's losses/ttm.py)
      dist    tau^2 (beta inter + gamma intra), DIST at its own tau, no / C (ABKD's losses/dist.py)
    """

    def __init__(self, name: str, *, temperature: float, kd_ratio: float, num_classes: int, dkd_warmup: float = 0,
                 **params: float | None):
        if name not in PROMPTKD_LOSSES:
            raise ValueError(f"unknown distillation loss '{name}'; valid names: {', '.join(PROMPTKD_LOSSES)}")
        missing = [key for key in PROMPTKD_LOSSES[name] if params.get(key) is None]
        if missing:
            raise ValueError(f"--distill {name} requires {', '.join(FLAGS[key] for key in missing)}")
        options = {key: float(params[key]) for key in PROMPTKD_LOSSES[name]}
        self.name, self.kd_ratio, self.num_classes = name, float(kd_ratio), num_classes
        self.divisor = num_classes if PROMPTKD_PER_CLASS[name] else 1
        self.loss = build_distill_loss(name, temperature=check_temperature(temperature), dkd_warmup=dkd_warmup, **options)

    def __call__(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor | None = None, epoch: int = 0) -> Tensor:
        if self.name == "dkd" and labels is None:
            raise ValueError("--distill dkd needs the images' labels (its target class)")
        return self.kd_ratio * self.loss(student_logits, teacher_logits, labels, epoch) / self.divisor


# ---------------------------------------------------------------------------------------------
# The supervised objective of the CIFAR recipe, in the interface of `abkd.run`.
# ---------------------------------------------------------------------------------------------


class StudentWithTerm(nn.Module):
    """The student and a distillation term that has state of its own (CRD's and ITRD's embeddings,
    CRD's memory bank), as one module: the DeepSpeed engine built on it optimises the term's
    parameters with the student's and checkpoints both, buffers included. Calling it runs the
    student; `student` alone is what is evaluated and saved in the zoo's format."""

    def __init__(self, student: nn.Module, term: nn.Module):
        super().__init__()
        self.student, self.term = student, term

    def forward(self, *args, **kwargs):
        return self.student(*args, **kwargs)


def trained_module(student: nn.Module, term: nn.Module | None) -> nn.Module:
    """What the engine trains: `student`, or `StudentWithTerm` when the term has parameters or
    buffers (so that the module, and its checkpoints, stay the student's for every other term)."""
    if term is None or not (any(True for _ in term.parameters()) or any(True for _ in term.buffers())):
        return student
    return StudentWithTerm(student, term)


class LogitDistillation:
    """`ce_weight * CE(student) + kd_ratio * distill + add_weight * add` on a batch (images [B, ...],
    labels [B], then whatever the term needs: CRD's sample and contrast indices); without a
    teacher, cross-entropy only (teacher training).

    `distill` is a logit term (called on student and teacher logits, labels and the epoch) or,
    when it has `uses_features` set, a feature term (`abkd.feature_distillation`), called on the
    penultimate features of `student(x, is_feat=True)` and `teacher(x, is_feat=True)` and the
    batch's extra entries. `add` is an optional second logit term (ABKD's `--add`).

    Called on a batch it returns `(loss, parts)`, the objective interface of `abkd.run`: parts
    are detached scalars, "ce", "kd" and "add" (with a teacher and those terms) and "acc" (top-1 %
    on the batch). `epoch` (0-based) is set by the caller for terms with an epoch warm-up (DKD).
    With precision "bf16" the forward passes run under `autocast_context`; the losses are float32
    either way.
    """

    def __init__(self, student, *, ce_weight: float = 1.0, kd_ratio: float = 0.0, teacher: nn.Module | None = None,
                 distill: nn.Module | None = None, precision: str = "fp32", add: nn.Module | None = None, add_weight: float = 0.0):
        if (teacher is None) != (distill is None):
            raise ValueError("a teacher and a distillation term go together")
        if add is not None and teacher is None:
            raise ValueError("an additional distillation term needs a teacher")
        autocast_context("cpu", precision)  # validates the name
        self.student, self.teacher, self.distill, self.add = student, teacher, distill, add
        self.ce_weight, self.kd_ratio, self.add_weight, self.precision = ce_weight, kd_ratio, add_weight, precision
        self.features = bool(getattr(distill, "uses_features", False))
        self.epoch = 0

    def __call__(self, batch: tuple[Tensor, ...]) -> tuple[Tensor, dict[str, Tensor]]:
        images, labels, *extra = batch
        with autocast_context(images.device, self.precision):
            student_out = self.student(images, is_feat=True) if self.features else self.student(images)
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_out = self.teacher(images, is_feat=True) if self.features else self.teacher(images)
        student_logits = student_out[1] if self.features else student_out
        ce = torch.nn.functional.cross_entropy(student_logits.float(), labels)
        parts = {"ce": ce.detach(), "acc": 100.0 * (student_logits.argmax(dim=-1) == labels).float().mean()}
        loss = self.ce_weight * ce
        if self.teacher is not None:
            teacher_logits = teacher_out[1] if self.features else teacher_out
            if self.features:  # the pooled vector, the last of the models' features
                kd = self.distill(student_out[0][-1].float(), teacher_out[0][-1].float(), *extra)
            else:
                kd = self.distill(student_logits, teacher_logits, labels, self.epoch)
            parts["kd"] = kd.detach()
            loss = loss + self.kd_ratio * kd
            if self.add is not None:
                add = self.add(student_logits, teacher_logits, labels, self.epoch)
                parts["add"] = add.detach()
                loss = loss + self.add_weight * add
        return loss, parts
