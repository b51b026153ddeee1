"""CIFAR training end to end on a tiny synthetic dataset in the official pickle layout (teacher
and every --distill through the real DeepSpeed engine, exact resume, bad input), and the
distillation terms against their definitions."""

import math
import os
import pickle
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from conftest import multiprocess_env

from abkd.classification import DISTILL_LOSSES, LogitDistillation, build_distill_loss, fp32_deepspeed_config, standardize
from abkd.losses import divergence
from abkd.sampling import GlobalBatchSampler
from standard_classification import train_student, train_teacher
from standard_classification.data import CIFAR100_MEAN, CIFAR100_STD, CifarSplit, augment, eval_batches, load_cifar100, train_batches, write_superclass_cifar, write_synthetic_cifar
from standard_classification.models import build_model

REPO = Path(__file__).resolve().parents[1]
# Fast settings shared by every run: 10 classes x 6 images, batches of 12 (5 steps per epoch).
FAST = ["--batch-size", "12", "--lr", "0.05", "--lr-decay-epochs", "", "--weight-decay", "0"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared machine the threads'
    spin-waiting makes each step several times slower; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cifar")
    write_synthetic_cifar(folder, num_classes=10, train_per_class=6, test_per_class=2, seed=0)
    return folder


@pytest.fixture(scope="module")
def teacher_path(cifar_dir, tmp_path_factory):
    """A resnet14 trained by train_teacher for two epochs, saved where the zoo keeps teachers."""
    save = tmp_path_factory.mktemp("teachers") / "resnet14_vanilla"
    state = train_teacher.main(["--model", "resnet14", "--data-folder", str(cifar_dir), "--epochs", "2", "--save", str(save), *FAST])
    assert state["epoch"] == 2 and state["history"][1]["train_loss"] < state["history"][0]["train_loss"]
    return save / "ckpt_epoch_2.pth"


def test_teacher_outputs_are_in_the_zoo_format(teacher_path):
    checkpoint = torch.load(teacher_path, weights_only=True)
    assert set(checkpoint) == {"model", "epoch", "accuracy"} and checkpoint["epoch"] == 2
    build_model("resnet14", num_classes=10).load_state_dict(checkpoint["model"], strict=True)
    best = torch.load(teacher_path.parent / "resnet14_best.pth", weights_only=True)
    assert best["accuracy"] == max(best["accuracy"], checkpoint["accuracy"])
    assert (teacher_path.parent / "log.txt").read_text().count("test_acc_top5") == 2
    assert (teacher_path.parent / "args.json").is_file()


@pytest.mark.parametrize("distill", list(DISTILL_LOSSES))
def test_every_distill_trains_and_its_loss_decreases(distill, cifar_dir, teacher_path, tmp_path):
    """Every logit term (the feature terms CRD and ITRD: tests/test_classification_methods.py)."""
    result = train_student.main([
        "--teacher-ckpt", str(teacher_path), "--model", "resnet8", "--distill", distill, "--dkd-warmup", "1",
        *(["--kd-weight", "16"] if train_student.DEFAULT_WEIGHTS[distill][1] is None else []), "--data-folder", str(cifar_dir), "--epochs", "3",
        "--save", str(tmp_path / distill), *FAST,
    ])
    losses = [epoch["train_loss"] for epoch in result["history"]]
    assert all(math.isfinite(loss) for loss in losses)
    assert all(math.isfinite(epoch["train_kd"]) and epoch["train_kd"] >= 0 for epoch in result["history"])
    assert losses[-1] < losses[0], losses
    final = torch.load(tmp_path / distill / "ckpt_epoch_3.pth", weights_only=True)["model"]
    assert set(final) == set(build_model("resnet8", num_classes=10).state_dict())


def test_resume_gives_the_weights_of_an_uninterrupted_run(cifar_dir, teacher_path, tmp_path):
    common = ["--teacher-ckpt", str(teacher_path), "--model", "resnet8", "--distill", "ab", "--ab_alpha", "0.6", "--ab_beta", "0.3",
              "--kd-weight", "16", "--data-folder", str(cifar_dir), "--epochs", "3", *FAST, "--lr-decay-epochs", "2"]
    train_student.main([*common, "--save", str(tmp_path / "full")])
    first = train_student.main([*common, "--save", str(tmp_path / "split"), "--stop-after-epochs", "2"])
    assert first["epoch"] == 2 and not (tmp_path / "split" / "ckpt_epoch_3.pth").exists()
    second = train_student.main([*common, "--save", str(tmp_path / "split"), "--resume"])
    assert [epoch["epoch"] for epoch in second["history"]] == [3]
    assert second["history"][0]["lr"] == pytest.approx(0.005)  # the schedule resumed too
    full = torch.load(tmp_path / "full" / "ckpt_epoch_3.pth", weights_only=True)
    split = torch.load(tmp_path / "split" / "ckpt_epoch_3.pth", weights_only=True)
    assert full["accuracy"] == split["accuracy"]
    for key, value in full["model"].items():
        torch.testing.assert_close(split["model"][key], value, rtol=0, atol=0, msg=key)


# ---------------------------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------------------------


def test_missing_dataset_explains_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="download_cifar100.sh"):
        load_cifar100(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="--synthetic"):
        train_teacher.main(["--model", "resnet8", "--data-folder", str(tmp_path / "none"), "--epochs", "1", "--save", str(tmp_path / "out")])


