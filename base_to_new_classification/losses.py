"""The PromptKD objective with the project's classification losses, on logits [B, C] over all classes.

The divergences themselves are `standard_classification.losses` (built on `abkd.losses`), shared
with the CIFAR recipe; each returns T^2 x the batch mean of a per-sample value:

| name  | per-sample value                                                        | params                   |
|-------|-------------------------------------------------------------------------|--------------------------|
| `kd`  | KL(p_T || q_T) (Hinton et al. 2015)                                     | -                        |
| `dkd` | dkd_alpha * TCKD + dkd_beta * NCKD (Zhao et al., CVPR 2022, Eq. 7)      | `dkd_alpha`, `dkd_beta`  |
| `ls`  | KL on z-scored logits (Sun et al., CVPR 2024, logit standardisation)    | -                        |
| `ab`  | alpha-beta divergence (ABKD, ICML 2025)                                 | `ab_alpha`, `ab_beta`    |

with p_T = softmax(teacher_logits / T), q_T = softmax(student_logits / T).

The objective is PromptKD's reduction for every loss, `kd_weight * T^2 * mean_B(D) / C`: PromptKD
sums the KL over batch and classes and divides by B*C ("/ stu_logits.numel()"), so its KD_WEIGHT
values carry over unchanged.

PromptKD trains on unlabeled images, so DKD's target class is the teacher's prediction (argmax of
teacher_logits), and DKD's epoch warm-up (a CIFAR recipe detail) is off.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from abkd.losses import check_temperature
from standard_classification.losses import build_ab, build_dkd, build_kd, build_ls

# name -> (builder of standard_classification.losses, the command-line parameters it takes)
LOSSES: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "kd": (build_kd, ()),
    "dkd": (build_dkd, ("dkd_alpha", "dkd_beta")),
    "ls": (build_ls, ()),
    "ab": (build_ab, ("ab_alpha", "ab_beta")),
}


class PromptKDObjective:
    """`kd_weight * T^2 * mean_B D(teacher || student) / num_classes` for logits [B, C]."""

    def __init__(self, name: str, *, temperature: float, kd_weight: float, num_classes: int, **params: float | None):
        if name not in LOSSES:
            raise ValueError(f"unknown distillation loss '{name}'; valid names: {', '.join(LOSSES)}")
        builder, wanted = LOSSES[name]
        missing = [key for key in wanted if params.get(key) is None]
        if missing:
            raise ValueError(f"--distill {name} requires {', '.join('--' + key for key in missing)}")
        options = {key: float(params[key]) for key in wanted}
        if name == "dkd":
            options["dkd_warmup"] = 0
        self.name, self.kd_weight, self.num_classes = name, float(kd_weight), num_classes
        self.loss = builder(temperature=check_temperature(temperature), **options)

    def __call__(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        target = teacher_logits.argmax(dim=-1)  # used by dkd only
        return self.kd_weight * self.loss(student_logits, teacher_logits, target, 0) / self.num_classes


def build_objective(name: str, **options) -> PromptKDObjective:
    """Validated objective; unknown names raise ValueError listing the valid ones."""
    return PromptKDObjective(name, **options)
