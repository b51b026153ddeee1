"""Feature-based distillation terms for CIFAR: CRD and ITRD, with their trainable heads.

Both compare the penultimate (pooled) features of student and teacher, `model(x, is_feat=True)[0][-1]`,
shaped [B, d_s] and [B, d_t], and train small heads with the student. A term is an `nn.Module`
with `uses_features = True`, called as `loss(student_features, teacher_features, *batch_extras)`
and returning a scalar; the objective (`abkd.classification.LogitDistillation`) calls it, and the
engine trains it with the student (`abkd.classification.StudentWithTerm`), so its parameters are
optimised and, with its buffers (CRD's memory bank), checkpointed and restored by `--resume`.

The maths is in float32 (the objective passes float32 features); every tensor is created on the
features' device. `build_feature_loss` maps a `--distill` name to its term.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from abkd import engine as E


def all_ranks(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Each tensor's rows from every rank, concatenated in rank order (a world of one returns
    them unchanged). Ranks may hold different numbers of rows (the last, smaller step)."""
    world = E.world_size()
    if world == 1:
        return tensors
    count = torch.tensor([len(tensors[0])], device=tensors[0].device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    torch.distributed.all_gather(counts, count)
    counts = [int(c) for c in counts]
    gathered = []
    for tensor in tensors:
        padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
        padded[: len(tensor)] = tensor
        pieces = [torch.empty_like(padded) for _ in range(world)]
        torch.distributed.all_gather(pieces, padded.contiguous())
        gathered.append(torch.cat([piece[:n] for piece, n in zip(pieces, counts)]))
    return tuple(gathered)


def all_ranks_mean(total: Tensor, count: int) -> Tensor:
    """sum(total) / sum(count) over ranks."""
    values = torch.stack([total.detach().double(), torch.tensor(float(count), dtype=torch.float64, device=total.device)])
    if E.world_size() > 1:
        torch.distributed.all_reduce(values)
    return (values[0] / values[1]).to(total.dtype)


# ---------------------------------------------------------------------------------------------
# CRD.
# ---------------------------------------------------------------------------------------------


class Embed(nn.Module):
    """Linear map to the contrastive space, then L2 normalisation (CRD's embedding head)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, features: Tensor) -> Tensor:
        return F.normalize(self.linear(features.flatten(1)), dim=1)


class CRDLoss(nn.Module):
    """Contrastive representation distillation (Tian et al., ICLR 2020): the NCE objective with a
    memory bank, in the two symmetric halves of RepDistiller's `CRDLoss`.

    The features are embedded by `embed_student` and `embed_teacher` (linear + L2 norm) into
    v_s, v_t [B, feat_dim]. Two memory banks of unit vectors, one row per training image, hold
    the student's and the teacher's embeddings of earlier epochs. For image i with contrast
    indices c_i = (positive, K negatives) [B, K + 1] (`standard_classification.data.ContrastiveIndices`):

      h_t(i, k) = exp(<v_s,i, teacher_bank[c_ik]> / tau) / Z_t   (student anchor, teacher bank)
      h_s(i, k) = exp(<v_t,i, student_bank[c_ik]> / tau) / Z_s   (teacher anchor, student bank)

    and each half is the NCE loss (RepDistiller's `ContrastLoss`, "Eq (18)" of the paper) with the
    noise distribution P_n = 1/N over the N images:

      L = -(1/B) sum_i [ log h_i0 / (h_i0 + K/N + eps) + sum_(k>=1) log (K/N) / (h_ik + K/N + eps) ]

    computed in log space. Z is a constant set on the first batch to N times the mean of
    exp(score / tau) (the reference's Monte-Carlo estimate of the partition function), kept in a
    buffer. After the scores, each image's own row of both banks is moved towards its new
    embedding: row <- normalise(m row + (1 - m) v), m = `momentum` (under several processes the
    rows of every rank are gathered first, so all ranks keep the same banks).

    The banks start uniform in [-s, s] with s = 1 / sqrt(feat_dim / 3), so each coordinate has
    variance 1 / feat_dim and each row about unit norm; they are drawn from `generator`.
    """

    uses_features = True

    def __init__(self, student_dim: int, teacher_dim: int, num_data: int, *, feat_dim: int = 128, num_negatives: int = 16384,
                 temperature: float = 0.07, momentum: float = 0.5, generator: torch.Generator | None = None):
        super().__init__()
        if feat_dim < 1 or num_negatives < 1 or num_data < 2:
            raise ValueError(f"CRD needs --feat-dim >= 1, --nce-k >= 1 and two or more training images (got {feat_dim}, {num_negatives}, {num_data})")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"--nce-t must be a positive finite number, got {temperature}")
        if not 0 <= momentum < 1:
            raise ValueError(f"--nce-m must lie in [0, 1), got {momentum}")
        self.embed_student, self.embed_teacher = Embed(student_dim, feat_dim), Embed(teacher_dim, feat_dim)
        self.num_data, self.num_negatives, self.temperature, self.momentum = num_data, num_negatives, float(temperature), float(momentum)
        bound = 1.0 / math.sqrt(feat_dim / 3)
        for name in ("student_bank", "teacher_bank"):
            self.register_buffer(name, (torch.rand(num_data, feat_dim, generator=generator) * 2 - 1) * bound)
        # Z_t, Z_s of the docstring; 0 until the first batch sets them.
        self.register_buffer("normalizers", torch.zeros(2))

    def _nce(self, scores: Tensor, which: int) -> Tensor:
        """The NCE loss of one half from scores <v, bank[c_ik]> / tau [B, K + 1]."""
        if self.normalizers[which] == 0:
            mean = all_ranks_mean(torch.exp(scores.detach()).sum(), scores.numel())
            self.normalizers[which] = mean * self.num_data
        log_h = scores - torch.log(self.normalizers[which])
        noise = (scores.shape[1] - 1) / self.num_data  # K P_n
        log_denominator = torch.logaddexp(log_h, log_h.new_tensor(math.log(noise + 1e-7)))
        positive = (log_h[:, 0] - log_denominator[:, 0]).sum()
        negative = (math.log(noise) - log_denominator[:, 1:]).sum()
        return -(positive + negative) / len(scores)

    def forward(self, student_features: Tensor, teacher_features: Tensor, sample_index: Tensor, contrast_index: Tensor) -> Tensor:
        """features [B, d_s], [B, d_t]; sample_index [B] (each image's row); contrast_index [B, K + 1]."""
        v_s, v_t = self.embed_student(student_features), self.embed_teacher(teacher_features)
        # v @ bank^T then a gather: the same dot products as gathering [B, K + 1, feat_dim] rows first,
        # without that tensor (2 GB at the reference's K = 16384, B = 64, feat_dim = 128 for both halves).
        to_teacher = (v_s @ self.teacher_bank.t()).gather(1, contrast_index) / self.temperature
        to_student = (v_t @ self.student_bank.t()).gather(1, contrast_index) / self.temperature
        loss = self._nce(to_teacher, 1) + self._nce(to_student, 0)
        with torch.no_grad():
            index, v_s, v_t = all_ranks(sample_index, v_s.detach(), v_t.detach())
            for name, new in (("student_bank", v_s), ("teacher_bank", v_t)):
                bank = getattr(self, name)
                rows = F.normalize(bank.index_select(0, index) * self.momentum + new * (1 - self.momentum), dim=1)
                # Out of place: autograd keeps the bank the scores were computed from for the backward pass.
                setattr(self, name, bank.index_copy(0, index, rows))
        return loss

    def extra_repr(self) -> str:
        return f"num_data={self.num_data}, K={self.num_negatives}, tau={self.temperature}, momentum={self.momentum}"


# ---------------------------------------------------------------------------------------------
# ITRD.
# ---------------------------------------------------------------------------------------------


class ITRDLoss(nn.Module):
    """Information-theoretic representation distillation (Miles et al., ICLR 2022), as ABKD's CIFAR
    code computes it (standard_classification/distiller_zoo/itrd.py):
    `corr_weight * L_corr + mutual_weight * L_mutual`.

    A linear head maps the student's features to the teacher's width, z_s = W f_s + b [B, d_t].

      L_corr    with z~ the batch-standardised features ((z - mean_B) / std_B, unbiased std) and
                c = (1/B) sum_b z~_s,b * z~_t,b [d_t] the per-dimension cross-correlation:
                log2 sum_d |c_d - 1|^(2 alpha), alpha = `order` (the Renyi order)
      L_mutual  with the rows L2-normalised (z_s, or f_s itself when d_s = d_t, as the reference),
                G_s = Z_s Z_s^T, G_t = F_t F_t^T, G_st = G_s * G_t (entry-wise), G_s and G_st each
                divided by its trace: ||G_s||_F^2 - ||G_st||_F^2. With the order-2 matrix entropy
                H_2(A) = -log2 ||A||_F^2 this is the log-free form of H_2(S, T) - H_2(S), lowered to
                raise the mutual information H(S) + H(T) - H(S, T) (H(T) is fixed)

    Differences from the reference, both where it would give NaN: the standard deviation gets
    1e-8 added (a feature dimension that is constant over the batch, e.g. a dead ReLU channel of
    the teacher, divides 0 by 0 there), and a batch of one, which has no batch statistics, gives
    L_corr = 0 (with the head in the graph).
    """

    uses_features = True

    def __init__(self, student_dim: int, teacher_dim: int, *, corr_weight: float = 2.0, mutual_weight: float = 1.0, order: float = 1.5):
        super().__init__()
        if not (math.isfinite(order) and order > 0):
            raise ValueError(f"--itrd-order must be a positive finite number, got {order}")
        self.embed = nn.Linear(student_dim, teacher_dim)
        self.same_width = student_dim == teacher_dim
        self.corr_weight, self.mutual_weight, self.order = float(corr_weight), float(mutual_weight), float(order)

    def correlation(self, student_features: Tensor, teacher_features: Tensor) -> Tensor:
        z_s = self.embed(student_features)
        if len(z_s) < 2:
            return 0.0 * z_s.sum()
        z_s = (z_s - z_s.mean(0)) / (z_s.std(0) + 1e-8)
        z_t = (teacher_features - teacher_features.mean(0)) / (teacher_features.std(0) + 1e-8)
        c = (z_s * z_t).sum(0) / len(z_s)
        return torch.log2((c - 1).abs().pow(2 * self.order).sum())

    def mutual(self, student_features: Tensor, teacher_features: Tensor) -> Tensor:
        z_s = F.normalize(student_features if self.same_width else self.embed(student_features), dim=1)
        z_t = F.normalize(teacher_features, dim=1)
        gram_s = z_s @ z_s.t()
        gram_st = gram_s * (z_t @ z_t.t())
        gram_s, gram_st = gram_s / torch.trace(gram_s), gram_st / torch.trace(gram_st)
        return (gram_s.pow(2) - gram_st.pow(2)).sum()

    def forward(self, student_features: Tensor, teacher_features: Tensor, *_: Tensor) -> Tensor:
        """features [B, d_s], [B, d_t]."""
        return self.corr_weight * self.correlation(student_features, teacher_features) + self.mutual_weight * self.mutual(student_features, teacher_features)

    def extra_repr(self) -> str:
        return f"corr_weight={self.corr_weight}, mutual_weight={self.mutual_weight}, order={self.order}"


def build_crd(*, student_dim: int, teacher_dim: int, num_data: int, feat_dim: int = 128, nce_k: int = 16384, nce_t: float = 0.07,
              nce_m: float = 0.5, seed: int = 0, **_) -> nn.Module:
    """CRD (Tian et al., ICLR 2020) with RepDistiller's defaults; the banks drawn from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return CRDLoss(student_dim, teacher_dim, num_data, feat_dim=feat_dim, num_negatives=nce_k, temperature=nce_t, momentum=nce_m, generator=generator)


def build_itrd(*, student_dim: int, teacher_dim: int, itrd_corr_weight: float = 2.0, itrd_mutual_weight: float = 1.0, itrd_order: float = 1.5,
               **_) -> nn.Module:
    """ITRD (Miles et al., ICLR 2022) with ABKD's defaults (lambda_corr 2, lambda_mutual 1, alpha_it 1.5)."""
    return ITRDLoss(student_dim, teacher_dim, corr_weight=itrd_corr_weight, mutual_weight=itrd_mutual_weight, order=itrd_order)


FEATURE_LOSSES = {"crd": build_crd, "itrd": build_itrd}


def build_feature_loss(name: str, **options) -> nn.Module:
    """The feature term `name` (student_dim, teacher_dim, num_data and its own options; each
    builder takes the ones it needs). Unknown name -> ValueError listing the valid names."""
    if name not in FEATURE_LOSSES:
        raise ValueError(f"unknown feature distillation loss '{name}'; valid names: {', '.join(FEATURE_LOSSES)}")
    return FEATURE_LOSSES[name](**options)