def test_unknown_distill_and_unparsable_teacher_are_argparse_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_student.main(["--path_t", "resnet56_vanilla/ckpt_epoch_240.pth", "--model_s", "resnet20", "--distill", "fitnet"])
    err = capsys.readouterr().err
    assert "--distill" in err and all(name in err for name in DISTILL_LOSSES)
    with pytest.raises(SystemExit):
        train_student.main(["--path_t", str(tmp_path / "teacher.pth"), "--model_s", "resnet20", "--distill", "kd"])
    assert "--teacher-model" in capsys.readouterr().err
    with pytest.raises(ValueError, match="valid names: kd, fkl, rkl, jsd, tvd, sfkl, srkl, ab, dkd, abdkd, ls, abls, ttm, wttm, abttm, dist"):
        build_distill_loss("kl", temperature=4.0)


def test_teacher_name_is_parsed_from_the_zoo_path():
    assert train_student.teacher_name("save/models/wrn_40_2_vanilla/ckpt_epoch_240.pth") == "wrn_40_2"
    assert train_student.teacher_name("save/models/resnet32x4_vanilla/resnet32x4_best.pth") == "resnet32x4"
    assert train_student.teacher_name("elsewhere/ShuffleV2_best.pth") == "ShuffleV2"
    assert train_student.teacher_name("save/models/ResNet50_vanilla/ckpt_epoch_240.pth") == "resnet50"
    assert train_student.teacher_name("elsewhere/teacher.pth") is None


def _dry_run(script, *args):
    result = subprocess.run(["bash", str(REPO / "scripts" / "cifar" / script), *args], env={**os.environ, "DRY_RUN": "1"},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line) for line in result.stdout.splitlines()]
    assert all(words[:3] == ["python", "-m", "standard_classification.train_student"] for words in commands)
    return [train_student.parse_args(words[3:]) for words in commands]


def test_ab_launcher_sweeps_alpha_plus_beta_and_alpha():
    runs = _dry_run("train_ab.sh", "1.0", "1.1", "0.7", "0.9", "resnet56", "resnet20", "2", "0.5")
    pairs = sorted((round(args.ab_alpha, 6), round(args.ab_beta, 6)) for args in runs)
    assert pairs == [(0.7, 0.3), (0.7, 0.4), (0.8, 0.2), (0.8, 0.3), (0.9, 0.1), (0.9, 0.2)]
    assert all(args.distill == "ab" and args.kd_ratio == 0.5 and args.teacher_model == "resnet56" and args.model == "resnet20" for args in runs)
    assert len({args.save for args in runs}) == len(runs)


@pytest.mark.parametrize("script, args, distill", [
    ("train_kd.sh", ("resnet32x4", "resnet8x4", "1"), "kd"), ("train_dkd.sh", ("resnet32x4", "resnet8x4", "1"), "dkd"),
    ("train_ls.sh", ("1.0", "1.0", "0.7", "0.7", "resnet32x4", "resnet8x4", "1"), "abls"),
])  # fmt: skip
def test_launchers_print_valid_commands(script, args, distill):
    (args,) = _dry_run(script, *args)
    assert args.distill == distill and args.teacher_model == "resnet32x4" and args.model == "resnet8x4"


