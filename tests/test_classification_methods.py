"""Every classification method beyond KD/ABKD/DKD/LS: the abkd.losses divergences on the class
axis, TTM/WTTM, DIST, CRD and ITRD, in the CIFAR and CLIP recipes.

(a) Each term's value on fixed small logits or features equals its paper's formula, written here
in float64 from probabilities (Python floats or plain tensor maths, never the library), and so do
its gradients where they are cheap to get. (b) One short real run per method through each CLI's
`main()` on the tiny models and synthetic data of tests/test_cifar_training.py and
tests/test_clip_prompt_kd.py: finite loss, changed parameters (the trainable heads of CRD/ITRD
included), exact resume with the heads and the memory bank. (c) Unknown names and missing
parameters fail naming what is valid or missing.
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import multiprocess_env
from test_cifar_training import FAST, cifar_dir, one_thread, teacher_path  # noqa: F401  (fixtures)
from test_clip_prompt_kd import promptkd, student_argv  # noqa: F401  (fixture)

from abkd.classification import (
    DISTILL_LOSSES,
    PROMPTKD_LOSSES,
    DISTLoss,
    LogitDistillation,
    PromptKDLoss,
    TTMLoss,
    build_distill_loss,
)
from abkd.feature_distillation import FEATURE_LOSSES, CRDLoss, ITRDLoss, build_feature_loss
from base_to_new_classification import train as clip_train
from standard_classification import train_student
from standard_classification.data import ContrastiveIndices

REPO = Path(__file__).resolve().parents[1]
STUDENT = [[1.0, -0.5, 2.0, 0.0, 0.3], [0.2, 0.1, -1.0, 1.5, 0.0], [-0.3, 0.8, 0.4, 0.0, 2.2], [3.0, -2.0, 0.0, 0.5, -0.7]]
TEACHER = [[2.5, -1.0, 0.5, 0.0, 1.0], [0.0, 0.4, -2.0, 3.0, 0.1], [0.6, 0.2, 0.0, -0.5, 1.4], [-1.0, 2.0, 1.0, 0.0, 4.0]]
B, C = 4, 5


def softmax(row, T=1.0):
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def mix(a, b, weight_a):
    return [weight_a * x + (1 - weight_a) * y for x, y in zip(a, b)]


# The divergences of abkd.losses as their papers define them, on probabilities p (teacher), q (student).
DEFINITIONS = {
    "fkl": lambda p, q, lam: kl(p, q),
    "rkl": lambda p, q, lam: kl(q, p),
    # generalised JSD (GKD; DistiLLM): lam KL(q || m) + (1 - lam) KL(p || m), m = (1 - lam) p + lam q
    "jsd": lambda p, q, lam: lam * kl(q, mix(p, q, 1 - lam)) + (1 - lam) * kl(p, mix(p, q, 1 - lam)),
    "tvd": lambda p, q, lam: 0.5 * sum(abs(a - b) for a, b in zip(p, q)),
    # DistiLLM eqs. 3-4: KL(p || lam p + (1 - lam) q), KL(q || (1 - lam) p + lam q)
    "sfkl": lambda p, q, lam: kl(p, mix(p, q, lam)),
    "srkl": lambda p, q, lam: kl(q, mix(q, p, lam)),
}
LAM = {"jsd": 0.3, "sfkl": 0.2, "srkl": 0.4}
OPTION = {"jsd": "jsd_lam", "sfkl": "skew_alpha", "srkl": "skew_alpha"}


def tensors():
    student = torch.tensor(STUDENT, dtype=torch.float64, requires_grad=True)
    return student, torch.tensor(TEACHER, dtype=torch.float64), torch.tensor([2, 0, 4, 1])


def grad_of(loss_fn, student, *rest):
    student = student.detach().clone().requires_grad_()
    (grad,) = torch.autograd.grad(loss_fn(student, *rest), student)
    return grad


# ---------------------------------------------------------------------------------------------
# (a) Values and gradients against the definitions.
# ---------------------------------------------------------------------------------------------


def torch_definition(name, lam):
    """The same definitions on tensors (float64 autograd), for the gradients."""

    def loss(student, teacher, T):
        p, q = torch.softmax(teacher / T, -1), torch.softmax(student / T, -1)

        def kl_t(a, b):
            return (a * (a / b).log()).sum(-1)

        value = {
            "fkl": lambda: kl_t(p, q), "rkl": lambda: kl_t(q, p), "tvd": lambda: 0.5 * (p - q).abs().sum(-1),
            "jsd": lambda: lam * kl_t(q, (1 - lam) * p + lam * q) + (1 - lam) * kl_t(p, (1 - lam) * p + lam * q),
            "sfkl": lambda: kl_t(p, lam * p + (1 - lam) * q), "srkl": lambda: kl_t(q, (1 - lam) * p + lam * q),
        }[name]()  # fmt: skip
        return T**2 * value.mean()

    return loss


@pytest.mark.parametrize("name", list(DEFINITIONS))
def test_cifar_divergences_are_t_squared_batch_means_of_their_definitions(name):
    """kd's convention (RepDistiller's DistillKL: sum over classes, mean over the batch, times T^2)."""
    student, teacher, labels = tensors()
    T, lam = 2.0, LAM.get(name, 0.0)
    expected = T**2 * sum(DEFINITIONS[name](softmax(t, T), softmax(s, T), lam) for s, t in zip(STUDENT, TEACHER)) / B
    options = {OPTION[name]: lam} if name in OPTION else {}
    term = build_distill_loss(name, temperature=T, **options)
    assert term(student, teacher, labels).item() == pytest.approx(expected, rel=1e-12)
    torch.testing.assert_close(grad_of(term, student, teacher, labels), grad_of(torch_definition(name, lam), student, teacher, T), rtol=1e-9, atol=1e-12)
    if name == "fkl":  # kd is fkl
        assert build_distill_loss("kd", temperature=T)(student, teacher, labels).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", list(DEFINITIONS))
def test_clip_divergences_follow_kd_s_promptkd_reduction(name):
    """T^2 * sum over batch and classes / (B * C), times KD_WEIGHT: ABKD's losses/kd.py for kd."""
    student, teacher, _ = tensors()
    T, lam, weight = 2.0, LAM.get(name, 0.1), 7.0
    expected = weight * T**2 * sum(DEFINITIONS[name](softmax(t, T), softmax(s, T), lam) for s, t in zip(STUDENT, TEACHER)) / (B * C)
    params = {OPTION[name]: lam} if name in OPTION else {}
    loss = PromptKDLoss(name, temperature=T, kd_ratio=weight, num_classes=C, **params)
    assert loss(student, teacher).item() == pytest.approx(expected, rel=1e-12)


