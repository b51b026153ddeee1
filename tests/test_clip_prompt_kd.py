"""PromptKD (base_to_new_classification) on tiny random CLIPs and a synthetic CoOp-layout dataset.

Everything is built here: two CLIPs from configs (teacher width 32, student width 16, 2 layers,
32x32 images, 8x8 patches) saved in Hugging Face format, a CLIP BPE tokenizer over a character
vocabulary, and an `oxford_pets`-layout dataset of coloured PNGs with a split_zhou JSON. Training
goes through the real DeepSpeed engine (gloo, fp32, ZeRO-1).
"""

import json
import math
import re
import string
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
])
def test_distill_changes_prompts_not_encoders(promptkd, tmp_path, monkeypatch, distill, extra):
    loaded, initial = [], {}
    load_clip, fit = train.load_frozen_clip, train.fit

    def recording_load(path, flag, device="cpu"):
        model = load_clip(path, flag, device)
        loaded.append((Path(path), model))
        return model

    def recording_fit(run, module, *rest):
        initial.update({k: v.detach().clone() for k, v in module.state_dict().items()})
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
            assert torch.equal(tensor, in_memory[key]), f"{path.name}: {key} changed"
    # The resumable checkpoint holds only the learnable parameters.
    (model_file,) = (tmp_path / "checkpoints").rglob("mp_rank_00_model_states.pt")
    saved = torch.load(model_file, weights_only=False)["module"]
    assert set(saved) == set(final)

    log = (tmp_path / "log.txt").read_text()
    losses_logged = [float(line.split("loss ")[1].split(" |")[0]) for line in log.splitlines() if "train step" in line]
    assert len(losses_logged) == 4 and all(math.isfinite(v) and v >= 0 for v in losses_logged)
    assert "epoch step 1" in log
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


def test_objectives_match_definitions_and_dispatch():
    torch.manual_seed(0)
    student_logits, teacher_logits, temperature = torch.randn(5, 7), torch.randn(5, 7) * 3, 2.0
    target = teacher_logits.argmax(-1)  # unlabeled images: DKD's target is the teacher's prediction
    # Reference: the DKD paper's code (Zhao et al. 2022), per sample.
    gt = torch.nn.functional.one_hot(target, 7).bool()
    ps, pt = (torch.softmax(x / temperature, -1) for x in (student_logits, teacher_logits))
    bs = torch.stack([(ps * gt).sum(1), (ps * ~gt).sum(1)], 1)
    bt = torch.stack([(pt * gt).sum(1), (pt * ~gt).sum(1)], 1)
    tckd = (bt * (bt.log() - bs.log())).sum(1)
    ls_s = torch.log_softmax(student_logits / temperature - 1000.0 * gt, -1)
    ls_t = torch.softmax(teacher_logits / temperature - 1000.0 * gt, -1)
    nckd = (ls_t * (ls_t.clamp_min(1e-30).log() - ls_s)).sum(1)
    # PromptKD's reduction: kd_ratio * T^2 * batch mean / C.
    dkd = PromptKDLoss("dkd", temperature=temperature, kd_ratio=3.0, num_classes=7, tckd_weight=1.0, nckd_weight=8.0)
    torch.testing.assert_close(dkd(student_logits, teacher_logits), 3.0 * 4.0 * (tckd + 8.0 * nckd).mean() / 7, rtol=1e-4, atol=1e-6)
    kl = (pt * (pt.log() - ps.log())).sum(1)
    kd = PromptKDLoss("kd", temperature=temperature, kd_ratio=3.0, num_classes=7)
    torch.testing.assert_close(kd(student_logits, teacher_logits), 3.0 * 4.0 * kl.mean() / 7)
    # The same reduction as PromptKD's own code: kl_div(sum) * T^2 / numel.
    promptkd = torch.nn.functional.kl_div(torch.log_softmax(student_logits / temperature, 1), pt, reduction="sum") * 4.0 / 35
    torch.testing.assert_close(kd(student_logits, teacher_logits), 3.0 * promptkd)
    ab = PromptKDLoss("ab", temperature=temperature, kd_ratio=3.0, num_classes=7, ab_alpha=1.0, ab_beta=0.0)
    torch.testing.assert_close(ab(student_logits, teacher_logits), kd(student_logits, teacher_logits))
    # Logit standardisation makes the loss blind to a per-sample scale and shift of either side.
    ls = PromptKDLoss("ls", temperature=temperature, kd_ratio=1.0, num_classes=7)
    shifted = teacher_logits * torch.tensor([[0.5], [2.0], [3.0], [1.0], [7.0]]) + 4.0
    torch.testing.assert_close(ls(student_logits, shifted), ls(student_logits, teacher_logits))
    with pytest.raises(ValueError, match="valid names: kd, dkd, ls, ab"):
        PromptKDLoss("fkd", temperature=1.0, kd_ratio=1.0, num_classes=2)
    with pytest.raises(ValueError, match="--ab_alpha"):
        PromptKDLoss("ab", temperature=1.0, kd_ratio=1.0, num_classes=2, ab_beta=0.5)


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
    with pytest.raises(ValueError, match="valid names: kd, dkd, ls, ab"):
        train.main(student_argv(promptkd, tmp_path / "x", "--distill", "fkl"))
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


@pytest.mark.parametrize("script,runs", [("train_kd.sh", 5), ("train_dkd.sh", 5), ("train_ab.sh", 2 * 2 * 5)])
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
    assert sorted({args.seed for args in parsed}) == [10, 20, 30, 40, 50]
    assert all(args.dataset == "dtd" and args.resume for args in parsed)
    if script == "train_ab.sh":
        assert sorted({(args.ab_alpha, args.ab_beta) for args in parsed}) == [(0.1, 0.6), (0.1, 0.7), (0.2, 0.6), (0.2, 0.7)]
    assert len({args.save for args in parsed}) == runs


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
