"""The training objective: (1 - kd_ratio) * CE + kd_ratio * s * D(teacher || student) [+ lm_coef * LM],
with s = T^2 for the POCL types that scale their tempered divergence (`temperature_squared`), else 1.

Computed through `abkd.fused.fused_linear_divergence` from the final hidden states and the LM
heads, so full-vocabulary logits never exist; models without an accessible head fall back to
full logits (logged once). With a teacher cache (`distillation_llm.teacher_cache`) there is no
teacher model: each batch carries the teacher's cached top K, and the divergence is taken between
its (K + 1)-bucket distribution and the student's, coarse-grained on the same buckets. Under ZeRO-3 the student's head weight is partitioned across ranks:
the fused loss then runs as the head module's forward, where DeepSpeed gathers it
(`distillation_llm.models.call_as_forward`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from abkd.fused import FusedLossOutput, fused_linear_divergence
from abkd.losses import bucketed_divergence, divergence, masked_mean
from distillation_llm.data import IGNORE_INDEX
from distillation_llm.models import HeadSplit, call_as_forward, final_hidden_states, split_head
from distillation_llm.teacher_cache import TeacherCache

logger = logging.getLogger(__name__)


@dataclass
class Objective:
    student: nn.Module
    teacher: nn.Module | None
    divergence: str | None  # None: cross-entropy only (SFT)
    params: dict
    kd_ratio: float
    temperature: float
    vocab: int  # common vocabulary of student and teacher heads
    lm_coef: float = 0.0
    chunk_size: int | None = None  # None: abkd.fused.default_chunk_size for the device
    # ZeRO-3 partitions the student's parameters across ranks; DeepSpeed gathers a module's
    # parameters only inside that module's forward, so the loss runs as the head's forward.
    partitioned_parameters: bool = False
    # Compute full logits through the models' forwards even where the heads are accessible: the
    # path the fused one is compared with (tests, benchmarks/bench_train_step.py).
    full_logits: bool = False
    # POCL's tfkl, tsrkl and tjsd multiply the divergence by T^2 (POCL pocl/losses.py).
    temperature_squared: bool = False
    # The teacher's cached top-K distributions, read from each batch instead of running `teacher`.
    teacher_cache: TeacherCache | None = None

    def __post_init__(self):
        self.student_split = split_head(self.student)
        self.teacher_split = split_head(self.teacher) if self.teacher is not None else None
        self.fused = self.student_split.fused and (self.teacher_split is None or self.teacher_split.fused)
        if not self.fused and not self.full_logits:
            logger.warning("no accessible LM head (get_output_embeddings): computing full logits, which costs O(tokens x vocab) memory")
        self.fused = self.fused and not self.full_logits
        self.set_stage(self.temperature, self.kd_ratio)

    def set_stage(self, temperature: float, kd_ratio: float) -> None:
        """Set the KD temperature and kd-ratio (POCL changes both per stage). Without a divergence
        the loss is cross-entropy alone whatever kd-ratio a schedule asks for."""
        self.temperature = temperature
        self.kd_ratio = kd_ratio if self.divergence is not None else 0.0

    def __call__(self, batch: dict[str, Tensor], lm_batch: dict[str, Tensor] | None = None) -> FusedLossOutput:
        out = self._loss(batch)
        if lm_batch is not None and self.lm_coef > 0:
            lm = self._cross_entropy(lm_batch)
            out = FusedLossOutput(out.loss + self.lm_coef * lm, out.kd, out.ce)
        return out

    def forward_train(self, batch: dict[str, Tensor], lm_batch: dict[str, Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """The objective interface of `abkd.run`: the loss to backpropagate and its logged parts
        (cross-entropy and divergence, detached)."""
        out = self(batch, lm_batch)
        return out.loss, {"ce": out.ce, "kd": out.kd}

    def _teacher_hidden(self, batch: dict[str, Tensor]) -> Tensor:
        with torch.no_grad():
            return final_hidden_states(self.teacher_split, batch["input_ids"], batch["attention_mask"])

    @property
    def kd_scale(self) -> float:
        """The factor s on the divergence: T^2 for POCL's tfkl/tsrkl/tjsd, else 1."""
        return self.temperature**2 if self.temperature_squared and self.divergence is not None else 1.0

    def _loss(self, batch: dict[str, Tensor]) -> FusedLossOutput:
        scale = self.kd_scale
        if scale == 1.0:
            return self._unscaled_loss(batch, self.kd_ratio)
        # (1 - r) CE + r s D = c [(1 - r') CE + r' D] with c = 1 - r + r s and r' = r s / c, so
        # the fused pass (whose kd_ratio lies in [0, 1]) computes the scaled loss exactly.
        total = 1.0 - self.kd_ratio + self.kd_ratio * scale
        out = self._unscaled_loss(batch, self.kd_ratio * scale / total)
        return FusedLossOutput(out.loss * total, out.kd * scale, out.ce)

    def _unscaled_loss(self, batch: dict[str, Tensor], kd_ratio: float) -> FusedLossOutput:
        labels = batch["labels"]
        if not self.fused:
            return self._full_logits_loss(batch, kd_ratio)
        hidden = final_hidden_states(self.student_split, batch["input_ids"], batch["attention_mask"])
        teacher = {}
        if self.divergence is not None and self.teacher_cache is not None:
            teacher = {"teacher_buckets": self.teacher_cache.buckets(batch, self.temperature)}
        elif self.divergence is not None:
            teacher = {"teacher_hidden": self._teacher_hidden(batch), "teacher_weight": self.teacher_split.weight[: self.vocab]}

        def head_loss(hidden: Tensor) -> FusedLossOutput:
            return fused_linear_divergence(
                self.divergence,
                hidden,
                self.student_split.weight[: self.vocab],
                student_bias=head_bias(self.student_split, self.vocab),
                labels=labels,
                kd_ratio=kd_ratio if self.divergence is not None else None,
                chunk_size=self.chunk_size,
                temperature=self.temperature,
                ignore_index=IGNORE_INDEX,
                **teacher,
                **self.params,
            )

        return self._through_head(head_loss, hidden)

    def _through_head(self, head_loss, hidden: Tensor) -> FusedLossOutput:
        """`head_loss(hidden)`, which reads the student's head weight: directly, or under ZeRO-3
        as the head module's forward, where DeepSpeed gathers the weight (and its gradient)."""
        if self.partitioned_parameters:
            return call_as_forward(self.student_split.head, head_loss, hidden)
        return head_loss(hidden)

    def _cross_entropy(self, batch: dict[str, Tensor]) -> Tensor:
        if not self.fused:
            logits = self.student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits[..., : self.vocab]
            return F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=IGNORE_INDEX)
        hidden = final_hidden_states(self.student_split, batch["input_ids"], batch["attention_mask"])

        def head_loss(hidden: Tensor) -> FusedLossOutput:
            return fused_linear_divergence(
                None, hidden, self.student_split.weight[: self.vocab], student_bias=head_bias(self.student_split, self.vocab),
                labels=batch["labels"], chunk_size=self.chunk_size, ignore_index=IGNORE_INDEX,
            )

        return self._through_head(head_loss, hidden).loss

    def _full_logits_loss(self, batch: dict[str, Tensor], kd_ratio: float) -> FusedLossOutput:
        labels = batch["labels"]
        student_logits = self.student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits[..., : self.vocab]
        ce = F.cross_entropy(student_logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)
        ce = torch.where(torch.any(labels != IGNORE_INDEX), ce, ce.new_zeros(()))  # all-masked batch
        kd = ce.new_zeros(())
        if self.divergence is not None and self.teacher_cache is not None:
            buckets = self.teacher_cache.buckets(batch, self.temperature)
            per_token = bucketed_divergence(self.divergence, student_logits, buckets.ids, buckets.log_probs, temperature=self.temperature, **self.params)
            kd = masked_mean(per_token, labels != IGNORE_INDEX)
        elif self.divergence is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits[..., : self.vocab]
            per_token = divergence(self.divergence, student_logits, teacher_logits, temperature=self.temperature, **self.params)
            kd = masked_mean(per_token, labels != IGNORE_INDEX)
        loss = (1 - kd_ratio) * ce + kd_ratio * kd
        return FusedLossOutput(loss, kd.detach(), ce.detach())


def head_bias(split: HeadSplit, vocab: int) -> Tensor | None:
    return split.bias[:vocab] if split.bias is not None else None