def ttm_by_hand(gamma, weighted=False, ab=None):
    """Zheng & Yang (2024): p~ = p^gamma / sum p^gamma at T = 1; mean_B D(p~ || q), WTTM times sum p^gamma."""
    total = 0.0
    for s, t in zip(STUDENT, TEACHER):
        p, q = softmax(t), softmax(s)
        power_sum = sum(x**gamma for x in p)
        transformed = [x**gamma / power_sum for x in p]
        if ab is None:
            value = kl(transformed, q)
        else:  # the alpha-beta divergence's general case (Cichocki et al., 2011; ABKD eq. 6)
            a, b = ab
            value = -sum(x**a * y**b - a / (a + b) * x ** (a + b) - b / (a + b) * y ** (a + b) for x, y in zip(transformed, q)) / (a * b)
        total += value * (power_sum if weighted else 1.0)
    return total / B


def test_ttm_wttm_abttm_match_the_transformed_teacher_definitions():
    student, teacher, labels = tensors()
    gamma = 0.3
    assert TTMLoss(gamma)(student, teacher, labels).item() == pytest.approx(ttm_by_hand(gamma), rel=1e-12)
    assert TTMLoss(gamma, weighted=True)(student, teacher, labels).item() == pytest.approx(ttm_by_hand(gamma, weighted=True), rel=1e-12)
    abttm = build_distill_loss("abttm", ttm_exponent=gamma, ab_alpha=0.7, ab_beta=0.4)
    assert abttm(student, teacher, labels).item() == pytest.approx(ttm_by_hand(gamma, ab=(0.7, 0.4)), rel=1e-10)
    # ABKD's train_ttm.sh: "ABTTM degenerates to TTM when choosing alpha=1 and beta=0".
    at_kl = build_distill_loss("abttm", ttm_exponent=gamma, ab_alpha=1.0, ab_beta=0.0)(student, teacher, labels)
    assert at_kl.item() == pytest.approx(ttm_by_hand(gamma), rel=1e-10)
    # gamma = 1 leaves the teacher as it is: plain KL at T = 1, without T^2 (kd at T = 1).
    assert TTMLoss(1.0)(student, teacher, labels).item() == pytest.approx(build_distill_loss("kd", temperature=1.0)(student, teacher, labels).item(), rel=1e-12)

    def wttm_definition(s, t):
        p = torch.softmax(t, -1)
        powered = p**gamma
        transformed = powered / powered.sum(-1, keepdim=True)
        return (powered.sum(-1) * (transformed * (transformed.log() - torch.log_softmax(s, -1))).sum(-1)).mean()

    wttm = build_distill_loss("wttm", ttm_exponent=gamma)
    torch.testing.assert_close(grad_of(wttm, student, teacher, labels), grad_of(wttm_definition, student, teacher), rtol=1e-9, atol=1e-12)
    # CLIP: ABKD's losses/ttm.py, a batch mean without / C.
    clip_ttm = PromptKDLoss("ttm", temperature=1.0, kd_ratio=3.0, num_classes=C, ttm_exponent=gamma)
    assert clip_ttm(student, teacher).item() == pytest.approx(3.0 * ttm_by_hand(gamma), rel=1e-12)


def pearson_by_hand(a, b):
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    a, b = [x - mean_a for x in a], [x - mean_b for x in b]
    return sum(x * y for x, y in zip(a, b)) / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)) + 1e-8)


