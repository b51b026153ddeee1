"""PromptKD (base_to_new_classification) on tiny random CLIPs and a synthetic CoOp-layout dataset.

Everything is built here: two CLIPs from configs (teacher width 32, student width 16, 2 layers,
32x32 images, 8x8 patches) saved in Hugging Face format, a CLIP BPE tokenizer over a character
vocabulary, and an `oxford_pets`-layout dataset of coloured PNGs with a split_zhou JSON. Training
goes through the real DeepSpeed engine (gloo, fp32, ZeRO-1).
"""

import argparse
import json
import math
import re
import string
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from abkd.classification import PromptKDLoss
from base_to_new_classification import datasets, evaluate, summarize, train, train_teacher
from base_to_new_classification.preprocess import EvalTransform, TrainTransform

CLASSES = ["red_fox", "green frog", "blue whale", "yellow bee"]  # 2 base, 2 new
COLOURS = [(200, 40, 40), (40, 180, 60), (40, 60, 200), (220, 200, 40)]


def make_tokenizer():
    from transformers import CLIPTokenizer

    chars = list(string.ascii_lowercase) + [".", ","]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    merges = [("p", "h"), ("ph", "o"), ("pho", "t"), ("phot", "o</w>"), ("o", "f</w>")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges)


def make_clip(directory: Path, width: int, projection: int, tokenizer, seed: int) -> Path:
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    common = dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=24, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **common),
        vision_config=dict(image_size=32, patch_size=8, **common),
        projection_dim=projection,
    )
    CLIPModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_images(root: Path, spec: datasets.DatasetSpec, classes, per_class: dict[str, int], seed: int) -> None:
    """Images in `spec`'s layout and its split file; class c is tinted with COLOURS[c % 4]."""
    rng = np.random.default_rng(seed)
    image_dir = root / spec.directory / spec.image_dir
    split = {}
    for key, count in per_class.items():
        split[key] = []
        for label, name in enumerate(classes):
            folder = image_dir / name.replace(" ", "_")
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                noise = rng.integers(-40, 40, size=(40, 48, 3))
                pixels = np.clip(np.array(COLOURS[label % 4]) + noise, 0, 255).astype(np.uint8)
                relative = f"{name.replace(' ', '_')}/{key}_{i}.png"
                Image.fromarray(pixels).save(image_dir / relative)
                split[key].append([relative, label, name])
    (root / spec.directory / spec.split_file).write_text(json.dumps(split))


@pytest.fixture(scope="module")
def promptkd(tmp_path_factory):
    base = tmp_path_factory.mktemp("promptkd")
    tokenizer = make_tokenizer()
    teacher_dir = make_clip(base / "teacher", 32, 24, tokenizer, seed=1)
    student_dir = make_clip(base / "student", 16, 16, tokenizer, seed=2)
    root = base / "data"
    write_images(root, datasets.DATASETS["oxford_pets"], CLASSES, {"train": 4, "val": 1, "test": 2}, seed=0)
    teacher_save = base / "teacher_run"
    teacher_results = train_teacher.main([
        "--dataset", "oxford_pets", "--root", str(root), "--teacher-model-path", str(teacher_dir), "--save", str(teacher_save),
        "--prompt-depth-text", "2", "--prompt-depth-vision", "2", "--n-ctx-text", "2", "--n-ctx-vision", "2",
        "--num-shots", "-1", "--epochs", "2", "--batch-size", "4", "--warmup-epochs", "0", "--seed", "1",
    ])
    return {"root": root, "teacher": teacher_dir, "student": student_dir, "teacher_ckpt": teacher_save / "teacher_prompts.pt",
            "teacher_results": teacher_results, "teacher_save": teacher_save}


def student_argv(promptkd, save, *extra):
    return [
        "--dataset", "oxford_pets", "--root", str(promptkd["root"]), "--teacher-model-path", str(promptkd["teacher"]),
        "--student-model-path", str(promptkd["student"]), "--teacher-ckpt", str(promptkd["teacher_ckpt"]), "--save", str(save),
        "--prompt-depth-vision", "2", "--n-ctx-vision", "2", "--batch-size", "4", "--warmup-epochs", "0", "--seed", "3",
        "--log-interval", "1", "--kd-ratio", "10", *map(str, extra),
    ]