# The hyper-parameters of the reference scripts, read from their files: (ce_weight, kd_ratio, T, extra).
# ABKD = ghwang-s/abkd standard_classification/, MD = megvii-research/mdistiller configs/cifar100/dkd/.
REFERENCE_RUNS = {
    # ABKD train_kd.sh: "--distill kd -r 1 -b 2 -a 0 --kd_T 4"
    ("train_kd.sh", ("resnet110", "resnet44", "1")): (1.0, 2.0, 4.0, {"distill": "kd"}),
    # ABKD train_ab.sh "bash train_ab.sh 1.1 1.1 0.8 0.8 resnet56 resnet20 1 64": "-r 1 -b $b -a 0", kd_T default 4
    ("train_ab.sh", ("1.1", "1.1", "0.8", "0.8", "resnet56", "resnet20", "1", "64")):
        (1.0, 64.0, 4.0, {"distill": "ab", "ab_alpha": 0.8, "ab_beta": 0.3}),
    # ABKD train_ls.sh "bash train_ls.sh 1.0 1.0 0.5 1.3 resnet32x4 resnet8x4 2": "--distill ls -r 0.1 -b 9 -a 0 --kd_T 2" with
    # --ab_alpha, --ab_beta, its distiller_zoo/ls.py being T^2 D_AB between z-scored logits (our abls); here one grid point
    ("train_ls.sh", ("1.0", "1.0", "0.7", "0.7", "resnet32x4", "resnet8x4", "2")): (0.1, 9.0, 2.0, {"distill": "abls", "ab_alpha": 0.7, "ab_beta": 0.3}),
    # MD res56_res20.yaml (DKD.BETA 2.0) on CFG.DKD (CE_WEIGHT 1, ALPHA 1, T 4, WARMUP 20)
    ("train_dkd.sh", ("resnet56", "resnet20", "1")):
        (1.0, 1.0, 4.0, {"distill": "dkd", "tckd_weight": 1.0, "nckd_weight": 2.0, "dkd_warmup": 20}),
    # MD vgg13_vgg8.yaml (DKD.BETA 6.0)
    ("train_dkd.sh", ("vgg13", "vgg8", "1")): (1.0, 1.0, 4.0, {"distill": "dkd", "nckd_weight": 6.0}),
    # MD res32x4_res8x4.yaml: no BETA, so CFG.DKD.BETA 8
    ("train_dkd.sh", ("resnet32x4", "resnet8x4", "1")): (1.0, 1.0, 4.0, {"distill": "dkd", "nckd_weight": 8.0}),
}  # fmt: skip


@pytest.mark.parametrize("script, args", list(REFERENCE_RUNS), ids=lambda x: x if isinstance(x, str) else "-".join(x[-4:-1]))
def test_launchers_resolve_to_the_reference_hyper_parameters(script, args):
    ce_weight, kd_ratio, temperature, extra = REFERENCE_RUNS[script, args]
    runs = _dry_run(script, *args)
    assert len(runs) == 1
    resolved = vars(runs[0])
    assert (resolved["ce_weight"], resolved["kd_ratio"], resolved["kd_temperature"]) == (ce_weight, kd_ratio, temperature)
    for key, value in extra.items():
        assert resolved[key] == (pytest.approx(value) if isinstance(value, float) else value), key


def test_abkd_dkd_variant_through_its_launcher():
    """ABKD's train_dkd.sh: --distill dkd with --ab_alpha/--ab_beta (its `dkd` puts D_AB in NCKD), -r 1 -b 1."""
    (args,) = _dry_run("train_dkd.sh", "vgg13", "vgg8", "1", "6")
    assert (args.distill, args.nckd_weight) == ("dkd", 6.0)
    env = {**os.environ, "DRY_RUN": "1", "DISTILL": "abdkd", "AB_ALPHA": "0.7", "AB_BETA": "0.3"}
    out = subprocess.run(["bash", str(REPO / "scripts" / "cifar" / "train_dkd.sh"), "vgg13", "vgg8", "1"], env=env,
                         capture_output=True, text=True, check=True).stdout
    args = train_student.parse_args(shlex.split(out)[3:])
    assert (args.distill, args.ab_alpha, args.ab_beta, args.nckd_weight, args.ce_weight, args.kd_ratio) == ("abdkd", 0.7, 0.3, 6.0, 1.0, 1.0)