def test_dist_is_tau_squared_inter_and_intra_class_pearson_relations():
    """Huang et al. (2022): 1 - mean Pearson over samples (inter) and over classes (intra), tau^2, weights beta, gamma."""
    student, teacher, labels = tensors()
    tau, beta, gamma = 3.0, 0.7, 1.9
    ys, yt = [softmax(r, tau) for r in STUDENT], [softmax(r, tau) for r in TEACHER]
    inter = 1 - sum(pearson_by_hand(s, t) for s, t in zip(ys, yt)) / B
    intra = 1 - sum(pearson_by_hand([r[j] for r in ys], [r[j] for r in yt]) for j in range(C)) / C
    expected = tau**2 * (beta * inter + gamma * intra)
    dist = build_distill_loss("dist", dist_temperature=tau, dist_inter_weight=beta, dist_intra_weight=gamma)
    assert dist(student, teacher, labels).item() == pytest.approx(expected, rel=1e-10)
    assert DISTLoss(tau)(student, teacher).item() == pytest.approx(tau**2 * (inter + intra), rel=1e-10)

    def definition(s, t):
        ps, pt = torch.softmax(s / tau, -1), torch.softmax(t / tau, -1)

        def rho(a, b, dim):
            a, b = a - a.mean(dim, keepdim=True), b - b.mean(dim, keepdim=True)
            return (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim) + 1e-8)

        return tau**2 * (beta * (1 - rho(ps, pt, 1).mean()) + gamma * (1 - rho(ps, pt, 0).mean()))

    torch.testing.assert_close(grad_of(dist, student, teacher, labels), grad_of(definition, student, teacher), rtol=1e-9, atol=1e-12)
    # CLIP: ABKD's losses/dist.py, no / C.
    clip_dist = PromptKDLoss("dist", temperature=1.0, kd_ratio=2.0, num_classes=C, dist_temperature=tau, dist_inter_weight=beta, dist_intra_weight=gamma)
    assert clip_dist(student, teacher).item() == pytest.approx(2.0 * expected, rel=1e-10)


def crd_by_hand(f_s, f_t, index, contrast, embed_s, embed_t, bank_s, bank_t, tau, momentum, normalizers=None):
    """RepDistiller's CRD (Tian et al., 2020), written out: (loss, new student bank, new teacher bank, (Z_s, Z_t))."""
    n, k = len(bank_s), contrast.shape[1] - 1
    v_s = F.normalize(f_s @ embed_s[0].t() + embed_s[1], dim=1)
    v_t = F.normalize(f_t @ embed_t[0].t() + embed_t[1], dim=1)
    loss, zs = 0.0, []
    for which, (anchor, bank) in enumerate(((v_t, bank_s), (v_s, bank_t))):  # teacher anchor on the student bank, and back
        scores = torch.stack([torch.stack([anchor[i] @ bank[j] for j in contrast[i]]) for i in range(len(anchor))]) / tau
        z = n * scores.exp().mean().detach() if normalizers is None else normalizers[which]
        zs.append(z)
        h = scores.exp() / z
        noise = k / n
        loss = loss - (torch.log(h[:, 0] / (h[:, 0] + noise + 1e-7)).sum() + torch.log(noise / (h[:, 1:] + noise + 1e-7)).sum()) / len(anchor)
    new_s, new_t = bank_s.clone(), bank_t.clone()
    for bank, v in ((new_s, v_s), (new_t, v_t)):
        for row, i in enumerate(index.tolist()):
            updated = momentum * bank[i] + (1 - momentum) * v[row].detach()
            bank[i] = updated / updated.norm()
    return loss, new_s, new_t, zs