def test_teacher_trains_and_saves_only_prompts(promptkd):
    checkpoint = torch.load(promptkd["teacher_ckpt"], weights_only=True)
    assert checkpoint["num_classes"] == 4 and checkpoint["num_base"] == 2 and checkpoint["classnames"] == CLASSES
    assert set(checkpoint["prompts"]) == {"text_ctx", "text_deep", "vision_prompts"}
    assert checkpoint["prompts"]["text_deep"].shape == (1, 2, 32)
    results = promptkd["teacher_results"]
    assert results["num_base_images"] == 4 and results["num_new_images"] == 4
    assert 0 <= results["hm"] <= 100


@pytest.mark.parametrize("distill,extra", [
    ("kd", []),
    ("dkd", ["--tckd-weight", "1.0", "--nckd-weight", "2.0"]),
    ("ls", ["--kd-temperature", "2.0"]),
    ("ab", ["--ab_alpha", "0.8", "--ab_beta", "0.3"]),
    ("kd", ["--precision", "bf16"]),  # the bf16 opt-in (autocast; prompts, projector and losses stay float32)
], ids=["kd", "dkd", "ls", "ab", "kd-bf16"])
def test_distill_changes_prompts_not_encoders(promptkd, tmp_path, monkeypatch, distill, extra):
    loaded, initial = [], {}
    load_clip, fit = train.load_frozen_clip, train.fit

    def recording_load(path, flag, device="cpu"):
        model = load_clip(path, flag, device)
        loaded.append((Path(path), model))
        return model

    def recording_fit(run, module, *rest):
        initial.update({k: v.detach().cpu().clone() for k, v in module.state_dict().items()})  # files are read to CPU
        return fit(run, module, *rest)

    monkeypatch.setattr(train, "load_frozen_clip", recording_load)
    monkeypatch.setattr(train, "fit", recording_fit)
    results = train.main(student_argv(promptkd, tmp_path, "--distill", distill, "--epochs", "1", *extra))

    final = torch.load(tmp_path / "student_prompts.pt", weights_only=True)["state_dict"]
    assert set(initial) == set(final)
    assert all(k == "vision_prompts" or k.startswith("projector.") for k in final)
    for key in ("vision_prompts", "projector.0.weight", "projector.3.weight"):
        assert not torch.equal(initial[key], final[key]), f"{key} did not change"
    # Both frozen encoders, as used in training, are bit-identical to the files on disk.
    assert [path for path, _ in loaded] == [promptkd["teacher"], promptkd["student"]]
    for path, model in loaded:
        on_disk = load_file(path / "model.safetensors")
        in_memory = model.state_dict()
        assert set(on_disk) <= set(in_memory)
        for key, tensor in on_disk.items():
            assert torch.equal(tensor, in_memory[key].cpu()), f"{path.name}: {key} changed"
    # The resumable checkpoint holds only the learnable parameters.
    (model_file,) = (tmp_path / "checkpoints").rglob("mp_rank_00_model_states.pt")
    saved = torch.load(model_file, weights_only=False)["module"]
    assert set(saved) == set(final)

    log = (tmp_path / "log.txt").read_text()
    losses_logged = [float(line.split("loss ")[1].split(" |")[0]) for line in log.splitlines() if "train step" in line]
    assert len(losses_logged) == 4 and all(math.isfinite(v) and v >= 0 for v in losses_logged)
    assert "epoch step 1" in log and f"precision {'bf16' if '--precision' in extra else 'fp32'};" in log
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == results and on_disk["distill"] == distill
    assert on_disk["num_base_images"] == 4 and on_disk["num_new_images"] == 4