def test_cli_defaults_follow_each_reference(tmp_path, capsys):
    base = ["--path_t", "save/models/resnet56_vanilla/ckpt_epoch_240.pth", "--model_s", "resnet20"]
    kd = train_student.parse_args([*base, "--distill", "kd"])  # RepDistiller: -r 0.1 -a 0.9, kd_T 4
    assert (kd.ce_weight, kd.kd_ratio, kd.kd_temperature) == (0.1, 0.9, 4.0)
    ls = train_student.parse_args([*base, "--distill", "ls"])  # LS recipe: T 2, 0.1 CE + 9 KD
    assert (ls.ce_weight, ls.kd_ratio, ls.kd_temperature) == (0.1, 9.0, 2.0)
    ab = train_student.parse_args([*base, "--distill", "ab", "--kd-weight", "8"])  # ABKD CLI: ab_alpha = ab_beta = 0.5, -r 1
    assert (ab.ab_alpha, ab.ab_beta, ab.ce_weight, ab.kd_ratio, ab.kd_temperature) == (0.5, 0.5, 1.0, 8.0, 4.0)
    dkd = train_student.parse_args([*base, "--distill", "dkd"])
    assert (dkd.ce_weight, dkd.kd_ratio, dkd.tckd_weight, dkd.nckd_weight, dkd.dkd_warmup) == (1.0, 1.0, 1.0, 2.0, 20)
    assert train_student.parse_args([*base, "--distill", "dkd", "--dkd_beta", "5"]).nckd_weight == 5.0
    assert kd.precision == "fp32"
    with pytest.raises(SystemExit):
        train_student.parse_args([*base, "--distill", "ab"])
    assert "--kd-weight" in capsys.readouterr().err


def test_teacher_of_the_wrong_architecture_is_rejected(cifar_dir, teacher_path, tmp_path):
    with pytest.raises(ValueError, match="not a resnet20"):
        train_student.main(["--teacher-ckpt", str(teacher_path), "--teacher-model", "resnet20", "--model", "resnet8", "--distill", "kd",
                            "--data-folder", str(cifar_dir), "--epochs", "1", "--save", str(tmp_path / "x")])


# ---------------------------------------------------------------------------------------------
# Data.
# ---------------------------------------------------------------------------------------------


def test_archive_and_directory_give_the_same_data(tmp_path):
    folder = tmp_path / "plain"
    directory = write_synthetic_cifar(folder, num_classes=3, train_per_class=2, test_per_class=1)
    raw = pickle.loads((directory / "train").read_bytes(), encoding="latin1")
    assert {"data", "fine_labels", "coarse_labels", "filenames"} <= set(raw) and raw["data"].shape == (6, 3072)
    archived = tmp_path / "archived"
    archived.mkdir()
    with tarfile.open(archived / "cifar-100-python.tar.gz", "w:gz") as tar:
        tar.add(directory, arcname="cifar-100-python")
    for split in ("train", "test"):
        a, b = load_cifar100(folder, split), load_cifar100(archived, split)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.classes == b.classes
    # Official layout: the first 1024 bytes of a row are the red plane, row-major.
    images = load_cifar100(folder, "train").images
    assert torch.equal(images[0, 0].flatten(), torch.from_numpy(raw["data"][0, :1024]))