def test_crd_loss_memory_update_and_normaliser_match_repdistiller_s_definition():
    torch.manual_seed(0)
    crd = CRDLoss(4, 6, 7, feat_dim=3, num_negatives=3, temperature=0.5, momentum=0.3, generator=torch.Generator().manual_seed(1)).double()
    bank_s, bank_t = crd.student_bank.clone(), crd.teacher_bank.clone()
    # The initial banks: uniform in [-s, s], s = 1 / sqrt(feat_dim / 3) = 1.
    assert bank_s.abs().max() <= 1.0 and not torch.equal(bank_s, bank_t)
    embed_s = [p.detach().clone() for p in crd.embed_student.linear.parameters()]
    embed_t = [p.detach().clone() for p in crd.embed_teacher.linear.parameters()]
    f_s, f_t = torch.randn(2, 4, dtype=torch.float64, requires_grad=True), torch.randn(2, 6, dtype=torch.float64)
    index, contrast = torch.tensor([4, 1]), torch.tensor([[4, 0, 2, 6], [1, 3, 5, 0]])
    expected, new_s, new_t, zs = crd_by_hand(f_s, f_t, index, contrast, embed_s, embed_t, bank_s, bank_t, 0.5, 0.3)
    loss = crd(f_s, f_t, index, contrast)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)
    torch.testing.assert_close(torch.autograd.grad(loss, f_s)[0], torch.autograd.grad(expected, f_s)[0], rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(crd.student_bank, new_s, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(crd.teacher_bank, new_t, rtol=1e-12, atol=1e-14)
    assert torch.equal(crd.student_bank[[0, 2, 3, 5, 6]], bank_s[[0, 2, 3, 5, 6]])  # only the batch's own rows move
    torch.testing.assert_close(crd.normalizers, torch.stack(zs).to(torch.float64))
    # The partition constants stay those of the first batch.
    g_s, g_t = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    second, *_ = crd_by_hand(g_s, g_t, torch.tensor([0, 5]), torch.tensor([[0, 1, 2, 3], [5, 6, 4, 0]]), embed_s, embed_t, new_s, new_t, 0.5, 0.3, zs)
    assert crd(g_s, g_t, torch.tensor([0, 5]), torch.tensor([[0, 1, 2, 3], [5, 6, 4, 0]])).item() == pytest.approx(second.item(), rel=1e-10)


@pytest.mark.parametrize("student_dim", [4, 6])
def test_itrd_matches_its_correlation_and_mutual_information_terms(student_dim):
    """Miles et al. (2022) as ABKD's itrd.py: log2 sum |c - 1|^(2 alpha) and ||G_s||^2 - ||G_st||^2."""
    torch.manual_seed(0)
    itrd = ITRDLoss(student_dim, 6, corr_weight=2.0, mutual_weight=0.7, order=1.5).double()
    weight, bias = (p.detach().clone() for p in itrd.embed.parameters())
    f_s, f_t = torch.randn(5, student_dim, dtype=torch.float64, requires_grad=True), torch.randn(5, 6, dtype=torch.float64)

    def definition(f_s, f_t):
        z = f_s @ weight.t() + bias
        zs, zt = (z - z.mean(0)) / z.std(0), (f_t - f_t.mean(0)) / f_t.std(0)
        c = (zs * zt).sum(0) / len(z)
        corr = torch.log2((((c - 1).abs() ** 2) ** 1.5).sum())
        a = F.normalize(f_s if student_dim == 6 else z, dim=1)
        b = F.normalize(f_t, dim=1)
        gs = a @ a.t()
        gst = gs * (b @ b.t())
        gs, gst = gs / gs.trace(), gst / gst.trace()
        return 2.0 * corr + 0.7 * ((gs**2).sum() - (gst**2).sum())

    expected = definition(f_s, f_t)
    loss = itrd(f_s, f_t)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-7)  # the 1e-8 added to the std
    torch.testing.assert_close(torch.autograd.grad(loss, f_s)[0], torch.autograd.grad(expected, f_s)[0], rtol=1e-5, atol=1e-7)
    # A dead teacher channel (constant over the batch) stays finite; the reference divides 0 by 0 there.
    dead = f_t.clone()
    dead[:, 0] = 0.0
    assert torch.isfinite(itrd(f_s, dead))


def test_contrastive_indices_are_repdistiller_s_positive_and_negatives():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 2])
    index = torch.tensor([0, 4, 9])
    exact = ContrastiveIndices(labels, 5, "exact")(index, torch.Generator().manual_seed(0))
    assert exact.shape == (3, 6) and torch.equal(exact[:, 0], index)
    for row, i in zip(exact, index):
        negatives = row[1:].tolist()
        assert all(labels[j] != labels[i] for j in negatives) and len(set(negatives)) == 5  # distinct: 6 or 7 candidates
    relax = ContrastiveIndices(labels, 3, "relax")(index, torch.Generator().manual_seed(1))
    assert all(labels[p] == labels[i] for p, i in zip(relax[:, 0], index))
    # More negatives than images of the other classes: drawn with replacement, as the reference does.
    many = ContrastiveIndices(labels, 20, "exact")(index, torch.Generator().manual_seed(2))
    assert many.shape == (3, 21) and all(labels[j] != labels[i] for row, i in zip(many, index) for j in row[1:])
    # Each negative is equally likely: 4000 draws of 3 of the 6 negatives of class 0.
    draws = ContrastiveIndices(labels, 3, "exact")(torch.zeros(4000, dtype=torch.int64), torch.Generator().manual_seed(3))[:, 1:]
    counts = torch.bincount(draws.flatten(), minlength=10).float()
    assert counts[[0, 3, 6]].sum() == 0 and torch.allclose(counts[[1, 2, 4, 5, 7, 8, 9]] / 12000, torch.full((7,), 3 / 7 / 3), atol=0.02)
    # A function of the generator: the same seed gives the same indices.
    again = ContrastiveIndices(labels, 5, "exact")(index, torch.Generator().manual_seed(0))
    assert torch.equal(exact, again)


