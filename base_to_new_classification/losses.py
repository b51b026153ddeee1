"""Distillation losses of the CLIP student, on logits [B, C] over all classes.

Each loss maps (student_logits [B, C], teacher_logits [B, C]) to a per-sample value [B] in nats,
built on `abkd.losses`:

| name  | per-sample value                                                        | params                   |
|-------|-------------------------------------------------------------------------|--------------------------|
| `kd`  | KL(p_T || q_T) (Hinton et al. 2015)                                     | -                        |
| `dkd` | dkd_alpha * TCKD + dkd_beta * NCKD (Zhao et al., CVPR 2022, Eq. 7)      | `dkd_alpha`, `dkd_beta`  |
| `ls`  | KL on z-scored logits (Sun et al., CVPR 2024, logit standardisation)    | -                        |
| `ab`  | alpha-beta divergence (ABKD, ICML 2025)                                 | `ab_alpha`, `ab_beta`    |

with p_T = softmax(teacher_logits / T), q_T = softmax(student_logits / T).

The training objective (see `distillation_objective`) is PromptKD's reduction for every loss:
`kd_weight * T^2 * mean_B(D) / C`. PromptKD sums the KL over batch and classes and divides by
B*C ("/ stu_logits.numel()"), so its KD_WEIGHT values carry over unchanged.

PromptKD trains on unlabeled images, so DKD's target class is the teacher's prediction
(argmax of teacher_logits), not a ground-truth label.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from abkd.losses import check_temperature, divergence, masked_mean


def kd(student_logits: Tensor, teacher_logits: Tensor, *, temperature: float) -> Tensor:
    """Forward KL per sample [B]."""
    return divergence("fkl", student_logits, teacher_logits, temperature=temperature)


def dkd(
    student_logits: Tensor, teacher_logits: Tensor, *, temperature: float, dkd_alpha: float = 1.0, dkd_beta: float = 8.0,
    target: Tensor | None = None,
) -> Tensor:
    """Decoupled KD per sample [B] (Zhao et al., CVPR 2022, Eq. 7).

    TCKD is the binary KL between (p_t, 1 - p_t) and (q_t, 1 - q_t) of the target class t; NCKD
    is the KL between the distributions renormalised over the non-target classes. `target` [B]
    defaults to the teacher's argmax.
    """
    if target is None:
        target = teacher_logits.argmax(dim=-1)
    is_target = torch.nn.functional.one_hot(target, student_logits.shape[-1]).bool()
    log_q = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)

    def binary(log_probs: Tensor) -> Tensor:  # [B, 2] log-probabilities of (target, not target)
        log_target = log_probs.gather(-1, target[:, None])
        log_rest = torch.logsumexp(log_probs.masked_fill(is_target, -math.inf), dim=-1, keepdim=True)
        return torch.cat([log_target, log_rest], dim=-1)

    # Log-probabilities are valid logits at temperature 1; -inf marks the excluded target class.
    tckd = divergence("fkl", binary(log_q), binary(log_p), temperature=1.0)
    nckd = divergence("fkl", log_q.masked_fill(is_target, -math.inf), log_p.masked_fill(is_target, -math.inf), temperature=1.0)
    return dkd_alpha * tckd + dkd_beta * nckd


def standardize(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Z-score over classes, as in Sun et al. (CVPR 2024): (z - mean) / (std + eps) (unbiased std)."""
    logits = logits.float()
    return (logits - logits.mean(dim=-1, keepdim=True)) / (logits.std(dim=-1, keepdim=True) + eps)


def ls(student_logits: Tensor, teacher_logits: Tensor, *, temperature: float) -> Tensor:
    """KD on standardised logits per sample [B]."""
    return divergence("fkl", standardize(student_logits), standardize(teacher_logits), temperature=temperature)


def ab(student_logits: Tensor, teacher_logits: Tensor, *, temperature: float, ab_alpha: float, ab_beta: float) -> Tensor:
    """Alpha-beta divergence per sample [B]."""
    return divergence("ab", student_logits, teacher_logits, temperature=temperature, alpha=ab_alpha, beta=ab_beta)


# name -> (function, the command-line parameters it takes)
LOSSES: dict[str, tuple[Callable[..., Tensor], tuple[str, ...]]] = {
    "kd": (kd, ()),
    "dkd": (dkd, ("dkd_alpha", "dkd_beta")),
    "ls": (ls, ()),
    "ab": (ab, ("ab_alpha", "ab_beta")),
}


def get_loss(name: str, *, temperature: float, **params: float) -> Callable[[Tensor, Tensor], Tensor]:
    """The per-sample loss `name` with its parameters bound; parameters it does not use are ignored
    (the command line passes all of them). Unknown names raise ValueError listing the valid ones."""
    if name not in LOSSES:
        raise ValueError(f"unknown distillation loss '{name}'; valid names: {', '.join(LOSSES)}")
    function, wanted = LOSSES[name]
    missing = [key for key in wanted if params.get(key) is None]
    if missing:
        raise ValueError(f"--distill {name} requires {', '.join('--' + key for key in missing)}")
    return partial(function, temperature=check_temperature(temperature), **{key: float(params[key]) for key in wanted})


def distillation_objective(per_sample: Tensor, *, kd_weight: float, temperature: float, num_classes: int) -> Tensor:
    """PromptKD's reduction: kd_weight * T^2 * mean over the batch / C."""
    return kd_weight * temperature**2 * masked_mean(per_sample) / num_classes
