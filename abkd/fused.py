"""Fused, chunked distillation loss: LM head + divergence (+ cross-entropy) without ever holding
full-vocabulary logits.

`fused_linear_divergence` equals

    masked_mean(divergence(name, student_hidden @ student_weight.T + student_bias, teacher_logits), mask)

but walks the tokens in chunks of `chunk_size` rows. For each chunk it computes the student logits
[C, V], the gradient of the loss with respect to them, and immediately folds that gradient into
the gradients of the hidden states ([C, V] @ [V, H]) and of the head weight ([V, C] @ [C, H]).
Only O(chunk_size x V) logits exist at any time; the accumulated gradients are handed back by a
custom `autograd.Function`, so the result drops into any model.

Gradient with respect to the student logits z (q = softmax(z / T)). A divergence that registers a
closed-form u_k = d(entry_k)/d(ln q_k) in `abkd.losses` (ab, fkl, rkl; see `log_q_gradient`) gets
dD/dz_j = (u_j - q_j sum_k u_k) / T directly, which avoids autograd's saved intermediates; the
others take the per-chunk gradient from `torch.func.grad`. This module knows no divergence by
name. Cross-entropy at temperature 1: dCE/dz = softmax(z) - onehot(y).

A truncated teacher (`teacher_buckets`: its top-K ids and K + 1 bucket log-probabilities, as an
offline cache stores it) is compared with the student coarse-grained on the same buckets; the
divergence's derivative on the K + 1 buckets is spread back onto the V logits in closed form
(`_bucketed_grad`), so this path too never holds more than one chunk of logits.

The element-wise work over [C, V] costs about as much as the matmuls in eager PyTorch, so the
per-chunk function is compiled with `torch.compile` when the chunk is large enough to repay the
one-time compilation (the `compile=` argument; nothing else switches it); an eager path is
always available.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import NamedTuple

import torch
from torch import Tensor

from abkd.losses import bucket_valid, check_temperature, divergence_terms, log_q_gradient, resolve_params, student_bucket_log_probs

logger = logging.getLogger(__name__)

# Rows per chunk on CPU. Measured by benchmarks/bench_fused_loss.py (H=768, V=50257, 2 CPU
# cores): time is flat from 256 to 2048 rows while memory grows linearly with the chunk, so the
# default is the smallest size that keeps the matmuls efficient.
DEFAULT_CHUNK_SIZE = 512
# On CUDA every chunk reads and writes the whole fp32 head-gradient accumulator [V, H] (8 V H
# bytes) for 2 V H C flops, so the head-gradient matmul is bandwidth-bound below C ~ flops/byte
# x 4 rows (~800 on an H100/H200: ~1000 bf16 TFLOP/s over ~4 TB/s). CUDA chunks are therefore
# as large as CUDA_CHUNK_ROWS, but hold at most CUDA_CHUNK_BYTES of fp32 logits.
CUDA_CHUNK_ROWS = 2048
CUDA_CHUNK_BYTES = 1 << 29
# cuBLAS needs the leading dimensions of bf16/fp16 operands to be multiples of 8 elements for
# tensor-core kernels, and tiles of 64-128 columns run fastest; V = 50257 (GPT-2) is odd. On
# these devices the head is padded to a multiple of this many rows (padded logits are -inf:
# outside both distributions, zero gradient). CPU kernels gain nothing from it.
VOCAB_ALIGNMENT = {"cuda": 128}


def default_chunk_size(device: torch.device, vocab: int) -> int:
    """Rows per chunk for `device`: DEFAULT_CHUNK_SIZE on CPU; on CUDA the largest power of two
    up to CUDA_CHUNK_ROWS whose fp32 logits [C, V] fit in CUDA_CHUNK_BYTES (at least 256)."""
    if device.type != "cuda":
        return DEFAULT_CHUNK_SIZE
    rows = CUDA_CHUNK_BYTES // (4 * max(vocab, 1))
    return max(256, min(CUDA_CHUNK_ROWS, 1 << max(rows.bit_length() - 1, 0)))


def padded_vocab(vocab: int, device: torch.device) -> int:
    """`vocab` rounded up to the device's VOCAB_ALIGNMENT (unchanged where it has none)."""
    alignment = VOCAB_ALIGNMENT.get(device.type, 1)
    return -(-vocab // alignment) * alignment
# Compile the per-chunk function automatically once a chunk holds this many logits (the one-time
# compilation, ~20 s on a 2-core CPU, is then repaid within a few steps).
COMPILE_MIN_ELEMENTS = 1 << 23


class TeacherBuckets(NamedTuple):
    """A truncated teacher (an offline cache): its top-K token ids `ids` [..., K] (int64) and its
    log-probabilities on those K tokens and one tail bucket, `log_probs` [..., K + 1], at the
    divergence's temperature (`abkd.losses.teacher_bucket_log_probs`)."""

    ids: Tensor
    log_probs: Tensor


class FusedLossOutput(NamedTuple):
    """`loss` = (1 - kd_ratio) * ce + kd_ratio * kd carries the gradient (without labels: the
    divergence alone, and ce = 0); `kd` and `ce` are detached token means for logging."""

    loss: Tensor
    kd: Tensor
    ce: Tensor


def _tempered_log_probs(student_logits: Tensor, teacher_logits: Tensor, temperature: float):
    """Like `abkd.losses.log_probs`, but also returns the unsanitised student log-probabilities,
    whose exp is the true q needed by the softmax Jacobian."""
    valid = (student_logits != -math.inf) & (teacher_logits != -math.inf)
    raw_log_q = torch.log_softmax(student_logits / temperature, dim=-1)
    log_p = torch.log_softmax(teacher_logits / temperature, dim=-1)
    return raw_log_q, torch.where(valid, raw_log_q, 0.0), torch.where(valid, log_p, 0.0), valid


def _bucketed_grad(
    student_logits: Tensor, teacher_ids: Tensor, log_p_buckets: Tensor, kd_weight: Tensor, name: str, params: dict, temperature: float
) -> tuple[Tensor, Tensor]:
    """Divergence [C] and its gradient [C, V] with respect to the student logits for a truncated
    teacher: K + 1 buckets (`teacher_ids` [C, K], `log_p_buckets` [C, K + 1]) against the
    student coarse-grained on them (`abkd.losses.bucketed_divergence`).

    With u_b = d(kd_weight D)/d(ln q_b) on the K + 1 buckets (closed form, or autograd on the
    small [C, K + 1] tensor) and d ln q_b / dz_i = (1[i in b] q_i / q_b - q_i) / T:
        dD/dz_i = (u_i - q_i sum_b u_b) / T                       for i in the teacher's top K,
        dD/dz_i = (u_tail q_i / q_tail - q_i sum_b u_b) / T       for the other tokens.
    """
    raw_log_q = torch.log_softmax(student_logits / temperature, dim=-1)
    log_q_buckets = student_bucket_log_probs(raw_log_q, teacher_ids)
    log_q, log_p, valid = bucket_valid(log_q_buckets, log_p_buckets)
    closed_form = log_q_gradient(name)
    if closed_form is not None:
        kd_values = divergence_terms(name, log_q, log_p, valid, params)
        u = torch.where(valid, closed_form(log_q, log_p, **params), 0.0) * kd_weight[:, None]
    else:

        def weighted(buckets: Tensor) -> tuple[Tensor, Tensor]:
            values = divergence_terms(name, buckets, log_p, valid, params)
            return (values * kd_weight).sum(), values

        u, kd_values = torch.func.grad(weighted, has_aux=True)(log_q)
        u = torch.where(valid, u, 0.0)
    q = torch.exp(raw_log_q)
    total = u.sum(-1, keepdim=True)
    tail = log_q_buckets[:, -1:]
    has_tail = tail != -math.inf
    # q_i / q_tail for tail tokens (<= 1); top tokens are overwritten below.
    grad = torch.where(has_tail, u[:, -1:], 0.0) * torch.exp(raw_log_q - torch.where(has_tail, tail, 0.0)) - q * total
    grad = grad.scatter(-1, teacher_ids, u[:, :-1] - q.gather(-1, teacher_ids) * total)
    return kd_values, grad / temperature


def _chunk_loss_and_grad(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    labels: Tensor | None,
    kd_weight: Tensor,
    ce_weight: Tensor,
    name: str | None,
    params: tuple[tuple[str, float], ...],
    temperature: float,
    teacher_ids: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One chunk of rows: returns the per-row divergence [C] and cross-entropy [C], and overwrites
    `student_logits` [C, V] with d(loss)/d(student_logits) for
    loss = sum_rows kd_weight * divergence + ce_weight * ce. Writing the gradient in place lets
    one logits buffer serve every chunk. float32/float64 throughout. With `teacher_ids` [C, K],
    `teacher_logits` holds the truncated teacher's bucket log-probabilities [C, K + 1]."""
    rows = student_logits.shape[0]
    grad = None
    kd_values = student_logits.new_zeros(rows)
    ce_values = student_logits.new_zeros(rows)
    params = dict(params)
    if name is not None and teacher_ids is not None:
        kd_values, grad = _bucketed_grad(student_logits, teacher_ids, teacher_logits, kd_weight, name, params, temperature)
    elif name is not None:
        closed_form = log_q_gradient(name)
        if closed_form is not None:
            raw_log_q, log_q, log_p, valid = _tempered_log_probs(student_logits, teacher_logits, temperature)
            kd_values = divergence_terms(name, log_q, log_p, valid, params)
            u = torch.where(valid, closed_form(log_q, log_p, **params), 0.0)
            grad = (u - torch.exp(raw_log_q) * u.sum(-1, keepdim=True)) * (kd_weight / temperature)[:, None]
        else:

            def weighted(z: Tensor) -> tuple[Tensor, Tensor]:
                _, log_q, log_p, valid = _tempered_log_probs(z, teacher_logits, temperature)
                values = divergence_terms(name, log_q, log_p, valid, params)
                return (values * kd_weight).sum(), values

            grad, kd_values = torch.func.grad(weighted, has_aux=True)(student_logits)
    if labels is not None:
        log_z = torch.logsumexp(student_logits, dim=-1)
        safe_labels = labels.clamp(min=0)
        ce_values = log_z - student_logits.gather(-1, safe_labels[:, None]).squeeze(-1)
        vocab_ids = torch.arange(student_logits.shape[-1], device=student_logits.device)
        ce_grad = (torch.exp(student_logits - log_z[:, None]) - (vocab_ids == safe_labels[:, None]).to(log_z.dtype)) * ce_weight[:, None]
        grad = ce_grad if grad is None else grad + ce_grad
    student_logits.copy_(grad)
    return kd_values, ce_values


# Inductor stores an element-wise intermediate in a buffer once more than 4 expressions read it.
# The log-probabilities feed the divergence's value and its gradient weights through many
# reads (the alpha-beta divided differences most of all), and storing them costs two extra
# [chunk, V] buffers, written and read back. Recomputing them is cheaper: measured on a
# 512 x 50257 chunk (2 CPU cores), ab went from 225 ms to 142 ms per chunk, jsd from 277 to 191.
_INDUCTOR_OPTIONS = {"realize_reads_threshold": 64}


@functools.cache
def _compiled_chunk_fn():
    return torch.compile(_chunk_loss_and_grad, options=_INDUCTOR_OPTIONS)


@functools.cache
def _compiler_works(device_type: str) -> bool:
    """Whether torch.compile can build a kernel here (a C++ compiler on CPU, Triton on CUDA);
    asked once per process and device type, only when `compile=None` would choose compilation."""
    try:
        torch.compile(lambda x: x * 2 + 1)(torch.ones(8, device=device_type))
        return True
    except Exception as error:  # no compiler or unsupported backend: the eager path is exact too
        logger.warning("torch.compile is unavailable on %s (%s); the fused loss runs eagerly", device_type, error)
        return False


def _use_compile(compile: bool | None, chunk_elements: int, device_type: str) -> bool:
    """compile=True/False is obeyed (True fails loudly if compilation fails); None compiles chunks
    of at least COMPILE_MIN_ELEMENTS logits where a compiler is available."""
    if compile is not None:
        return compile
    return chunk_elements >= COMPILE_MIN_ELEMENTS and _compiler_works(device_type)


@functools.cache
def _fp32_output_matmul(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether `torch.addmm(acc, a, b, out_dtype=float32, out=acc)` works for `dtype` operands on
    `device` (a CUDA kernel: cuBLAS multiplies bf16/fp16 on tensor cores and accumulates in fp32).
    Checked once per device against float32 maths; where it is missing (CPU, older torch) the head
    gradient is accumulated by an fp32 matmul instead, which is exact but slow on GPUs."""
    if device.type != "cuda":
        return False
    try:
        generator = torch.Generator(device=device).manual_seed(0)
        left = torch.randn(64, 96, device=device, dtype=dtype, generator=generator)
        right = torch.randn(96, 48, device=device, dtype=dtype, generator=generator)
        accumulator = torch.ones(64, 48, device=device)
        torch.addmm(accumulator, left, right, out_dtype=torch.float32, out=accumulator)
        return bool(torch.allclose(accumulator, 1.0 + left.float() @ right.float(), rtol=1e-3, atol=1e-3))
    except (RuntimeError, TypeError, NotImplementedError) as error:
        logger.warning("no fp32-output %s matmul on %s (%s): the fused loss accumulates the head gradient in fp32 matmuls", dtype, device, error)
        return False


def _take_rows(selection: slice | Tensor, tensor: Tensor) -> Tensor:
    return tensor[selection] if isinstance(selection, slice) else tensor.index_select(0, selection)


class _FusedLinearLoss(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        student_hidden: Tensor,  # [N, H]
        student_weight: Tensor,  # [V, H]
        student_bias: Tensor | None,  # [V]
        teacher_logits: Tensor | None,  # [N, V]
        teacher_hidden: Tensor | None,  # [N, Ht]
        teacher_weight: Tensor | None,  # [V, Ht]
        teacher_ids: Tensor | None,  # [N, K]; then teacher_logits holds bucket log-probabilities [N, K + 1]
        labels: Tensor | None,  # [N]
        kd_mask: Tensor,  # [N] bool
        name: str | None,
        params: tuple[tuple[str, float], ...],
        temperature: float,
        kd_ratio: float,
        chunk_size: int,
        compile: bool | None,
        ignore_index: int,
    ):
        n_rows = student_hidden.shape[0]
        vocab = student_weight.shape[0]
        compute_dtype = torch.float64 if student_hidden.dtype == torch.float64 else torch.float32
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        # Aligned GEMM shapes: padded head rows give logits that are set to -inf below.
        padded = padded_vocab(vocab, student_weight.device)
        if padded != vocab:
            pad_rows = functools.partial(torch.nn.functional.pad, pad=(0, 0, 0, padded - vocab))
            student_weight = pad_rows(student_weight)
            student_bias = torch.nn.functional.pad(student_bias, (0, padded - vocab)) if student_bias is not None else None
            teacher_weight = pad_rows(teacher_weight) if teacher_weight is not None else None

        ce_mask = labels != ignore_index if labels is not None else torch.zeros_like(kd_mask)
        if name is None:
            kd_mask = torch.zeros_like(kd_mask)
        n_kd = kd_mask.sum()
        n_ce = ce_mask.sum()
        kd_scale = (kd_ratio if labels is not None else 1.0) / n_kd.clamp(min=1).to(compute_dtype)
        ce_scale = (1.0 - kd_ratio) / n_ce.clamp(min=1).to(compute_dtype)
        # Rows that neither loss looks at (prompt tokens, padding) are never computed.
        rows = torch.nonzero(kd_mask | ce_mask).squeeze(-1)

        grad_hidden = torch.zeros_like(student_hidden) if need_hidden else None
        grad_weight = torch.zeros(student_weight.shape, dtype=compute_dtype, device=student_weight.device) if need_weight else None
        grad_bias = torch.zeros(padded, dtype=compute_dtype, device=student_weight.device) if need_bias and student_bias is not None else None
        kd_total = torch.zeros((), dtype=compute_dtype, device=student_hidden.device)
        ce_total = torch.zeros_like(kd_total)
        use_compile = _use_compile(compile, min(chunk_size, max(len(rows), 1)) * padded, student_hidden.device.type)
        chunk_fn = _compiled_chunk_fn() if use_compile else _chunk_loss_and_grad
        # With every row selected, chunks are contiguous slices: no gathering copies at all.
        contiguous = len(rows) == n_rows
        # One logits buffer for all chunks (the chunk function overwrites it with the gradient).
        reuse = student_hidden.dtype == compute_dtype and student_weight.dtype == compute_dtype
        buffer = student_hidden.new_empty(min(chunk_size, len(rows)), padded) if reuse and len(rows) else None

        for start in range(0, len(rows), chunk_size):
            # With every row selected, a chunk is a slice (a view); otherwise the rows are gathered.
            selection = slice(start, min(start + chunk_size, n_rows)) if contiguous else rows[start : start + chunk_size]
            take = functools.partial(_take_rows, selection)
            hidden = take(student_hidden)
            if buffer is not None:
                logits = buffer[: hidden.shape[0]]
                if student_bias is None:
                    torch.mm(hidden, student_weight.T, out=logits)
                else:
                    torch.addmm(student_bias, hidden, student_weight.T, out=logits)
            else:
                logits = torch.nn.functional.linear(hidden, student_weight, student_bias).to(compute_dtype)
            if padded != vocab:
                logits[:, vocab:] = -math.inf
            chunk_teacher = None
            if name is not None:
                if teacher_ids is not None:
                    chunk_teacher = take(teacher_logits)  # buckets: the padded logits fall in no bucket and have q = 0
                elif teacher_logits is not None:
                    chunk_teacher = take(teacher_logits)
                    if padded != vocab:
                        chunk_teacher = torch.nn.functional.pad(chunk_teacher, (0, padded - vocab), value=-math.inf)
                else:
                    chunk_teacher = take(teacher_hidden) @ teacher_weight.T
                chunk_teacher = chunk_teacher.to(compute_dtype)
                if padded != vocab and teacher_ids is None:
                    chunk_teacher[:, vocab:] = -math.inf
            chunk_labels = take(labels) if labels is not None else None
            chunk_kd_mask, chunk_ce_mask = take(kd_mask), take(ce_mask)
            kd_values, ce_values = chunk_fn(
                logits, chunk_teacher, chunk_labels,
                chunk_kd_mask.to(compute_dtype) * kd_scale, chunk_ce_mask.to(compute_dtype) * ce_scale,
                name, params, temperature, take(teacher_ids) if teacher_ids is not None and name is not None else None,
            )
            grad_logits = logits  # overwritten in place
            del chunk_teacher
            kd_total += (kd_values * chunk_kd_mask).sum()
            if labels is not None:
                ce_total += (ce_values * chunk_ce_mask).sum()
            # The gradient matmuls run in the head's precision (tensor cores for bf16/fp16).
            low_precision_grad = grad_logits.to(student_weight.dtype) if student_weight.dtype != compute_dtype else grad_logits
            if grad_hidden is not None:
                grad_rows = low_precision_grad @ student_weight
                if contiguous:
                    grad_hidden[selection] = grad_rows
                else:
                    grad_hidden.index_copy_(0, selection, grad_rows)
            if grad_weight is not None:
                if student_weight.dtype != compute_dtype and _fp32_output_matmul(student_weight.device, student_weight.dtype):
                    # bf16/fp16 x bf16/fp16 on tensor cores, added into the fp32 accumulator by cuBLAS.
                    torch.addmm(grad_weight, low_precision_grad.T, hidden, out_dtype=compute_dtype, out=grad_weight)
                else:
                    grad_weight.addmm_(grad_logits.T, hidden.to(compute_dtype))
            if grad_bias is not None:
                grad_bias += grad_logits.sum(0)
        del buffer

        kd = kd_total / n_kd.clamp(min=1)
        ce = ce_total / n_ce.clamp(min=1)
        loss = kd.clone() if labels is None else kd_ratio * kd + (1.0 - kd_ratio) * ce
        kd, ce = kd.detach(), ce.detach()
        ctx.save_for_backward(
            grad_hidden,
            grad_weight[:vocab].to(student_weight.dtype) if grad_weight is not None else None,
            grad_bias[:vocab].to(student_bias.dtype) if grad_bias is not None else None,
        )
        ctx.mark_non_differentiable(kd, ce)
        ctx.backward_done = False
        return loss, kd, ce

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_kd, _grad_ce):
        if ctx.backward_done:
            raise RuntimeError("fused_linear_divergence supports a single backward pass (its gradients are scaled in place)")
        ctx.backward_done = True
        # The saved gradients are ours alone, so scaling them in place avoids a second [V, H] copy.
        grads = tuple(None if g is None else g.mul_(grad_loss.to(g.dtype)) for g in ctx.saved_tensors)
        return grads + (None,) * 13


def fused_linear_divergence(
    name: str | None,
    student_hidden: Tensor,
    student_weight: Tensor,
    *,
    teacher_logits: Tensor | None = None,
    teacher_hidden: Tensor | None = None,
    teacher_weight: Tensor | None = None,
    teacher_buckets: TeacherBuckets | None = None,
    mask: Tensor | None = None,
    student_bias: Tensor | None = None,
    labels: Tensor | None = None,
    kd_ratio: float | None = None,
    chunk_size: int | None = None,
    temperature: float = 1.0,
    compile: bool | None = None,
    ignore_index: int = -100,
    **params: float,
) -> FusedLossOutput:
    """Chunked LM head + divergence (+ cross-entropy), never materialising [N, V] logits.

    Args:
        name: a divergence from `abkd.losses.DIVERGENCES`, or None for cross-entropy alone
            (then `labels` is required and no teacher is used).
        student_hidden: [..., H] final hidden states.
        student_weight: [V, H] the LM head (output embedding) weight; `student_bias` [V].
        teacher_logits: [..., V], or `teacher_hidden` [..., Ht] with `teacher_weight` [V, Ht],
            from which teacher logits are recomputed per chunk (never held in full), or
            `teacher_buckets`: a truncated teacher (top-K ids and K + 1 bucket log-probabilities
            at `temperature`, see `TeacherBuckets`), compared with the student coarse-grained on
            its buckets (`abkd.losses.bucketed_divergence`).
        mask: [...] bool, the positions the divergence averages over. Defaults to
            `labels != -100` when labels are given, else every position.
        labels: [...] token ids, `ignore_index` where no token is predicted; adds the token-mean
            cross-entropy at temperature 1, computed in the same pass.
        kd_ratio: with labels, the weight of the divergence in
            loss = (1 - kd_ratio) * ce + kd_ratio * kd (required with labels and a divergence).
        chunk_size: rows per chunk; memory for logits is O(chunk_size x V). None: chosen for the
            device by `default_chunk_size`.
        temperature: the divergence's temperature (cross-entropy is always at 1).
        compile: True/False: use the `torch.compile`d per-chunk function or not; None (default):
            compile chunks of at least COMPILE_MIN_ELEMENTS logits when a compiler is available.
        ignore_index: the label value of positions without a target (as in F.cross_entropy).
        **params: the divergence's parameters, e.g. alpha/beta for "ab".

    Returns:
        `FusedLossOutput(loss, kd, ce)`, float32 (float64 for float64 hidden states). Without
        labels, `loss` is `masked_mean(divergence(...), mask)` and ce is 0.
    """
    resolved = resolve_params(name, params) if name is not None else {}
    temperature = check_temperature(temperature)
    if chunk_size is None:
        chunk_size = default_chunk_size(student_hidden.device, student_weight.shape[0])
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    hidden_size = student_hidden.shape[-1]
    if student_weight.dim() != 2 or student_weight.shape[1] != hidden_size:
        raise ValueError(f"student_weight must be [V, {hidden_size}], got {tuple(student_weight.shape)}")
    vocab = student_weight.shape[0]
    lead = student_hidden.shape[:-1]
    student_hidden = student_hidden.reshape(-1, hidden_size)

    if name is None:
        if labels is None:
            raise ValueError("fused_linear_divergence(None, ...) computes cross-entropy only and needs labels")
        if kd_ratio not in (None, 0.0):
            raise ValueError("kd_ratio must be 0 or None when no divergence is given")
        kd_ratio = 0.0
    elif sum(teacher is not None for teacher in (teacher_logits, teacher_hidden, teacher_buckets)) != 1:
        raise ValueError("give the teacher as exactly one of teacher_logits, teacher_hidden + teacher_weight, or teacher_buckets")
    teacher_ids = None
    if teacher_buckets is not None:
        teacher_ids, teacher_logits = teacher_buckets
        k = teacher_ids.shape[-1]
        if teacher_ids.shape[:-1] != lead or teacher_logits.shape != (*lead, k + 1) or not 0 < k <= vocab:
            raise ValueError(
                f"teacher_buckets must be ids {(*lead, 'K')} with 0 < K <= {vocab} and log_probs {(*lead, 'K + 1')}, "
                f"got {tuple(teacher_ids.shape)} and {tuple(teacher_logits.shape)}"
            )
        teacher_ids = teacher_ids.reshape(-1, k).long()
        teacher_logits = teacher_logits.reshape(-1, k + 1).detach()
    if teacher_logits is not None and teacher_ids is None:
        if teacher_logits.shape != (*lead, vocab):
            raise ValueError(f"teacher_logits must be {(*lead, vocab)}, got {tuple(teacher_logits.shape)}")
        teacher_logits = teacher_logits.reshape(-1, vocab).detach()
    if teacher_hidden is not None:
        if teacher_weight is None or teacher_weight.shape[0] != vocab or teacher_weight.shape[1] != teacher_hidden.shape[-1]:
            raise ValueError(
                f"teacher_weight must be [V={vocab}, {teacher_hidden.shape[-1]}], got "
                f"{None if teacher_weight is None else tuple(teacher_weight.shape)}"
            )
        teacher_hidden = teacher_hidden.reshape(-1, teacher_hidden.shape[-1]).detach()
        teacher_weight = teacher_weight.detach()
    if labels is not None:
        if labels.shape != lead:
            raise ValueError(f"labels must be {tuple(lead)}, got {tuple(labels.shape)}")
        labels = labels.reshape(-1)
        if name is not None and kd_ratio is None:
            raise ValueError("with labels, give kd_ratio: loss = (1 - kd_ratio) * ce + kd_ratio * kd")
        if not 0.0 <= kd_ratio <= 1.0:
            raise ValueError(f"kd_ratio must lie in [0, 1], got {kd_ratio}")
    if mask is None:
        mask = labels != ignore_index if labels is not None else torch.ones(lead, dtype=torch.bool, device=student_hidden.device)
    elif mask.shape != lead:
        raise ValueError(f"mask must be {tuple(lead)}, got {tuple(mask.shape)}")
    mask = mask.reshape(-1).bool()

    loss, kd, ce = _FusedLinearLoss.apply(
        student_hidden,
        student_weight,
        student_bias,
        teacher_logits,
        teacher_hidden,
        teacher_weight,
        teacher_ids,
        labels,
        mask,
        name,
        tuple(resolved.items()),
        temperature,
        float(kd_ratio) if kd_ratio is not None else 1.0,
        int(chunk_size),
        compile,
        int(ignore_index),
    )
    return FusedLossOutput(loss, kd, ce)