def test_repdistiller_s_kd_command_is_the_same_objective_through_add():
    """RepDistiller's `--distill kd -r 0.1 -a 0.9 -b 0` (KD as the additional term) and our default
    `--distill kd` (0.1 CE + 0.9 KD as the main term) are the same loss."""
    args = train_student.parse_args(["--path_t", "save/models/resnet56_vanilla/ckpt_epoch_240.pth", "--model_s", "resnet20", "--distill", "kd",
                                     "-r", "0.1", "-a", "0.9", "-b", "0"])
    assert (args.ce_weight, args.add_weight, args.kd_ratio, args.add) == (0.1, 0.9, 0.0, "kd")
    torch.manual_seed(0)
    student, teacher = torch.nn.Linear(6, 5).double(), torch.nn.Linear(6, 5).double()
    batch = (torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 5, (8,)))
    kd = build_distill_loss("kd", temperature=4.0)
    through_add = LogitDistillation(student, ce_weight=0.1, kd_ratio=0.0, teacher=teacher, distill=kd, add=kd, add_weight=0.9)(batch)
    main_term = LogitDistillation(student, ce_weight=0.1, kd_ratio=0.9, teacher=teacher, distill=kd)(batch)
    assert through_add[0].item() == pytest.approx(main_term[0].item(), rel=1e-12) and "add" in through_add[1]


# ---------------------------------------------------------------------------------------------
# (c) Command lines: reference spellings, unknown names, missing parameters.
# ---------------------------------------------------------------------------------------------

CIFAR_BASE = ["--path_t", "save/models/resnet56_vanilla/ckpt_epoch_240.pth", "--model_s", "resnet20"]
CLIP_BASE = ["--dataset", "dtd", "--root", "r", "--teacher-model-path", "t", "--student-model-path", "s", "--teacher-ckpt", "c", "--save", "x"]


def test_cifar_reference_spellings_and_defaults():
    """ABKD's train_student.py flags (RepDistiller's for CRD) and its defaults."""
    crd = train_student.parse_args([*CIFAR_BASE, "--distill", "crd", "--feat_dim", "64", "--nce_k", "4096", "--nce_t", "0.1", "--nce_m", "0.9",
                                    "--mode", "relax", "-a", "1"])
    assert (crd.feat_dim, crd.nce_k, crd.nce_t, crd.nce_m, crd.crd_mode, crd.add, crd.add_weight) == (64, 4096, 0.1, 0.9, "relax", "kd", 1.0)
    assert (crd.ce_weight, crd.kd_ratio) == (1.0, 0.8)  # RepDistiller README: -a 0 -b 0.8, -r 1
    default_crd = train_student.parse_args([*CIFAR_BASE, "--distill", "crd"])
    assert (default_crd.feat_dim, default_crd.nce_k, default_crd.nce_t, default_crd.nce_m, default_crd.crd_mode) == (128, 16384, 0.07, 0.5, "exact")
    itrd = train_student.parse_args([*CIFAR_BASE, "--distill", "itrd", "--lambda_corr", "3", "--lambda_mutual", "0.5", "--alpha_it", "1.01"])
    assert (itrd.itrd_corr_weight, itrd.itrd_mutual_weight, itrd.itrd_order, itrd.ce_weight, itrd.kd_ratio) == (3.0, 0.5, 1.01, 1.0, 1.0)
    default_itrd = train_student.parse_args([*CIFAR_BASE, "--distill", "itrd"])
    assert (default_itrd.itrd_corr_weight, default_itrd.itrd_mutual_weight, default_itrd.itrd_order) == (2.0, 1.0, 1.5)
    dist = train_student.parse_args([*CIFAR_BASE, "--distill", "dist", "--dist_beta", "2", "--dist_gamma", "3", "--dist_tau", "5"])
    assert (dist.dist_inter_weight, dist.dist_intra_weight, dist.dist_temperature, dist.ce_weight, dist.kd_ratio) == (2.0, 3.0, 5.0, 1.0, 1.0)
    default_dist = train_student.parse_args([*CIFAR_BASE, "--distill", "dist"])
    assert (default_dist.dist_inter_weight, default_dist.dist_intra_weight, default_dist.dist_temperature) == (1.0, 1.0, 4.0)
    # ABKD's train_ttm.sh: --distill ttm --ttm_l L -r 1 -b B -a 0
    ttm = train_student.parse_args([*CIFAR_BASE, "--distill", "ttm", "--ttm_l", "0.1", "-r", "1", "-b", "76", "-a", "0"])
    assert (ttm.ttm_exponent, ttm.ce_weight, ttm.kd_ratio, ttm.add_weight) == (0.1, 1.0, 76.0, 0.0)
    assert train_student.parse_args([*CIFAR_BASE, "--distill", "wttm", "--kd-weight", "8"]).ttm_exponent == 1.0  # ABKD's --ttm_l default
    jsd = train_student.parse_args([*CIFAR_BASE, "--distill", "jsd", "--jsd-lam", "0.9"])
    assert (jsd.jsd_lam, jsd.ce_weight, jsd.kd_ratio, jsd.kd_temperature) == (0.9, 0.1, 0.9, 4.0)  # kd's recipe
    for name in ("fkl", "rkl", "tvd", "sfkl", "srkl"):
        args = train_student.parse_args([*CIFAR_BASE, "--distill", name])
        assert (args.ce_weight, args.kd_ratio, args.kd_temperature) == (0.1, 0.9, 4.0), name