def test_resume_matches_uninterrupted_run(promptkd, tmp_path):
    common = ["--distill", "ab", "--ab_alpha", "0.5", "--ab_beta", "0.5", "--epochs", "2"]
    full = train.main(student_argv(promptkd, tmp_path / "full", *common))
    assert train.main(student_argv(promptkd, tmp_path / "split", *common, "--stop-after-iters", "3")) is None
    assert not (tmp_path / "split" / "results.json").exists()
    resumed = train.main(student_argv(promptkd, tmp_path / "split", *common, "--resume", "--stop-after-iters", "3"))
    assert resumed is None  # 6 of 8 steps; crosses the epoch boundary
    resumed = train.main(student_argv(promptkd, tmp_path / "split", *common, "--resume"))
    a = torch.load(tmp_path / "full" / "student_prompts.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "split" / "student_prompts.pt", weights_only=True)["state_dict"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed == full


def test_base_new_accuracy_by_hand():
    # 4 classes, base = {0, 1}, new = {2, 3}. Restricted argmax decides.
    logits = torch.tensor([
        [5.0, 1.0, 9.0, 0.0],  # label 0: base argmax 0 -> correct (the 9 on a new class is ignored)
        [5.0, 1.0, 0.0, 0.0],  # label 1: base argmax 0 -> wrong
        [0.0, 0.0, 1.0, 2.0],  # label 3: new argmax 3 -> correct
        [9.0, 0.0, 1.0, 2.0],  # label 2: new argmax 3 -> wrong
        [0.0, 0.0, 3.0, 2.0],  # label 2: correct
        [0.0, 3.0, 0.0, 0.0],  # label 1: correct
    ])
    result = evaluate.base_to_new_accuracy(logits, torch.tensor([0, 1, 3, 2, 2, 1]), num_base=2)
    assert result["base_acc"] == pytest.approx(200 / 3) and result["new_acc"] == pytest.approx(200 / 3)
    assert result["hm"] == pytest.approx(200 / 3)
    assert evaluate.harmonic_mean(80.0, 40.0) == pytest.approx(2 * 80 * 40 / 120)
    assert evaluate.harmonic_mean(0.0, 0.0) == 0.0
    assert datasets.num_base_classes(5) == 3  # ceil, as CoOp


def _softmax(row, T):
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


STUDENT = [[1.0, -0.5, 2.0, 0.0, 0.3], [0.2, 0.1, -1.0, 1.5, 0.0], [-0.3, 0.8, 0.4, 0.0, 2.2]]
TEACHER = [[2.5, -1.0, 0.5, 0.0, 1.0], [0.0, 0.4, -2.0, 3.0, 0.1], [0.6, 0.2, 0.0, -0.5, 1.4]]
LABELS = [2, 0, 4]  # ground truth; not the teacher's argmax in the first two rows


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def test_promptkd_reductions_are_abkd_s():
    """ABKD base_to_new_classification: losses/kd.py kl_div(sum) * T^2 / numel; losses/abkl.py
    loss.mean() without T^2 or / C; losses/dkd.py min(epoch / warmup, 1) * (TCKD + beta NCKD) with
    kl_div(sum) * T^2 / B, the batch's labels as target; all times KD_WEIGHT."""
    s, t, y = torch.tensor(STUDENT, dtype=torch.float64), torch.tensor(TEACHER, dtype=torch.float64), torch.tensor(LABELS)
    B, C, T, w = 3, 5, 2.0, 7.0
    kd = sum(_kl(_softmax(tr, T), _softmax(sr, T)) for sr, tr in zip(STUDENT, TEACHER)) * T**2 / (B * C)
    assert PromptKDLoss("kd", temperature=T, kd_ratio=w, num_classes=C)(s, t).item() == pytest.approx(w * kd, rel=1e-10)

    a, b = 0.6, 0.5
    ab = 0.0
    for sr, tr in zip(STUDENT, TEACHER):
        p, q = _softmax(tr, T), _softmax(sr, T)
        ab += (sum(x ** (a + b) for x in p) / (b * (a + b)) + sum(x ** (a + b) for x in q) / (a * (a + b))
               - sum(x**a * z**b for x, z in zip(p, q)) / (a * b)) / B
    loss = PromptKDLoss("ab", temperature=T, kd_ratio=w, num_classes=C, ab_alpha=a, ab_beta=b)
    assert loss(s, t).item() == pytest.approx(w * ab, rel=1e-10)

    tckd = nckd = 0.0
    for sr, tr, label in zip(STUDENT, TEACHER, LABELS):
        ps, pt = _softmax(sr, T), _softmax(tr, T)
        tckd += _kl((pt[label], 1 - pt[label]), (ps[label], 1 - ps[label])) * T**2 / B
        others_t = _softmax([v for k, v in enumerate(tr) if k != label], T)
        others_s = _softmax([v for k, v in enumerate(sr) if k != label], T)
        nckd += _kl(others_t, others_s) * T**2 / B
    dkd = PromptKDLoss("dkd", temperature=T, kd_ratio=w, num_classes=C, tckd_weight=1.0, nckd_weight=0.5, dkd_warmup=2)
    # Trainer epoch 0 is ABKD's `epoch = self.epoch + 1` = 1: min(1 / 2, 1) = 0.5; then 1.
    assert dkd(s, t, y, 0).item() == pytest.approx(w * 0.5 * (tckd + 0.5 * nckd), rel=1e-10)
    assert dkd(s, t, y, 1).item() == pytest.approx(w * (tckd + 0.5 * nckd), rel=1e-10)
    with pytest.raises(ValueError, match="labels"):
        dkd(s, t)

    # ls: kd between z-scores with the unbiased standard deviation (trainers/promptkd.py `normalize`).
    def z(row):
        mean = sum(row) / C
        std = math.sqrt(sum((v - mean) ** 2 for v in row) / (C - 1))
        return [(v - mean) / (1e-7 + std) for v in row]

    ls = sum(_kl(_softmax(z(tr), T), _softmax(z(sr), T)) for sr, tr in zip(STUDENT, TEACHER)) * T**2 / (B * C)
    assert PromptKDLoss("ls", temperature=T, kd_ratio=w, num_classes=C)(s, t).item() == pytest.approx(w * ls, rel=1e-6)

    with pytest.raises(ValueError, match="valid names: kd, fkl, rkl, jsd, tvd, sfkl, srkl, dkd, ls, ab, ttm, dist"):
        PromptKDLoss("fkd", temperature=1.0, kd_ratio=1.0, num_classes=2)
    with pytest.raises(ValueError, match="--ab_alpha"):
        PromptKDLoss("ab", temperature=1.0, kd_ratio=1.0, num_classes=2, ab_beta=0.5)


def test_dassl_schedule_constant_warmup_then_per_epoch_cosine():
    """Dassl's ConstantWarmupScheduler(CosineAnnealingLR(T_max=MAX_EPOCH)), stepped once per epoch,
    with ABKD's PromptKD config (LR 1e-4, MAX_EPOCH 20, WARMUP_EPOCH 1, WARMUP_CONS_LR 1e-5):
    epoch 0 at 1e-5; epoch 1 at the full lr (the cosine's step 0); epoch e at lr (1 + cos(pi (e - 1) / 20)) / 2."""
    lr, steps = 1e-4, 3
    factor = partial(train.dassl_lr_factor, steps_per_epoch=steps, warmup_epochs=1, epochs=20, warmup_ratio=1e-5 / lr)
    per_epoch = [lr * factor(epoch * steps + k) for epoch in range(20) for k in range(steps)]
    assert per_epoch[:3] == pytest.approx([1e-5] * 3)
    assert per_epoch[3:6] == pytest.approx([1e-4] * 3)
    assert per_epoch[6] == pytest.approx(1e-4 * (1 + math.cos(math.pi / 20)) / 2)
    assert per_epoch[-1] == pytest.approx(1e-4 * (1 + math.cos(math.pi * 18 / 20)) / 2)
    # Through the scheduler the trainer builds, as DeepSpeed steps it (once per optimizer step).
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=lr)
    args = argparse.Namespace(lr_schedule="dassl", lr=lr, warmup_lr=1e-5, warmup_epochs=1, epochs=20)
    scheduler = train.build_lr_scheduler(optimizer, args, steps)
    seen = []
    for _ in range(20 * steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx(per_epoch)


def test_cli_defaults_are_abkd_s_promptkd_config():
    argv = ["--dataset", "dtd", "--root", "r", "--teacher-model-path", "t", "--student-model-path", "s", "--teacher-ckpt", "c", "--save", "x"]
    args = train.parse_args([*argv, "--distill", "dkd"])
    # configs/trainers/PromptKD/vit_b16_c2_ep20_batch8_4+4ctx.yaml; train.py --dkd_alpha 1 --dkd_beta 1 --dkd_warmup 2
    assert (args.lr, args.epochs, args.batch_size, args.warmup_epochs, args.warmup_lr, args.lr_schedule) == (1e-4, 20, 8, 1, 1e-5, "dassl")
    assert (args.tckd_weight, args.nckd_weight, args.dkd_warmup, args.precision, args.final_model) == (1.0, 1.0, 2, "fp32", "last")


def test_bad_inputs_fail_clearly(promptkd, tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'pets'; valid names: caltech101, oxford_pets"):
        datasets.load_dataset("pets", promptkd["root"])
    with pytest.raises(ValueError, match="unknown dataset 'pets'"):
        train.parse_args([
            "--dataset", "pets", "--root", "r", "--teacher-model-path", "t", "--student-model-path", "s",
            "--teacher-ckpt", "c", "--save", "x", "--distill", "kd"])
    missing = tmp_path / "empty" / "dtd" / "split_zhou_DescribableTextures.json"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        datasets.load_dataset("dtd", tmp_path / "empty")
    with pytest.raises(ValueError, match="valid names: kd, fkl, rkl, jsd, tvd, sfkl, srkl, dkd, ls, ab, ttm, dist"):
        train.main(student_argv(promptkd, tmp_path / "x", "--distill", "crd"))
    # A 6-class dataset with the 4-class teacher's checkpoint.
    other = tmp_path / "other"
    write_images(other, datasets.DATASETS["oxford_pets"], CLASSES + ["red ant", "green leaf"], {"train": 1, "val": 1, "test": 1}, seed=1)
    with pytest.raises(ValueError, match="with 4 classes, but --dataset oxford_pets has 6 classes"):
        train.main(student_argv(promptkd, tmp_path / "mismatch", "--distill", "kd", "--root", other))


def test_preprocess_and_summarize(tmp_path):
    image = Image.fromarray(np.full((40, 60, 3), 128, dtype=np.uint8))
    assert EvalTransform(32)(image).shape == (3, 32, 32)
    a = TrainTransform(32)(image, np.random.default_rng([1, 0, 5]))
    b = TrainTransform(32)(image, np.random.default_rng([1, 0, 5]))
    assert a.shape == (3, 32, 32) and torch.equal(a, b)
    for seed, (base, new) in {10: (80.0, 60.0), 20: (90.0, 70.0)}.items():
        run = tmp_path / "pets" / "kd" / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps({"seed": seed, "base_acc": base, "new_acc": new, "hm": 0.0}))
    (row,) = summarize.main([str(tmp_path)])
    assert row["group"] == "pets/kd" and row["seeds"] == [10, 20]
    assert row["base_acc"] == 85.0 and row["new_acc"] == 65.0
    assert row["hm"] == pytest.approx(2 * 85 * 65 / 150)


@pytest.mark.parametrize("script,runs", [("train_kd.sh", 3), ("train_dkd.sh", 2 * 3), ("train_ab.sh", 2 * 2 * 3)])
def test_launchers_print_valid_commands(script, runs):
    import os
    import shlex
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    path = repo / "scripts" / "clip" / script
    text = path.read_text()
    assert "set -euo pipefail" in text and "CUDA_VISIBLE_DEVICES" not in text and "PYTHONPATH" not in text
    extra = ["0.1", "0.2", "0.6", "0.7"] if script == "train_ab.sh" else []
    out = subprocess.run(["bash", str(path), "dtd", "/data", "1", *extra], env={**os.environ, "DRY_RUN": "1"},
                         capture_output=True, text=True, check=True).stdout.splitlines()
    commands = [shlex.split(line)[3:] for line in out if "base_to_new_classification.train " in line + " "]
    assert len(commands) == runs and out[-1].startswith("python -m base_to_new_classification.summarize")
    parsed = [train.parse_args(argv) for argv in commands]
    assert sorted({args.seed for args in parsed}) == [1, 2, 3]
    assert all(args.dataset == "dtd" and args.resume for args in parsed)
    if script == "train_ab.sh":
        assert sorted({(args.ab_alpha, args.ab_beta) for args in parsed}) == [(0.1, 0.6), (0.1, 0.7), (0.2, 0.6), (0.2, 0.7)]
    assert len({args.save for args in parsed}) == runs


# ABKD base_to_new_classification/scripts/promptkd/base2new_train_*.sh and the PromptKD config they load:
# TEMPERATURE 1.0, MAX_EPOCH 20, batch 8, LR 1e-4 (the config; only the ls script sets 0.005).
REFERENCE_CLIP_COMMON = {"kd_temperature": 1.0, "epochs": 20, "batch_size": 8, "lr": 1e-4, "warmup_epochs": 1, "warmup_lr": 1e-5}
REFERENCE_CLIP_RUNS = {
    # base2new_train_kd.sh: "fgvc_aircraft, oxford_flowers, dtd: KD_WEIGHT:200; imagenet, caltech101, ...: 1000"
    ("train_kd.sh", "dtd"): [{"distill": "kd", "kd_ratio": 200.0}],
    ("train_kd.sh", "fgvc_aircraft"): [{"distill": "kd", "kd_ratio": 200.0}],
    ("train_kd.sh", "oxford_flowers"): [{"distill": "kd", "kd_ratio": 200.0}],
    ("train_kd.sh", "caltech101"): [{"distill": "kd", "kd_ratio": 1000.0}],
    # base2new_train_dkd.sh: KD_WEIGHT=100.0; "for warmup in $(seq 1 1 1)"; "for beta in 0.5 1"; dkd_alpha default 1
    ("train_dkd.sh", "dtd"): [{"distill": "dkd", "kd_ratio": 100.0, "dkd_warmup": 1.0, "tckd_weight": 1.0, "nckd_weight": beta} for beta in (0.5, 1.0)],
    # base2new_train_ab.sh "sh scripts/promptkd/base2new_train_ab.sh dtd 1.0 1.3 0.5 1.2 1 1 100.0": KD_WEIGHT 100
    ("train_ab.sh", "dtd"): [{"distill": "ab", "kd_ratio": 100.0, "ab_alpha": 0.5, "ab_beta": 0.5}],
}  # fmt: skip


@pytest.mark.parametrize("script,dataset", list(REFERENCE_CLIP_RUNS))
def test_launchers_resolve_to_the_reference_hyper_parameters(script, dataset):
    import os
    import shlex
    import subprocess

    path = Path(__file__).resolve().parents[1] / "scripts" / "clip" / script
    out = subprocess.run(["bash", str(path), dataset, "/data", "1"], env={**os.environ, "DRY_RUN": "1"},
                         capture_output=True, text=True, check=True).stdout.splitlines()
    parsed = [vars(train.parse_args(shlex.split(line)[3:])) for line in out if line.startswith("python -m base_to_new_classification.train ")]
    settings = REFERENCE_CLIP_RUNS[script, dataset]
    assert len(parsed) == 3 * len(settings)  # seeds 1, 2, 3 (PromptKD's and ABKD's seeds) per setting
    for expected in settings:
        runs = [args for args in parsed if all(args[key] == value for key, value in expected.items())]
        assert sorted(args["seed"] for args in runs) == [1, 2, 3], expected
        assert all(args[key] == value for args in runs for key, value in REFERENCE_CLIP_COMMON.items())


def test_best_val_reports_the_epoch_with_the_best_base_accuracy(promptkd, tmp_path):
    results = train.main(student_argv(promptkd, tmp_path, "--distill", "kd", "--epochs", "2", "--final-model", "best_val", "--lr", "0.05"))
    log = (tmp_path / "log.txt").read_text()
    vals = [float(line.split("val_base_acc ")[1].split()[0].rstrip("|")) for line in log.splitlines() if "val_base_acc" in line]
    assert len(vals) == 2 and (tmp_path / "best_val_student.pt").is_file()
    assert results["final_model"] == "best_val" and results["base_acc"] == pytest.approx(max(vals))


def test_layerwise_encoders_equal_hf_clip_without_prompts(promptkd):
    from base_to_new_classification.clip_prompts import (
        ClassPromptTemplate,
        encode_image,
        encode_text,
        load_frozen_clip,
        load_tokenizer,
    )

    clip = load_frozen_clip(promptkd["teacher"], "--teacher-model-path")
    tokenizer = load_tokenizer(promptkd["teacher"], "--teacher-model-path")
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(encode_image(clip, pixels, None), clip.get_image_features(pixel_values=pixels).pooler_output)
        template = ClassPromptTemplate(tokenizer, CLASSES, n_ctx=0, max_length=24)
        ids = tokenizer([name.replace("_", " ") + "." for name in CLASSES], padding=True, return_tensors="pt").input_ids
        assert torch.equal(template.input_ids, ids)
        torch.testing.assert_close(encode_text(clip, template, torch.zeros(0, 32), None),
                                   clip.get_text_features(input_ids=ids).pooler_output)


def test_best_val_without_a_finite_base_accuracy_is_a_clear_error(promptkd, tmp_path, monkeypatch):
    """NaN base accuracies are never a best_val candidate; with none finite there is no best model
    (before: a FileNotFoundError on best_val_student.pt)."""
    monkeypatch.setattr(train, "evaluate", lambda *args, **kwargs: {"base_acc": math.nan, "new_acc": math.nan, "hm": math.nan})
    with pytest.raises(ValueError, match="--final-model best_val: no epoch had a finite base accuracy"):
        train.main(student_argv(promptkd, tmp_path, "--distill", "kd", "--epochs", "1", "--final-model", "best_val"))
    assert "base accuracy nan after epoch 1: not a candidate for best_val" in (tmp_path / "log.txt").read_text()
