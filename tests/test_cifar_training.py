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

from abkd.classification import DISTILL_LOSSES, build_distill_loss, standardize
from abkd.losses import divergence
from abkd.sampling import GlobalBatchSampler
from standard_classification import train_student, train_teacher
from standard_classification.data import CifarSplit, augment, eval_batches, load_cifar100, train_batches, write_synthetic_cifar
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
    result = train_student.main([
        "--teacher-ckpt", str(teacher_path), "--model", "resnet8", "--distill", distill, "--dkd-warmup", "1",
        "--data-folder", str(cifar_dir), "--epochs", "3", "--save", str(tmp_path / distill), *FAST,
    ])
    losses = [epoch["train_loss"] for epoch in result["history"]]
    assert all(math.isfinite(loss) for loss in losses)
    assert all(math.isfinite(epoch["train_kd"]) and epoch["train_kd"] >= 0 for epoch in result["history"])
    assert losses[-1] < losses[0], losses
    final = torch.load(tmp_path / distill / "ckpt_epoch_3.pth", weights_only=True)["model"]
    assert set(final) == set(build_model("resnet8", num_classes=10).state_dict())


def test_resume_gives_the_weights_of_an_uninterrupted_run(cifar_dir, teacher_path, tmp_path):
    common = ["--teacher-ckpt", str(teacher_path), "--model", "resnet8", "--distill", "ab", "--ab_alpha", "0.6", "--ab_beta", "0.3",
              "--data-folder", str(cifar_dir), "--epochs", "3", *FAST, "--lr-decay-epochs", "2"]
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
        train_student.main(["--path_t", "resnet56_vanilla/ckpt_epoch_240.pth", "--model_s", "resnet20", "--distill", "crd"])
    err = capsys.readouterr().err
    assert "--distill" in err and all(name in err for name in DISTILL_LOSSES)
    with pytest.raises(SystemExit):
        train_student.main(["--path_t", str(tmp_path / "teacher.pth"), "--model_s", "resnet20", "--distill", "kd"])
    assert "--teacher-model" in capsys.readouterr().err
    with pytest.raises(ValueError, match="valid names: kd, ab, dkd, ls, abls"):
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


@pytest.mark.parametrize("script, distill", [("train_kd.sh", "kd"), ("train_ls.sh", "ls"), ("train_dkd.sh", "dkd")])
def test_launchers_print_valid_commands(script, distill):
    (args,) = _dry_run(script, "resnet32x4", "resnet8x4", "1")
    assert args.distill == distill and args.teacher_model == "resnet32x4" and args.model == "resnet8x4"


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


@pytest.mark.parametrize("alpha, beta", [(0.8, 0.2), (0.2, 0.7), (1.0, 0.0), (0.5, -0.3)])
def test_ab_is_the_shared_divergence_on_the_class_axis_times_t_squared(alpha, beta):
    student, teacher, labels = _logits()
    T = 3.0
    loss = build_distill_loss("ab", temperature=T, ab_alpha=alpha, ab_beta=beta)(student, teacher, labels)
    reference = divergence("ab", student, teacher, temperature=T, alpha=alpha, beta=beta).mean() * T**2
    torch.testing.assert_close(loss, reference)
    (grad,) = torch.autograd.grad(loss, student)
    (grad_ref,) = torch.autograd.grad(reference, student)
    torch.testing.assert_close(grad, grad_ref)
    if (alpha, beta) == (1.0, 0.0):  # forward KL: ab is exactly kd
        torch.testing.assert_close(loss, build_distill_loss("kd", temperature=T)(student, teacher, labels))


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
    torch.testing.assert_close(z.std(1, correction=0), torch.ones(5, dtype=z.dtype), atol=1e-5, rtol=0)
    manual = lambda x: (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True, correction=0)  # noqa: E731
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
    result = subprocess.run(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (save / "log.txt").read_text()
    assert "world size 2" in log and "5 steps per epoch of 12" in log  # 60 images, 6 per rank per step
    checkpoint = torch.load(save / "ckpt_epoch_1.pth", weights_only=True)
    build_model("resnet8", num_classes=10).load_state_dict(checkpoint["model"], strict=True)
    assert (checkpoint["accuracy"] * 20 / 100) == round(checkpoint["accuracy"] * 20 / 100)  # counted over all 20 test images