def test_cifar_unknown_names_and_missing_or_bad_parameters_fail_clearly(capsys):
    with pytest.raises(SystemExit):
        train_student.parse_args([*CIFAR_BASE, "--distill", "fitnet"])
    err = capsys.readouterr().err
    assert "--distill" in err and all(f"'{name}'" in err for name in (*DISTILL_LOSSES, *FEATURE_LOSSES))
    for name in ("ttm", "wttm", "abttm"):
        with pytest.raises(SystemExit):
            train_student.parse_args([*CIFAR_BASE, "--distill", name])
        assert "--kd-weight (-b)" in capsys.readouterr().err
    for argv, flag in ((["--distill", "ttm", "-b", "1", "--ttm_l", "0"], "--ttm-exponent"), (["--distill", "crd", "--nce_m", "1"], "--nce-m"),
                       (["--distill", "crd", "--nce_k", "0"], "--nce-k"), (["--distill", "dist", "--dist_tau", "-1"], "--dist-temperature"),
                       (["--distill", "kd", "--add", "dkd", "-a", "1"], "--add")):
        with pytest.raises(SystemExit):
            train_student.parse_args([*CIFAR_BASE, *argv])
        assert flag in capsys.readouterr().err, argv
    with pytest.raises(ValueError, match="valid names: kd, fkl, rkl, jsd, tvd, sfkl, srkl, ab, dkd, abdkd, ls, abls, ttm, wttm, abttm, dist"):
        build_distill_loss("crd", temperature=4.0)
    with pytest.raises(ValueError, match="valid names: crd, itrd"):
        build_feature_loss("kd", student_dim=2, teacher_dim=2)
    with pytest.raises(ValueError, match="'lam' must lie in"):
        build_distill_loss("jsd", temperature=1.0, jsd_lam=1.5)


def test_clip_accepts_every_divergence_ttm_and_dist_and_names_what_is_missing():
    for name in PROMPTKD_LOSSES:
        extra = ["--ab_alpha", "0.5", "--ab_beta", "0.5"] if name == "ab" else []
        assert clip_train.parse_args([*CLIP_BASE, "--distill", name, *extra]).distill == name
    args = clip_train.parse_args([*CLIP_BASE, "--distill", "dist", "--dist_beta", "2", "--dist_gamma", "3", "--dist_tau", "4", "--ttm_l", "0.3"])
    assert (args.dist_inter_weight, args.dist_intra_weight, args.dist_temperature, args.ttm_exponent) == (2.0, 3.0, 4.0, 0.3)
    default = clip_train.parse_args([*CLIP_BASE, "--distill", "ttm"])
    assert (default.ttm_exponent, default.dist_temperature, default.jsd_lam, default.skew_alpha) == (0.1, 1.0, 0.1, 0.1)  # ABKD's --ttm_l 0.1
    with pytest.raises(ValueError, match="unknown distillation loss 'crd'; valid names: kd, fkl, rkl, jsd, tvd, sfkl, srkl, dkd, ls, ab, ttm, dist"):
        clip_train.parse_args([*CLIP_BASE, "--distill", "crd"])
    with pytest.raises(ValueError, match="--distill ab requires --ab_alpha, --ab_beta"):
        clip_train.parse_args([*CLIP_BASE, "--distill", "ab"])
    with pytest.raises(ValueError, match="--distill ttm requires --ttm-exponent"):
        PromptKDLoss("ttm", temperature=1.0, kd_ratio=1.0, num_classes=3)
    with pytest.raises(ValueError, match="--distill dist requires --dist-temperature"):
        PromptKDLoss("dist", temperature=1.0, kd_ratio=1.0, num_classes=3, dist_inter_weight=1.0, dist_intra_weight=1.0)
    with pytest.raises(ValueError, match="--ttm-exponent must be a positive"):
        clip_train.parse_args([*CLIP_BASE, "--distill", "ttm", "--ttm_l", "0"])


# ---------------------------------------------------------------------------------------------
# (b) Real runs through the CLIs' main().
# ---------------------------------------------------------------------------------------------

# One epoch of two steps (60 images, batches of 30) per method.
SHORT = [*FAST, "--batch-size", "30", "--epochs", "1"]
CIFAR_RUNS = {
    "crd": ["--nce-k", "16"],
    "crd-relax-with-kd": ["--nce-k", "16", "--mode", "relax", "-a", "1"],
    "itrd": [],
    "ttm-with-wttm": ["-b", "4", "--ttm_l", "0.5", "--add", "wttm", "-a", "0.5"],
    "dist": [],
}


