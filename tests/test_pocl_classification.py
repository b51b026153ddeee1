"""POCL's curriculum in the classification loops (abkd/curriculum.py): the image ranking commands of
CIFAR and CLIP, the Baby Step stages of a run on one learning-rate schedule, exact resume inside a
stage, and the refusals. Tiny models (ResNet-8, a random ResNet-14 teacher, tiny CLIPs) on
synthetic data, through the real DeepSpeed engine."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from test_clip_prompt_kd import promptkd, student_argv  # noqa: F401  (promptkd: the tiny CLIPs and teacher prompts fixture)

from abkd.curriculum import Curriculum
from abkd.pocl import BabyStepScheduler, Signal, fuse_ranks, reciprocal_rank_fusion
from abkd.sampling import GlobalBatchSampler
from standard_classification import rank_difficulty as cifar_rank
from standard_classification import train as cifar_train
from standard_classification import train_student
from standard_classification.data import load_cifar100, normalize, write_synthetic_cifar
from standard_classification.models import build_model

COLUMNS = ["id", "ce", "divergence", "rank_ce", "rank_divergence", "score"]
# 10 classes x 6 images, batches of 12 (5 steps per full epoch; the last batch of a stage may be smaller).
FAST = ["--batch-size", "12", "--lr", "0.05", "--weight-decay", "0", "--log-interval", "1"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """Synthetic CIFAR, a random ResNet-14 teacher where the zoo keeps teachers, and its ranking."""
    base = tmp_path_factory.mktemp("pocl-cifar")
    write_synthetic_cifar(base / "data", num_classes=10, train_per_class=6, test_per_class=2, seed=0)
    teacher = base / "teachers" / "resnet14_vanilla" / "ckpt_epoch_240.pth"
    teacher.parent.mkdir(parents=True)
    torch.manual_seed(5)
    torch.save({"model": build_model("resnet14", num_classes=10).state_dict(), "epoch": 240, "accuracy": 0.0}, teacher)
    ranking = base / "ranking" / "ranking.jsonl"
    rank_argv = ["--teacher-ckpt", str(teacher), "--model", "resnet8", "--seed", "3", "--data-folder", str(base / "data"),
                 "--ranking", str(ranking), "--batch-size", "16"]
    cifar_rank.main(rank_argv)
    return {"data": base / "data", "teacher": teacher, "ranking": ranking, "rank_argv": rank_argv}


def rows_of(ranking):
    return [json.loads(line) for line in ranking.read_text().splitlines()]


def sequential_ranks(values, order):
    """POCL tools/rank.py: a stable sort of `order` by `values`, ranks 1..N by position."""
    ordered = sorted(order, key=lambda i: values[i])
    return ordered, {i: position + 1 for position, i in enumerate(ordered)}


def check_ranking_rows(rows, ce, kl):
    """Rows: the file's columns, both signals as computed by the test, the ranks of POCL's chained
    stable sorts, score = 1/(60 + rank_ce) + 1/(60 + rank_divergence), easy to hard."""
    n = len(ce)
    assert all(list(row) == COLUMNS for row in rows)
    assert sorted(row["id"] for row in rows) == list(range(n))
    by_id = {row["id"]: row for row in rows}
    for i in range(n):
        assert by_id[i]["ce"] == pytest.approx(ce[i], rel=1e-5, abs=1e-6)
        assert by_id[i]["divergence"] == pytest.approx(kl[i], rel=1e-4, abs=1e-6)
    ce_file = [by_id[i]["ce"] for i in range(n)]
    kl_file = [by_id[i]["divergence"] for i in range(n)]
    by_ce, rank_ce = sequential_ranks(ce_file, range(n))
    _, rank_kl = sequential_ranks(kl_file, by_ce)
    for i in range(n):
        assert (by_id[i]["rank_ce"], by_id[i]["rank_divergence"]) == (rank_ce[i], rank_kl[i])
        assert by_id[i]["score"] == 1.0 / (60 + rank_ce[i]) + 1.0 / (60 + rank_kl[i])
    scores = [row["score"] for row in rows]
    assert scores == sorted(scores, reverse=True)


def kl_at(student_logits, teacher_logits, temperature):
    """KL(softmax(teacher / T) || softmax(student / T)) per row, in float64."""
    p = torch.softmax(teacher_logits.double() / temperature, dim=-1)
    return (p * (p.log() - torch.log_softmax(student_logits.double() / temperature, dim=-1))).sum(-1)


# ---------------------------------------------------------------------------------------------
# The shared pieces.
# ---------------------------------------------------------------------------------------------


def test_fuse_ranks_generalises_the_llm_fusion():
    ids, rouge, loss = [10, 11, 12, 13], [0.9, 0.1, 0.5, 0.5], [1.0, 3.0, 0.5, 0.5]
    for ties in ("sequential", "mean"):
        llm = reciprocal_rank_fusion(ids, rouge, loss, k=60, ties=ties)
        rows = fuse_ranks(ids, [Signal("rouge", rouge, higher_is_easier=True), Signal("loss", loss)], k=60, ties=ties)
        assert [vars(example) for example in llm] == rows
    # Two lower-is-easier signals, by hand (sequential): by a: 2, 0, 1; that order by b: 0, 2, 1;
    # examples 0 and 2 tie on the score and keep the order of the last sort.
    rows = fuse_ranks([0, 1, 2], [Signal("a", [0.2, 0.3, 0.1]), Signal("b", [1.0, 5.0, 3.0])], k=1)
    assert {row["id"]: (row["rank_a"], row["rank_b"]) for row in rows} == {0: (2, 1), 1: (3, 3), 2: (1, 2)}
    assert [row["id"] for row in rows] == [0, 2, 1] and rows[0]["score"] == 1 / 3 + 1 / 2
    with pytest.raises(ValueError, match="same length"):
        fuse_ranks([0, 1], [Signal("a", [0.1])])


def test_sampler_select_draws_only_the_stage_s_examples():
    sampler = GlobalBatchSampler(10, 3, 1, 1, 0, seed=4, drop_last=False)
    assert sampler.steps_per_epoch == 4
    sampler.select([7, 2, 9, 4, 0])
    assert (sampler.size, sampler.steps_per_epoch) == (5, 2)
    drawn = [i for batch in sampler for i in batch]
    assert sorted(drawn) == [0, 2, 4, 7, 9]
    reference = GlobalBatchSampler(5, 3, 1, 1, 0, seed=4, drop_last=False)
    assert drawn == [[7, 2, 9, 4, 0][i] for batch in reference for i in batch]  # the same permutation, of the subset


def test_plan_and_the_learning_rate_clock():
    """Stages of (s+1)*floor(N/S) examples; the last stage takes the epochs the others leave; the
    learning-rate clock is at the full-data step of the same point of the same epoch."""
    stages = []
    sampler = GlobalBatchSampler(60, 12, 1, 1, 0, seed=0, drop_last=False)
    scheduler = BabyStepScheduler(list(range(60)), num_stages=3, stage_epochs=2, temperature=(2.0, 4.0), kd_ratio=(0.63, 0.9))
    plan = Curriculum(scheduler, sampler, epochs=7, apply=lambda t, r: stages.append((t, r)), log=lambda line: None)
    assert [plan.stage_of(e) for e in range(7)] == [0, 0, 1, 1, 2, 2, 2]
    assert plan.epoch_steps == [2, 2, 4, 4, 5, 5, 5]  # 20, 40, 60 examples in batches of 12 (last batch kept)
    assert plan.total_steps() == 27 and plan.steps_after(3) == 8
    assert [plan.full_data_step(s) for s in (0, 1, 2, 3, 4, 6, 8, 27, 28)] == [0, 2, 5, 7, 10, 12, 15, 35, 36]
    state = {"epoch": 0, "curriculum": None}
    plan.start(state)
    assert stages == [(2.0, 0.63)] and sampler.size == 20
    for _ in range(6):
        plan.end_epoch(state)
    assert stages == [(2.0, pytest.approx(0.63)), (3.0, pytest.approx(0.765)), (4.0, pytest.approx(0.9))] and sampler.size == 60
    assert state["curriculum"]["stage"] == 2
    dropping = GlobalBatchSampler(60, 12, 1, 1, 0, seed=0)  # drop_last, as the CLIP loop's
    with pytest.raises(ValueError, match="stage 1 has 4 examples, fewer than one global batch of 12"):
        Curriculum(BabyStepScheduler(list(range(60)), num_stages=15), dropping, epochs=15, apply=print, log=print)


# ---------------------------------------------------------------------------------------------
# CIFAR.
# ---------------------------------------------------------------------------------------------


def test_cifar_ranking_rows_signals_and_reuse(cifar, capsys):
    train_set = load_cifar100(cifar["data"], "train")
    args = cifar_rank.parse_args(cifar["rank_argv"])
    teacher, student = cifar_rank.load_models(args, 10)
    with torch.no_grad():
        images = normalize(train_set.images)
        student_logits, teacher_logits = student.eval()(images), teacher.eval()(images)
    ce = F.cross_entropy(student_logits.double(), train_set.labels, reduction="none").tolist()
    check_ranking_rows(rows_of(cifar["ranking"]), ce, kl_at(student_logits, teacher_logits, 4.0).tolist())
    meta = json.loads(cifar["ranking"].with_suffix(".meta.json").read_text())
    assert (meta["examples"], meta["divergence"], meta["kd_temperature"], meta["rrf_k"], meta["seed"]) == (60, "fkl", 4.0, 60.0, 3)
    capsys.readouterr()
    cifar_rank.main(cifar["rank_argv"])
    assert "reusing it" in capsys.readouterr().out


def curriculum_argv(cifar, save, *extra):
    return ["--teacher-ckpt", str(cifar["teacher"]), "--model", "resnet8", "--distill", "kd", "--seed", "3", "--data-folder", str(cifar["data"]),
            "--save", str(save), *FAST, "--epochs", "3", "--lr-decay-epochs", "2", "--curriculum", "pocl", "--ranking", str(cifar["ranking"]),
            "--num-stages", "3", *map(str, extra)]


class RecordingSampler:
    """The batches of indices a loop draws from its sampler (everything else passes through)."""

    seen: list[list[int]] = []

    def __init__(self, sampler):
        self.sampler = sampler

    def __getattr__(self, name):
        return getattr(self.sampler, name)

    def __iter__(self):
        for index in self.sampler:
            RecordingSampler.seen.append(list(index))
            yield index


def test_cifar_stages_schedule_and_resume_inside_stage_2(cifar, tmp_path, monkeypatch):
    real_batches, real_train = cifar_train.train_batches, train_student.train
    monkeypatch.setattr(cifar_train, "train_batches", lambda split, sampler, device, contrast=None: real_batches(split, RecordingSampler(sampler), device, contrast))
    initial = {}

    def recording_train(run, name, student, *rest, **kwargs):
        initial.update({key: value.detach().clone() for key, value in student.state_dict().items()})
        return real_train(run, name, student, *rest, **kwargs)

    monkeypatch.setattr(train_student, "train", recording_train)
    applied = []  # (the KD term's temperature, the KD weight) of every training step

    class RecordingObjective(cifar_train.LogitDistillation):
        def __call__(self, batch):
            applied.append((self.distill.temperature, self.kd_ratio))
            return super().__call__(batch)

    monkeypatch.setattr(cifar_train, "LogitDistillation", RecordingObjective)
    RecordingSampler.seen = []
    full = train_student.main(curriculum_argv(cifar, tmp_path / "full"))
    seen, RecordingSampler.seen = RecordingSampler.seen, []
    stage_values = [(2.0, 0.63)] * 2 + [(3.0, 0.765)] * 4 + [(4.0, 0.9)] * 5
    assert applied == [(t, pytest.approx(r)) for t, r in stage_values]  # what the loss was computed with, step by step

    # The ranking's student is the run's initialised student.
    _, ranker = cifar_rank.load_models(cifar_rank.parse_args(cifar["rank_argv"]), 10)
    for key, value in ranker.state_dict().items():
        assert torch.equal(value, initial[key]), key

    # Stage sizes (s+1) * floor(60/3) = 20, 40, then 60: 2, 4 and 5 steps of at most 12 images, each
    # epoch exactly the stage's easiest examples; temperature T/2 -> T = 2 -> 4, KD weight 0.7 w -> w = 0.63 -> 0.9.
    ranked = [row["id"] for row in rows_of(cifar["ranking"])]
    assert len(seen) == 11
    for batches, size in ((seen[:2], 20), (seen[2:6], 40), (seen[6:], 60)):
        assert sorted(i for batch in batches for i in batch) == sorted(ranked[:size])
    history = full["history"]
    for stage, epoch in enumerate(history):
        assert (epoch["stage"], epoch["stage_examples"]) == (stage + 1, (stage + 1) * 20)
        assert epoch["kd_temperature"] == pytest.approx(2.0 + 2.0 * stage / 2) and epoch["kd_ratio"] == pytest.approx(0.63 + 0.27 * stage / 2)
    # One step-decay schedule over full-data epochs: the decay after epoch 2 applies to the third
    # epoch (from step 6 of the curriculum, where a full-data run would be at step 10).
    assert [epoch["lr"] for epoch in history] == pytest.approx([0.05, 0.05, 0.005])
    log = (tmp_path / "full" / "log.txt").read_text()
    for line in ("3 stages of 1, 1, 1 epochs (11 steps), one optimizer and learning-rate schedule",
                 "curriculum stage 1/3: easiest 33% (20 examples), kd temperature 2, kd-ratio 0.63",
                 "curriculum stage 2/3: easiest 67% (40 examples), kd temperature 3, kd-ratio 0.765",
                 "curriculum stage 3/3: easiest 100% (60 examples), kd temperature 4, kd-ratio 0.9"):
        assert line in log
    args = json.loads((tmp_path / "full" / "args.json").read_text())
    resolved = (args["stage_epochs"], args["kd_temperature_start"], args["kd_temperature_end"], args["kd_ratio_start"], args["kd_ratio_end"])
    assert resolved == pytest.approx((1, 2.0, 4.0, 0.63, 0.9))

    # Stopped after step 4 (2 of stage 2's 4 steps), then resumed: the same batches, the same weights.
    split = tmp_path / "split"
    applied.clear()
    assert train_student.main(curriculum_argv(cifar, split, "--stop-after-iters", 4))["epoch"] == 1
    assert RecordingSampler.seen == seen[:4]
    RecordingSampler.seen = []
    resumed = train_student.main(curriculum_argv(cifar, split, "--resume"))
    assert RecordingSampler.seen == seen[4:] and applied == [(t, pytest.approx(r)) for t, r in stage_values]
    after_resume = (split / "log.txt").read_text().split("resumed from step4")[1]
    assert "curriculum stage 2/3: easiest 67% (40 examples), kd temperature 3, kd-ratio 0.765" in after_resume.splitlines()[2]
    assert [epoch["stage"] for epoch in resumed["history"]] == [2, 3]
    a = torch.load(tmp_path / "full" / "ckpt_epoch_3.pth", weights_only=True)
    b = torch.load(split / "ckpt_epoch_3.pth", weights_only=True)
    assert a["accuracy"] == b["accuracy"]
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=0, msg=key)


def test_cifar_mismatched_ranking_is_refused(cifar, tmp_path):
    meta = json.loads(cifar["ranking"].with_suffix(".meta.json").read_text())
    for key, value, what in (("teacher_fingerprint", "another teacher", "teacher"), ("examples", 50, "number of examples"),
                             ("dataset_fingerprint", "other", "dataset")):
        other = tmp_path / key / "ranking.jsonl"
        other.parent.mkdir()
        other.write_text(cifar["ranking"].read_text())
        other.with_suffix(".meta.json").write_text(json.dumps({**meta, key: value}))
        argv = curriculum_argv(cifar, tmp_path / f"run-{key}")
        argv[argv.index("--ranking") + 1] = str(other)
        with pytest.raises(ValueError, match=rf"--ranking {other} was made for .* \(different {what}\); rank this run's data with"):
            train_student.main(argv)


def test_cifar_curriculum_flags_fail_clearly(cifar, tmp_path, capsys):
    argv = curriculum_argv(cifar, tmp_path / "x")
    without = argv[: argv.index("--ranking")] + argv[argv.index("--ranking") + 2 :]
    for bad, message in (
        (without, "--curriculum pocl needs --ranking (make one with `python -m standard_classification.rank_difficulty`)"),
        ([*argv, "--stage-patience", "2"], "--stage-patience is not available for classification"),
        ([*argv, "--stage-epochs", "2"], "leaves no epoch for the last stage"),
        ([*argv[: argv.index("--curriculum")], "--ranking", "r.jsonl"], "--ranking is only used with --curriculum pocl"),
        ([*argv, "--distill", "crd"], "--curriculum pocl schedules the KD temperature (--kd-temperature), which --distill crd does not use"),
        ([*argv, "--distill", "ttm", "--kd-weight", "1"], "which --distill ttm does not use"),
    ):
        with pytest.raises(SystemExit):
            train_student.parse_args(bad)
        assert message in capsys.readouterr().err
    argv[argv.index("--ranking") + 1] = str(tmp_path / "none.jsonl")
    with pytest.raises(FileNotFoundError, match="no ranking .* run `python -m standard_classification.rank_difficulty` first"):
        train_student.main(argv)


# ---------------------------------------------------------------------------------------------
# CLIP.
# ---------------------------------------------------------------------------------------------


def test_clip_ranking_stages_and_resume_inside_stage_2(promptkd, tmp_path, monkeypatch):  # noqa: F811
    from base_to_new_classification import rank_difficulty as clip_rank
    from base_to_new_classification import train as clip_train

    ranking = tmp_path / "ranking.jsonl"
    rank_argv = ["--dataset", "oxford_pets", "--root", str(promptkd["root"]), "--teacher-model-path", str(promptkd["teacher"]),
                 "--student-model-path", str(promptkd["student"]), "--teacher-ckpt", str(promptkd["teacher_ckpt"]),
                 "--prompt-depth-vision", "2", "--n-ctx-vision", "2", "--seed", "3", "--ranking", str(ranking), "--batch-size", "5"]
    clip_rank.main(rank_argv)
    rows = rows_of(ranking)

    # The signals, computed here from the ranker's models on unaugmented images.
    from base_to_new_classification.datasets import ImageDataset, load_dataset
    from base_to_new_classification.preprocess import EvalTransform

    args = clip_rank.parse_args(rank_argv)
    data = load_dataset("oxford_pets", promptkd["root"])
    teacher, text, student = clip_rank.load_models(args, data, torch.device("cpu"))
    dataset = ImageDataset(data.train, EvalTransform(32))
    pixels = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = torch.tensor([label for _, label in data.train])
    with torch.no_grad():
        student_logits = student(pixels, text)
        teacher_logits = teacher.logit_scale() * teacher.image_features(pixels) @ text.t()
    ce = F.cross_entropy(student_logits.double(), labels, reduction="none").tolist()
    check_ranking_rows(rows, ce, kl_at(student_logits, teacher_logits, 1.0).tolist())

    # Training: 16 images in 3 stages of 5, 10, 16 (1, 2 and 4 steps of 4, the rest dropped as in Dassl).
    initial = {}
    real_fit = clip_train.fit

    def recording_fit(run, module, *rest):
        initial.update({key: value.detach().clone() for key, value in module.state_dict().items()})
        return real_fit(run, module, *rest)

    monkeypatch.setattr(clip_train, "fit", recording_fit)
    common = ["--distill", "kd", "--epochs", "3", "--curriculum", "pocl", "--ranking", ranking, "--num-stages", "3"]
    full = clip_train.main(student_argv(promptkd, tmp_path / "full", *common))
    for key, value in student.state_dict().items():
        assert torch.equal(value, initial[key]), f"the ranker's student differs from the run's initial student in {key}"
    log = (tmp_path / "full" / "log.txt").read_text()
    # T/2 -> T = 0.5 -> 1 and 0.7 w -> w = 7 -> 10 (--kd-ratio 10).
    for line in ("3 stages of 1, 1, 1 epochs (7 steps)",
                 "curriculum stage 1/3: easiest 33% (5 examples), kd temperature 0.5, kd-ratio 7",
                 "curriculum stage 2/3: easiest 67% (10 examples), kd temperature 0.75, kd-ratio 8.5",
                 "curriculum stage 3/3: easiest 100% (16 examples), kd temperature 1, kd-ratio 10"):
        assert line in log
    assert len([line for line in log.splitlines() if "train step" in line]) == 7

    split = tmp_path / "split"
    assert clip_train.main(student_argv(promptkd, split, *common, "--stop-after-iters", "2")) is None  # 1 of stage 2's 2 steps
    resumed = clip_train.main(student_argv(promptkd, split, *common, "--resume"))
    assert "curriculum stage 2/3" in (split / "log.txt").read_text().split("resumed from step2")[1].splitlines()[2]
    a = torch.load(tmp_path / "full" / "student_prompts.pt", weights_only=True)["state_dict"]
    b = torch.load(split / "student_prompts.pt", weights_only=True)["state_dict"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed == full and all(math.isfinite(value) for value in (full["base_acc"], full["new_acc"]))

    meta = json.loads(ranking.with_suffix(".meta.json").read_text())
    ranking.with_suffix(".meta.json").write_text(json.dumps({**meta, "teacher_fingerprint": "another"}))
    with pytest.raises(ValueError, match=rf"--ranking {ranking} was made for oxford_pets .* \(different teacher\)"):
        clip_train.main(student_argv(promptkd, tmp_path / "refused", *common))


def test_cifar_ranking_with_an_id_twice_is_refused_with_its_line(cifar, tmp_path):
    lines = cifar["ranking"].read_text().splitlines()
    bad = tmp_path / "ranking.jsonl"
    bad.write_text("\n".join([*lines[:-1], lines[1]]) + "\n")
    bad.with_suffix(".meta.json").write_text(cifar["ranking"].with_suffix(".meta.json").read_text())
    argv = curriculum_argv(cifar, tmp_path / "run")
    argv[argv.index("--ranking") + 1] = str(bad)
    with pytest.raises(ValueError, match=rf"{bad}:{len(lines)}: id {json.loads(lines[1])['id']} is ranked twice \(first at line 2\)"):
        train_student.main(argv)