def test_superclass_dataset_puts_the_classes_of_a_superclass_closer_together(tmp_path):
    """write_superclass_cifar: 8 classes in 2 superclasses. Without pixel noise (only the random
    shifts), the mean images of two classes of one superclass differ (each has its own pattern)
    but are nearer each other than any two classes of different superclasses; the pickles
    record each image's superclass as its coarse label."""
    directory = write_superclass_cifar(tmp_path, num_classes=8, num_superclasses=2, train_per_class=16, test_per_class=2, seed=0, noise=0.0)
    train = load_cifar100(tmp_path, "train")
    assert len(train) == 128 and len(load_cifar100(tmp_path, "test")) == 16 and torch.equal(train.labels.bincount(), torch.full((8,), 16))
    pixels = train.images.float().flatten(1) / 255.0
    distance = torch.cdist(*[torch.stack([pixels[train.labels == c].mean(0) for c in range(8)])] * 2)  # between class means
    superclass = torch.arange(8) // 4
    within = distance[(superclass[:, None] == superclass[None, :]) & ~torch.eye(8, dtype=torch.bool)]
    across = distance[superclass[:, None] != superclass[None, :]]
    assert within.min() > 1.0 and within.max() < 0.6 * across.min()
    raw = pickle.loads((directory / "train").read_bytes(), encoding="latin1")
    assert raw["coarse_labels"] == [label // 4 for label in raw["fine_labels"]]
    assert pickle.loads((directory / "meta").read_bytes())["coarse_label_names"] == ["super_0", "super_1"]
    with pytest.raises(ValueError, match="equal superclasses"):
        write_superclass_cifar(tmp_path / "bad", num_classes=10, num_superclasses=4)


def test_augment_is_a_padded_crop_and_flip_per_image():
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    out = augment(images, torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    top, left = torch.randint(0, 9, (6,), generator=generator), torch.randint(0, 9, (6,), generator=generator)
    flip = torch.rand(6, generator=generator) < 0.5
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for i in range(6):
        crop = padded[i, :, top[i] : top[i] + 32, left[i] : left[i] + 32]
        torch.testing.assert_close(out[i], crop.flip(-1) if flip[i] else crop, rtol=0, atol=0)


def test_batches_keep_the_last_partial_batch_like_the_reference_dataloader():
    """10 images in batches of 4: 4, 4, 2 (DataLoader(shuffle=True, drop_last=False)), every
    image once per epoch, a new order each epoch; under 3 ranks each rank takes its share of
    every global batch, the last one split evenly."""
    split = CifarSplit(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 32, 32).contiguous(), torch.arange(10), [str(i) for i in range(10)])
    one = GlobalBatchSampler(10, 4, 1, 1, 0, seed=1, drop_last=False)
    assert one.steps_per_epoch == 3 and one.dropped == 0
    epoch0 = list(one)
    assert [len(batch) for batch in epoch0] == [4, 4, 2] and sorted(sum(epoch0, [])) == list(range(10))
    one.set_epoch(1)
    assert list(one) != epoch0
    labels = [labels.tolist() for _, labels in train_batches(split, one, torch.device("cpu"))]
    assert sorted(sum(labels, [])) == list(range(10))
    ranks = [GlobalBatchSampler(10, 2, 1, 3, r, seed=1, drop_last=False) for r in range(3)]
    assert {r.steps_per_epoch for r in ranks} == {2}  # 6 + a tail of 4
    shares = [list(r) for r in ranks]
    assert [len(b) for b in shares[0]] == [2, 1] and [len(b) for b in shares[2]] == [2, 2]
    assert sorted(sum(sum(shares, []), [])) == list(range(10))
    dropping = GlobalBatchSampler(10, 4, 1, 1, 0, seed=1)
    assert dropping.steps_per_epoch == 2 and dropping.dropped == 2
    tests = [eval_batches(split, 8, r, 3, torch.device("cpu")) for r in range(3)]
    assert sorted(torch.cat([labels for shard in tests for _, labels in shard]).tolist()) == list(range(10))


# ---------------------------------------------------------------------------------------------
# The distillation terms.
# ---------------------------------------------------------------------------------------------


def _logits(seed=0, batch=5, classes=7):
    generator = torch.Generator().manual_seed(seed)
    student = (3 * torch.randn(batch, classes, generator=generator, dtype=torch.float64)).requires_grad_()
    teacher = 3 * torch.randn(batch, classes, generator=generator, dtype=torch.float64)
    return student, teacher, torch.randint(0, classes, (batch,), generator=generator)


def _softmax(row, T):
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


def _abkd_general_case(p, q, alpha, beta):
    """ABKD's abkl.py general case, per sample: -sum(p^a q^b - a/(a+b) p^(a+b) - b/(a+b) q^(a+b)) / (a b)."""
    s = sum(pi**alpha * qi**beta - alpha / (alpha + beta) * pi ** (alpha + beta) - beta / (alpha + beta) * qi ** (alpha + beta)
            for pi, qi in zip(p, q))
    return -s / (alpha * beta)


@pytest.mark.parametrize("alpha, beta", [(0.8, 0.2), (0.2, 0.7), (0.5, 0.5), (1.3, -0.3)])
def test_ab_is_abkd_s_plain_batch_mean_without_t_squared(alpha, beta):
    """ABKD's CIFAR ABKL returns divergence.mean() of softmax(z / T) without T^2 (distiller_zoo/abkl.py)."""
    student, teacher, labels = _logits()
    T = 4.0
    expected = sum(_abkd_general_case(_softmax(t, T), _softmax(s, T), alpha, beta) for s, t in zip(student.tolist(), teacher.tolist())) / 5
    loss = build_distill_loss("ab", temperature=T, ab_alpha=alpha, ab_beta=beta)(student, teacher, labels)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    assert torch.autograd.grad(loss, student)[0].isfinite().all()


def test_ab_at_forward_kl_point_is_kd_over_t_squared():
    student, teacher, labels = _logits(3)
    T = 4.0
    ab = build_distill_loss("ab", temperature=T, ab_alpha=1.0, ab_beta=0.0)(student, teacher, labels)
    torch.testing.assert_close(ab * T**2, build_distill_loss("kd", temperature=T)(student, teacher, labels))


def test_abdkd_puts_abkd_s_alpha_beta_divergence_in_nckd():
    """ABKD's distiller_zoo/dkd.py: TCKD is the binary KL, NCKD = T^2 mean_B [sum p_t^(a+b) / (b(a+b))
    + sum p_s^(a+b) / (a(a+b)) - sum p_t^a p_s^b / (a b)] over softmax(z / T) of the non-target logits."""
    student = [[2.0, 1.0, 0.0, -1.0], [0.5, 0.5, 3.0, 0.0]]
    teacher = [[3.0, 0.0, 1.0, -2.0], [0.0, 1.0, 2.0, 1.0]]
    labels = [0, 2]
    T, w_t, w_n, a, b = 2.0, 1.0, 6.0, 0.7, 0.4
    tckd = nckd = 0.0
    for s_row, t_row, y in zip(student, teacher, labels):
        ps, pt = _softmax(s_row, T), _softmax(t_row, T)
        bs, bt = (ps[y], 1 - ps[y]), (pt[y], 1 - pt[y])
        tckd += sum(t * math.log(t / s) for t, s in zip(bt, bs)) / 2
        ns = _softmax([v for k, v in enumerate(s_row) if k != y], T)
        nt = _softmax([v for k, v in enumerate(t_row) if k != y], T)
        nckd += (sum(p ** (a + b) for p in nt) / (b * (a + b)) + sum(q ** (a + b) for q in ns) / (a * (a + b))
                 - sum(p**a * q**b for p, q in zip(nt, ns)) / (a * b)) / 2
    loss = build_distill_loss("abdkd", temperature=T, tckd_weight=w_t, nckd_weight=w_n, ab_alpha=a, ab_beta=b, dkd_warmup=20)
    args = (torch.tensor(student, dtype=torch.float64), torch.tensor(teacher, dtype=torch.float64), torch.tensor(labels))
    # epoch 4 (0-based) is ABKD's 1-based epoch 5: min(5 / 20, 1) = 0.25.
    assert loss(*args, 4).item() == pytest.approx(0.25 * T**2 * (w_t * tckd + w_n * nckd), rel=1e-10)
    kl_nckd = build_distill_loss("abdkd", temperature=T, tckd_weight=w_t, nckd_weight=w_n, ab_alpha=1.0, ab_beta=0.0, dkd_warmup=0)
    torch.testing.assert_close(kl_nckd(*args), build_distill_loss("dkd", temperature=T, tckd_weight=w_t, nckd_weight=w_n)(*args))


def test_kd_is_hinton_kl_times_t_squared():
    student, teacher, labels = _logits(1)
    T = 4.0
    p = torch.softmax(teacher / T, dim=1)
    expected = (p * (p.log() - torch.log_softmax(student / T, dim=1))).sum(1).mean() * T**2
    torch.testing.assert_close(build_distill_loss("kd", temperature=T)(student, teacher, labels), expected)


def test_dkd_matches_its_definition_on_a_hand_example():
    student = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.5, 0.5, 3.0, 0.0]], dtype=torch.float64)
    teacher = torch.tensor([[3.0, 0.0, 1.0, -2.0], [0.0, 1.0, 2.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 2])
    T, alpha, beta, warmup = 2.0, 1.0, 8.0, 4

    def softmax(row):
        e = [math.exp(v / T) for v in row]
        return [v / sum(e) for v in e]

    tckd = nckd = 0.0
    for s_row, t_row, y in zip(student.tolist(), teacher.tolist(), labels.tolist()):
        ps, pt = softmax(s_row), softmax(t_row)
        bs, bt = (ps[y], 1 - ps[y]), (pt[y], 1 - pt[y])
        tckd += sum(t * math.log(t / s) for t, s in zip(bt, bs)) / 2
        # Non-target distributions: softmax over the other classes = p_k / (1 - p_y).
        ns = [p / (1 - ps[y]) for k, p in enumerate(ps) if k != y]
        nt = [p / (1 - pt[y]) for k, p in enumerate(pt) if k != y]
        nckd += sum(t * math.log(t / s) for t, s in zip(nt, ns)) / 2
    loss = build_distill_loss("dkd", temperature=T, tckd_weight=alpha, nckd_weight=beta, dkd_warmup=warmup)
    for epoch, ramp in ((0, 0.25), (2, 0.75), (3, 1.0), (10, 1.0)):
        expected = ramp * T**2 * (alpha * tckd + beta * nckd)
        assert loss(student, teacher, labels, epoch).item() == pytest.approx(expected, rel=1e-10)
    student = student.clone().requires_grad_()
    assert torch.autograd.grad(loss(student, teacher, labels, 5), student)[0].isfinite().all()


def test_ls_standardises_each_sample_then_applies_kd():
    student, teacher, labels = _logits(2)
    z = standardize(student.detach())
    torch.testing.assert_close(z.mean(1), torch.zeros(5, dtype=z.dtype), atol=1e-6, rtol=0)
    # The unbiased standard deviation, as the references' logit.std(dim=-1): divisor C - 1.
    row = student[0].tolist()
    mean = sum(row) / 7
    std = math.sqrt(sum((v - mean) ** 2 for v in row) / 6)
    assert z[0].tolist() == pytest.approx([(v - mean) / (std + 1e-7) for v in row], rel=1e-9)
    manual = lambda x: (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True, correction=1)  # noqa: E731
    T = 2.0
    ls = build_distill_loss("ls", temperature=T)
    torch.testing.assert_close(
        ls(student, teacher, labels), build_distill_loss("kd", temperature=T)(manual(student), manual(teacher), labels), rtol=1e-5, atol=1e-6
    )
    # Invariant to a per-sample shift and positive scale of either model's logits.
    torch.testing.assert_close(ls(2.5 * student + 7.0, teacher, labels), ls(student, teacher, labels), rtol=1e-5, atol=1e-6)
    abls = build_distill_loss("abls", temperature=T, ab_alpha=0.7, ab_beta=0.2)
    expected = divergence("ab", manual(student), manual(teacher), temperature=T, alpha=0.7, beta=0.2).mean() * T**2
    torch.testing.assert_close(abls(student, teacher, labels), expected, rtol=1e-5, atol=1e-6)


def test_two_processes_under_torchrun(cifar_dir, teacher_path, tmp_path):
    """gloo, two ranks: sharded batches, all-reduced metrics, BN statistics averaged before saving."""
    save = tmp_path / "ddp"
    command = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2", "-m", "standard_classification.train_student",
               "--teacher-ckpt", str(teacher_path), "--model", "resnet8", "--distill", "dkd", "--data-folder", str(cifar_dir),
               "--epochs", "1", "--save", str(save), *FAST, "--batch-size", "6"]
    result = subprocess.run(command, cwd=REPO, env=multiprocess_env(2), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (save / "log.txt").read_text()
    assert "world size 2" in log and "5 steps per epoch of 12" in log  # 60 images, 6 per rank per step
    checkpoint = torch.load(save / "ckpt_epoch_1.pth", weights_only=True)
    build_model("resnet8", num_classes=10).load_state_dict(checkpoint["model"], strict=True)
    assert (checkpoint["accuracy"] * 20 / 100) == round(checkpoint["accuracy"] * 20 / 100)  # counted over all 20 test images


# ---------------------------------------------------------------------------------------------
# Precision and normalisation constants.
# ---------------------------------------------------------------------------------------------


def test_cifar_normalisation_constants_are_repdistiller_s():
    # RepDistiller and ABKD dataset/cifar100.py: transforms.Normalize((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
    assert CIFAR100_MEAN == (0.5071, 0.4867, 0.4408) and CIFAR100_STD == (0.2675, 0.2565, 0.2761)


def test_deepspeed_half_precision_is_switched_off():
    config = fp32_deepspeed_config({"bf16": {"enabled": "auto"}, "fp16": {"enabled": True, "loss_scale": 0}, "zero_optimization": {"stage": 1}})
    assert config["bf16"]["enabled"] is False and config["fp16"] == {"enabled": False, "loss_scale": 0}
    assert config["zero_optimization"] == {"stage": 1}


def test_bf16_opt_in_autocasts_convolutions_and_keeps_batchnorm_in_fp32():
    torch.manual_seed(0)
    student, teacher = build_model("resnet8", num_classes=10), build_model("resnet8", num_classes=10).eval()
    conv_dtypes, bn_inputs = [], []
    student.conv1.register_forward_hook(lambda module, args, out: conv_dtypes.append(out.dtype))
    student.bn1.register_forward_hook(lambda module, args, out: bn_inputs.append(args[0].dtype))
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    objective = LogitDistillation(student, ce_weight=0.1, kd_ratio=0.9, teacher=teacher, distill=build_distill_loss("kd", temperature=4.0),
                                  precision="bf16")
    loss, parts = objective((images, labels))
    loss.backward()
    assert conv_dtypes == [torch.bfloat16] and loss.dtype == torch.float32 and loss.isfinite()
    assert bn_inputs == [torch.bfloat16]  # BatchNorm takes the bf16 activations ...
    for module in student.modules():  # ... with float32 weights and running statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            assert module.weight.dtype == module.running_mean.dtype == module.running_var.dtype == torch.float32
            assert module.weight.grad.dtype == torch.float32
    conv_dtypes.clear()
    LogitDistillation(student, ce_weight=1.0, precision="fp32")((images, labels))
    assert conv_dtypes == [torch.float32]
    with pytest.raises(ValueError, match="valid: fp32, bf16"):
        LogitDistillation(student, precision="fp16")


def test_a_nan_test_accuracy_never_becomes_the_best(cifar_dir, tmp_path, monkeypatch):
    """Epoch 1 tests NaN: before, NaN became the best (the first epoch always did) and then
    compared False with every later accuracy, so <model>_best.pth stayed the NaN epoch's."""
    from standard_classification import train as loop

    evaluate, calls = loop.evaluate, []

    def nan_first(*args, **kwargs):
        scores = evaluate(*args, **kwargs)
        calls.append(scores["test_acc"])
        return {**scores, "test_acc": math.nan} if len(calls) == 1 else scores

    monkeypatch.setattr(loop, "evaluate", nan_first)
    state = train_teacher.main(["--model", "resnet8", "--data-folder", str(cifar_dir), "--epochs", "2", "--save", str(tmp_path), *FAST])
    assert state["best_epoch"] == 2 and state["best_accuracy"] == calls[1]
    assert torch.load(tmp_path / "resnet8_best.pth", weights_only=True)["epoch"] == 2
    assert "test accuracy nan after epoch 1: not a candidate for resnet8_best.pth" in (tmp_path / "log.txt").read_text()