@pytest.mark.parametrize("run", list(CIFAR_RUNS))
def test_cifar_feature_terms_and_added_terms_train_their_heads_with_the_student(run, cifar_dir, teacher_path, tmp_path, monkeypatch):  # noqa: F811
    captured = {}
    real_train = train_student.train

    def recording_train(run_, name, student, train_set, test_set, teacher, distill, **kwargs):
        captured.update(student={k: v.clone() for k, v in student.state_dict().items()}, term=distill,
                        term_state={k: v.clone() for k, v in distill.state_dict().items()}, add=kwargs["add"])
        return real_train(run_, name, student, train_set, test_set, teacher, distill, **kwargs)

    monkeypatch.setattr(train_student, "train", recording_train)
    distill = run.split("-")[0]
    result = train_student.main(["--teacher-ckpt", str(teacher_path), "--model", "resnet8", "--distill", distill, *CIFAR_RUNS[run],
                                 "--data-folder", str(cifar_dir), "--save", str(tmp_path), "--log-interval", "1", *SHORT])
    (epoch,) = result["history"]
    assert math.isfinite(epoch["train_loss"]) and math.isfinite(epoch["train_kd"])
    assert ("train_add" in epoch) == ("-a" in CIFAR_RUNS[run]) and math.isfinite(epoch.get("train_add", 0.0))
    final = torch.load(tmp_path / "ckpt_epoch_1.pth", weights_only=True)["model"]
    assert set(final) == set(captured["student"])  # the zoo file holds the student alone
    assert any(not torch.equal(final[key], captured["student"][key]) for key in final if final[key].is_floating_point())
    for key, before in captured["term_state"].items():  # heads trained, banks moved
        assert not torch.equal(captured["term"].state_dict()[key].cpu(), before), key
    if distill in FEATURE_LOSSES:  # and checkpointed with the student by the engine
        (model_file,) = (tmp_path / "checkpoints").rglob("mp_rank_00_model_states.pt")
        saved = torch.load(model_file, weights_only=False)["module"]
        assert {key for key in saved if key.startswith("term.")} == {f"term.{key}" for key in captured["term_state"]}
        for key, value in captured["term"].state_dict().items():
            assert torch.equal(saved[f"term.{key}"].cpu(), value.cpu()), key


@pytest.mark.parametrize("distill", ["crd", "itrd"])
def test_cifar_resume_with_trained_heads_and_memory_bank_is_exact(distill, cifar_dir, teacher_path, tmp_path):  # noqa: F811
    common = ["--teacher-ckpt", str(teacher_path), "--model", "resnet8", "--distill", distill, "--nce-k", "16", "--data-folder", str(cifar_dir),
              *FAST, "--batch-size", "20", "--epochs", "2"]
    train_student.main([*common, "--save", str(tmp_path / "full")])
    train_student.main([*common, "--save", str(tmp_path / "split"), "--stop-after-iters", "4"])  # mid-epoch 2
    train_student.main([*common, "--save", str(tmp_path / "split"), "--resume"])
    for run in ("full", "split"):
        assert (tmp_path / run / "ckpt_epoch_2.pth").is_file()
    full, split = (torch.load(tmp_path / run / "ckpt_epoch_2.pth", weights_only=True)["model"] for run in ("full", "split"))
    for key in full:
        assert torch.equal(full[key], split[key]), key
    full, split = (torch.load(next((tmp_path / run / "checkpoints").rglob("mp_rank_00_model_states.pt")), weights_only=False)["module"]
                   for run in ("full", "split"))
    heads = [key for key in full if key.startswith("term.")]
    assert heads and all(torch.equal(full[key], split[key]) for key in heads)


def test_two_processes_keep_one_memory_bank(cifar_dir, teacher_path, tmp_path):  # noqa: F811
    """gloo, two ranks: each rank's rows are gathered before the bank update, so both ranks hold
    the same banks (checked mid-epoch, where no averaging has happened)."""
    save = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "standard_classification.train_student",
               "--teacher-ckpt", str(teacher_path), "--model", "resnet8", "--distill", "crd", "--nce-k", "16", "--data-folder", str(cifar_dir),
               "--epochs", "1", "--save", str(save), *FAST, "--batch-size", "6", "--stop-after-iters", "3"]
    result = subprocess.run(command, cwd=REPO, env=multiprocess_env(2), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    (tag,) = [path for path in (save / "checkpoints").iterdir() if path.name.startswith("step")]
    ranks = [torch.load(tag / f"rank_state_{rank}.pt", weights_only=True)["rank_state"]["buffers"] for rank in (0, 1)]
    for name in ("term.student_bank", "term.teacher_bank", "term.normalizers"):
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    initial = CRDLoss(64, 64, 60, generator=torch.Generator().manual_seed(0)).student_bank
    moved = (ranks[0]["term.student_bank"] != initial).any(dim=1)
    assert int(moved.sum()) == 36, "3 steps x 2 ranks x 6 images, every row moved once"


CLIP_RUNS = {name: [] for name in ("fkl", "rkl", "tvd", "srkl")} | {
    "jsd": ["--jsd-lam", "0.5"], "sfkl": ["--skew-alpha", "0.3"], "ttm": ["--ttm_l", "0.5"], "dist": ["--dist_tau", "2"],
}


@pytest.mark.parametrize("distill", list(CLIP_RUNS))
def test_clip_methods_train_the_prompts(distill, promptkd, tmp_path, monkeypatch):  # noqa: F811
    initial = {}
    fit = clip_train.fit

    def recording_fit(run, module, *rest):
        initial.update({key: value.detach().clone() for key, value in module.state_dict().items()})
        return fit(run, module, *rest)

    monkeypatch.setattr(clip_train, "fit", recording_fit)
    results = clip_train.main(student_argv(promptkd, tmp_path, "--distill", distill, "--epochs", "1", "--stop-after-iters", "2", *CLIP_RUNS[distill]))
    assert results is None  # stopped after two of the epoch's four steps
    log = (tmp_path / "log.txt").read_text()
    losses = [float(line.split("loss ")[1].split(" |")[0]) for line in log.splitlines() if "train step" in line]
    assert len(losses) == 2 and all(math.isfinite(v) and v >= 0 for v in losses)
    (model_file,) = (tmp_path / "checkpoints").rglob("mp_rank_00_model_states.pt")
    saved = torch.load(model_file, weights_only=False)["module"]
    assert set(saved) == set(initial) and not torch.equal(saved["vision_prompts"], initial["vision_prompts"])


def test_launchers_of_the_new_methods_resolve_to_their_settings():
    """Dry runs through the real parsers: each new launcher's method and its reference settings."""

    import shlex

    runs = {}
    for script, args in (("cifar/train_ttm.sh", ("wrn_40_2", "wrn_40_1", "1")), ("cifar/train_wttm.sh", ("resnet32x4", "resnet8x4", "1", "8", "0.2")),
                         ("cifar/train_dist.sh", ("resnet32x4", "resnet8x4", "1")), ("cifar/train_crd.sh", ("resnet32x4", "resnet8x4", "1")),
                         ("cifar/train_itrd.sh", ("resnet32x4", "resnet8x4", "1"))):
        out = subprocess.run(["bash", str(REPO / "scripts" / script), *args], env={**os.environ, "DRY_RUN": "1"}, capture_output=True, text=True, check=True)
        (line,) = out.stdout.splitlines()
        runs[script] = train_student.parse_args(shlex.split(line)[3:])
    ttm = runs["cifar/train_ttm.sh"]  # ABKD train_ttm.sh's example: wrn_40_2 wrn_40_1 ... 76 0.1, -r 1 -a 0
    assert (ttm.distill, ttm.ttm_exponent, ttm.kd_ratio, ttm.ce_weight, ttm.add_weight) == ("ttm", 0.1, 76.0, 1.0, 0.0)
    wttm = runs["cifar/train_wttm.sh"]
    assert (wttm.distill, wttm.ttm_exponent, wttm.kd_ratio, wttm.ce_weight) == ("wttm", 0.2, 8.0, 1.0)
    dist = runs["cifar/train_dist.sh"]
    assert (dist.distill, dist.dist_inter_weight, dist.dist_intra_weight, dist.dist_temperature, dist.ce_weight, dist.kd_ratio) == ("dist", 1.0, 1.0, 4.0, 1.0, 1.0)
    crd = runs["cifar/train_crd.sh"]  # RepDistiller: --distill crd -a 0 -b 0.8
    assert (crd.distill, crd.ce_weight, crd.kd_ratio, crd.add_weight, crd.nce_k, crd.nce_t, crd.nce_m, crd.feat_dim) == ("crd", 1.0, 0.8, 0.0, 16384, 0.07, 0.5, 128)
    itrd = runs["cifar/train_itrd.sh"]
    assert (itrd.distill, itrd.itrd_corr_weight, itrd.itrd_mutual_weight, itrd.itrd_order) == ("itrd", 2.0, 1.0, 1.5)
    grid = subprocess.run(["bash", str(REPO / "scripts/cifar/train_divergences.sh"), "resnet56", "resnet20", "1"], env={**os.environ, "DRY_RUN": "1"},
                          capture_output=True, text=True, check=True).stdout.splitlines()
    names = [train_student.parse_args(shlex.split(line)[3:]).distill for line in grid]
    assert names == ["fkl", "rkl", "jsd", "tvd", "sfkl", "srkl"]
    clip = subprocess.run(["bash", str(REPO / "scripts/clip/train_ttm.sh"), "dtd", "/data", "1"], env={**os.environ, "DRY_RUN": "1"},
                          capture_output=True, text=True, check=True).stdout.splitlines()
    parsed = [clip_train.parse_args(shlex.split(line)[3:]) for line in clip if line.startswith("python -m base_to_new_classification.train ")]
    # ABKD base2new_train_ttm.sh: KD_WEIGHT 1000, LR 0.005, TEMPERATURE 1, --ttm_l default 0.1
    assert len(parsed) == 3 and all((a.distill, a.kd_ratio, a.lr, a.kd_temperature, a.ttm_exponent) == ("ttm", 1000.0, 0.005, 1.0, 0.1) for a in parsed)
