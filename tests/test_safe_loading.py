"""Untrusted inputs are read safely (issue #14): CIFAR pickles through a restricted unpickler,
CLIP split files entry by entry, PEFT adapters from local directories only.

Each bad input is built here the way a user (or an attacker) would hand it over: a pickle whose
reduce runs `os.system`, a split file with a string, float or boolean label or a `../` path, an
adapter folder with a config but no weights given as a relative path."""

import json
import os
import pickle
import re
import socket
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from base_to_new_classification import datasets
from distillation_llm.models import add_lora, load_causal_lm, load_lora, merge_lora
from standard_classification.data import UnsafePickleError, load_cifar100

# ---------------------------------------------------------------------------------------------
# CIFAR pickles.
# ---------------------------------------------------------------------------------------------


def _cifar_pickles(num_classes: int = 3, per_class: int = 2) -> dict[str, dict]:
    """The keys and types of the official CIFAR-100 python pickles (data: uint8 [N, 3072])."""
    rng = np.random.RandomState(0)

    def batch(split: str) -> dict:
        labels = np.repeat(np.arange(num_classes), per_class)
        return {
            "filenames": [f"{split}_{i}.png" for i in range(len(labels))],
            "batch_label": f"{split} batch 1 of 1",
            "fine_labels": labels.tolist(),
            "coarse_labels": (labels // 2).tolist(),
            "data": rng.randint(0, 256, size=(len(labels), 3072)).astype(np.uint8),
        }

    meta = {"fine_label_names": [f"class_{i}" for i in range(num_classes)], "coarse_label_names": ["a", "b"]}
    return {"train": batch("train"), "test": batch("test"), "meta": meta}


def _write(directory: Path, payloads: dict[str, object], rename: tuple[bytes, bytes] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, payload in payloads.items():
        data = pickle.dumps(payload, protocol=2)  # CIFAR's python version is a protocol-2 pickle
        if rename is not None:
            data = data.replace(*rename)
        (directory / name).write_bytes(data)
    return directory


@pytest.mark.parametrize("numpy_module", ["numpy._core.multiarray", "numpy.core.multiarray"])
def test_genuine_cifar_pickles_load(tmp_path, numpy_module):
    """Both spellings of numpy's array reconstruction load: numpy >= 2 writes `numpy._core`, the
    official files (written by numpy 1 under Python 2) name `numpy.core`."""
    payloads = _cifar_pickles()
    current = "numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray"
    rename = (f"c{current}\n".encode(), f"c{numpy_module}\n".encode())  # the GLOBAL opcode: c<module>\n<name>\n
    directory = _write(tmp_path / "cifar-100-python", payloads, rename)
    assert f"c{numpy_module}\n_reconstruct\n".encode() in (directory / "train").read_bytes()
    for split in ("train", "test"):
        data = load_cifar100(tmp_path, split)
        expected = payloads[split]["data"].reshape(-1, 3, 32, 32)
        assert data.images.dtype == torch.uint8 and torch.equal(data.images, torch.from_numpy(expected))
        assert data.labels.tolist() == payloads[split]["fine_labels"] and data.classes == ["class_0", "class_1", "class_2"]


class _RunsACommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("archived", [False, True])
def test_a_pickle_that_runs_a_command_is_refused_before_it_runs(tmp_path, archived):
    marker = tmp_path / "marker"
    payloads = _cifar_pickles()
    payloads["meta"]["fine_label_names"] = _RunsACommand(marker)
    directory = _write(tmp_path / "src" / "cifar-100-python", payloads)
    assert b"system" in (directory / "meta").read_bytes()
    folder = tmp_path / "src"
    if archived:
        folder = tmp_path / "archived"
        folder.mkdir()
        with tarfile.open(folder / "cifar-100-python.tar.gz", "w:gz") as tar:
            tar.add(directory, arcname="cifar-100-python")
        source = f"{folder / 'cifar-100-python.tar.gz'}:cifar-100-python/meta"
    else:
        source = str(directory / "meta")
    with pytest.raises(UnsafePickleError, match=re.escape(source) + r": refused to load global (posix|os|nt)\.system"):
        load_cifar100(folder, "train")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# CLIP split files.
# ---------------------------------------------------------------------------------------------

PETS = datasets.DATASETS["oxford_pets"]
GOOD = {
    "train": [["cat_1.jpg", 0, "cat"], ["dog_1.jpg", 1, "dog"], ["sub/../bird_1.jpg", 2, "bird"]],
    "val": [["cat_2.jpg", 0, "cat"]],
    "test": [["dog_2.jpg", 1, "dog"], ["bird_2.jpg", 2, "bird"]],
}


def _write_split(root: Path, splits: dict) -> Path:
    directory = root / PETS.directory
    (directory / PETS.image_dir).mkdir(parents=True, exist_ok=True)
    path = directory / PETS.split_file
    path.write_text(json.dumps(splits))
    return path


def _with(key: str, index: int, entry: list) -> dict:
    splits = json.loads(json.dumps(GOOD))
    splits[key][index] = entry
    return splits


def test_a_valid_split_file_loads_inside_the_dataset(tmp_path):
    _write_split(tmp_path, GOOD)
    data = datasets.load_dataset("oxford_pets", tmp_path)
    images = tmp_path / PETS.directory / PETS.image_dir
    assert data.classnames == ["cat", "dog", "bird"]
    assert data.train == [(str(images / "cat_1.jpg"), 0), (str(images / "dog_1.jpg"), 1), (str(images / "bird_1.jpg"), 2)]
    assert all(type(label) is int for _, label in data.train + data.val + data.test)


def test_an_image_folder_that_is_a_symlink_still_loads(tmp_path):
    """Paths are checked after normalisation, not after following links: an image folder
    linked to another disk is a normal layout."""
    elsewhere = tmp_path / "other-disk" / "pets-images"
    elsewhere.mkdir(parents=True)
    directory = tmp_path / "root" / PETS.directory
    directory.mkdir(parents=True)
    (directory / PETS.image_dir).symlink_to(elsewhere, target_is_directory=True)
    (directory / PETS.split_file).write_text(json.dumps(GOOD))
    assert len(datasets.load_dataset("oxford_pets", tmp_path / "root").train) == 3


@pytest.mark.parametrize(
    "key, index, entry, message",
    [
        ("train", 1, ["dog_1.jpg", "1", "dog"], "train[1]: label must be an integer, got '1'"),
        ("train", 1, ["dog_1.jpg", 1.7, "dog"], "train[1]: label must be an integer, got 1.7"),
        ("test", 0, ["dog_2.jpg", 1.0, "dog"], "test[0]: label must be an integer, got 1.0"),
        ("train", 1, ["dog_1.jpg", True, "dog"], "train[1]: label must be an integer, got True"),
        ("val", 0, ["cat_2.jpg", False, "cat"], "val[0]: label must be an integer, got False"),
        ("val", 0, ["cat_2.jpg", None, "cat"], "val[0]: label must be an integer, got None"),
        ("train", 0, ["cat_1.jpg", -1, "cat"], "train[0]: label must be >= 0, got -1"),
        ("test", 1, ["bird_2.jpg", 7, "bird"], "test[1]: label 7 is out of range: the file names 4 classes, so labels must be 0..3"),
        ("train", 2, ["../../etc/passwd", 2, "bird"], "train[2]: image path '../../etc/passwd' leaves the dataset directory"),
        ("test", 0, ["/etc/passwd", 1, "dog"], "test[0]: image path '/etc/passwd' leaves the dataset directory"),
        ("train", 0, ["images/../../../x.jpg", 0, "cat"], "train[0]: image path 'images/../../../x.jpg' leaves the dataset directory"),
        ("train", 0, [7, 0, "cat"], "train[0]: image path must be a non-empty string, got 7"),
        ("train", 0, ["cat_1.jpg", 0], "train[0]: expected [image path, label, class name], got ['cat_1.jpg', 0]"),
        ("train", 0, ["cat_1.jpg", 0, 3], "train[0]: class name must be a string, got 3"),
        ("test", 1, ["bird_2.jpg", 2, "crow"], "test[1]: label 2 is named 'crow' here but 'bird' at train[2]"),
    ],
)
def test_a_bad_split_entry_names_the_file_and_the_entry(tmp_path, key, index, entry, message):
    path = _write_split(tmp_path, _with(key, index, entry))
    with pytest.raises(ValueError, match=re.escape(f"split file {path}, {message}")):
        datasets.load_dataset("oxford_pets", tmp_path)


def test_a_split_that_is_not_a_list_is_refused(tmp_path):
    path = _write_split(tmp_path, {**GOOD, "val": {"cat_2.jpg": 0}})
    with pytest.raises(ValueError, match=re.escape(f"split file {path}: 'val' must be a list")):
        datasets.load_dataset("oxford_pets", tmp_path)


def test_aircraft_listings_are_checked_line_by_line(tmp_path):
    directory = tmp_path / "fgvc_aircraft"
    (directory / "images").mkdir(parents=True)
    (directory / "variants.txt").write_text("707-320\nA300B4\n")
    for key in ("train", "val", "test"):
        (directory / f"images_variant_{key}.txt").write_text("0001 707-320\n0002 A300B4\n")
    data = datasets.load_dataset("fgvc_aircraft", tmp_path)
    assert data.train == [(str(directory / "images" / "0001.jpg"), 0), (str(directory / "images" / "0002.jpg"), 1)]
    listing = directory / "images_variant_val.txt"
    listing.write_text("0001 707-320\n\n../../../etc/passwd A300B4\n")
    with pytest.raises(ValueError, match=re.escape(f"split file {listing}, line 3: image path '../../../etc/passwd.jpg' leaves the dataset")):
        datasets.load_dataset("fgvc_aircraft", tmp_path)
    listing.write_text("0001 747-400\n")
    with pytest.raises(ValueError, match=re.escape(f"split file {listing}, line 1: variant '747-400' is not in {directory / 'variants.txt'}")):
        datasets.load_dataset("fgvc_aircraft", tmp_path)


def test_invalid_utf8_in_a_split_file_or_listing_names_file_line_and_column(tmp_path):
    """Before: a UnicodeDecodeError naming neither the file nor the line."""
    path = _write_split(tmp_path, GOOD)
    text = json.dumps(GOOD, indent=1).encode()
    path.write_bytes(text.replace(b'"dog_1.jpg"', b'"d\xf6g_1.jpg"'))
    bad = text.index(b'"dog_1.jpg"') + 2  # the o, now 0xf6
    line, column = text[:bad].count(b"\n") + 1, bad - text.rfind(b"\n", 0, bad)
    with pytest.raises(ValueError, match=re.escape(f"{path}:{line}: invalid UTF-8 (byte 0xf6 at column {column})")):
        datasets.load_dataset("oxford_pets", tmp_path)
    directory = tmp_path / "fgvc_aircraft"
    (directory / "images").mkdir(parents=True)
    (directory / "variants.txt").write_bytes(b"707-320\nA300\xb4\n")
    with pytest.raises(ValueError, match=re.escape(f"{directory / 'variants.txt'}:2: invalid UTF-8 (byte 0xb4 at column 5)")):
        datasets.load_dataset("fgvc_aircraft", tmp_path)


@pytest.mark.parametrize("data, found", [
    (np.random.RandomState(0).rand(6, 3072), "a float64 array of shape [6, 3072]"),  # [0, 1] floats used to become black images
    (np.full((6, 3072), 256, dtype=np.int64), "a int64 array of shape [6, 3072]"),  # 256 used to wrap to 0
    (np.zeros((6, 3, 32, 32), dtype=np.uint8), "a uint8 array of shape [6, 3, 32, 32]"),
])
def test_cifar_data_that_is_not_uint8_pixels_is_refused_naming_the_file(tmp_path, data, found):
    payloads = _cifar_pickles()
    payloads["train"]["data"] = data
    directory = _write(tmp_path / "cifar-100-python", payloads)
    with pytest.raises(ValueError, match=re.escape(f"{directory / 'train'}: 'data' is {found}; CIFAR-100 images are a uint8 array [N, 3072]")):
        load_cifar100(tmp_path, "train")
    assert load_cifar100(tmp_path, "test").images.dtype == torch.uint8


# ---------------------------------------------------------------------------------------------
# PEFT adapters: local directories only.
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    """Every socket connection attempt is recorded and refused; HF_HUB_OFFLINE is set as well."""
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"test: network access to {address} refused")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


@pytest.fixture
def saved_adapter(tmp_path, tiny_gpt2_dir) -> Path:
    """A LoRA adapter of the tiny GPT-2 saved by PEFT, with B != 0 so that loading it shows."""
    model = add_lora(load_causal_lm(tiny_gpt2_dir), r=4, alpha=8, dropout=0.1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.uniform_(-0.1, 0.1)
    model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


@pytest.mark.parametrize("load, flag", [(load_lora, "--peft-path"), (merge_lora, "--teacher-peft-path")])
def test_an_adapter_folder_without_weights_is_an_error_not_a_hub_lookup(tmp_path, monkeypatch, no_network, saved_adapter, tiny_gpt2_dir, load, flag):
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    (config_only / "adapter_config.json").write_bytes((saved_adapter / "adapter_config.json").read_bytes())
    monkeypatch.chdir(tmp_path)  # relative, as on a command line: PEFT would take it for a repo id
    model = load_causal_lm(tiny_gpt2_dir)
    with pytest.raises(FileNotFoundError, match=re.escape(f"{flag} config-only: the adapter has no weights (neither adapter_model.safetensors nor adapter_model.bin in {config_only})")):
        load(model, "config-only")
    with pytest.raises(FileNotFoundError, match=re.escape(f"{flag} missing-adapter: no such directory ({tmp_path / 'missing-adapter'})")):
        load(model, "missing-adapter")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{flag} empty: not a PEFT adapter directory (no adapter_config.json")):
        load(model, "empty")
    assert no_network == []


def test_a_saved_adapter_loads_from_a_relative_path_offline(tmp_path, monkeypatch, no_network, saved_adapter, tiny_gpt2_dir):
    from peft import PeftModel

    calls = []
    original = PeftModel.from_pretrained.__func__

    def spy(cls, model, model_id, *args, **kwargs):
        calls.append((model_id, kwargs))
        return original(cls, model, model_id, *args, **kwargs)

    monkeypatch.setattr(PeftModel, "from_pretrained", classmethod(spy))
    monkeypatch.chdir(tmp_path)
    saved = load_file(saved_adapter / "adapter_model.safetensors")

    student = load_lora(load_causal_lm(tiny_gpt2_dir), "adapter")
    loaded = {name.replace(".default", ""): p for name, p in student.named_parameters() if "lora_" in name}
    assert loaded.keys() == saved.keys() and all(p.requires_grad for p in loaded.values())
    for name, tensor in saved.items():
        torch.testing.assert_close(loaded[name].detach(), tensor)

    base = load_causal_lm(tiny_gpt2_dir)
    original_weights = {k: v.clone() for k, v in base.state_dict().items()}
    merged = merge_lora(base, "adapter")
    changed = [k for k, v in merged.state_dict().items() if not torch.equal(v, original_weights[k])]
    assert changed and all(k.endswith("c_attn.weight") for k in changed)

    assert [model_id for model_id, _ in calls] == [str(saved_adapter)] * 2  # absolute, never the bare "adapter"
    assert all(kwargs["local_files_only"] is True for _, kwargs in calls)
    assert [kwargs["is_trainable"] for _, kwargs in calls] == [True, False]
    assert no_network == []


# ---------------------------------------------------------------------------------------------
# Model folders: weights of another architecture, no tokenizer files.
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def foreign_weights_dir(tmp_path, tiny_llama_dir, tiny_gpt2_dir) -> Path:
    """A Llama config and tokenizer over a GPT-2's model.safetensors: transformers loads it as a
    randomly initialised Llama (it only logs the missing and unexpected keys)."""
    import shutil

    folder = tmp_path / "llama-config-gpt2-weights"
    shutil.copytree(tiny_llama_dir, folder)
    shutil.copy(tiny_gpt2_dir / "model.safetensors", folder / "model.safetensors")
    return folder


def test_weights_of_another_architecture_are_refused_naming_path_and_keys(foreign_weights_dir, tiny_gpt2_dir, tmp_path):
    from distillation_llm import finetune

    message = rf"--model-path {foreign_weights_dir}: its weights do not fit the LlamaForCausalLM its config.json describes: \d+ missing \(e.g. lm_head.weight, model.embed_tokens.weight"
    with pytest.raises(ValueError, match=message + r".*the checkpoint holds other weights, e.g. transformer\."):
        load_causal_lm(foreign_weights_dir)
    data = tmp_path / "data"
    from conftest import write_instruction_jsonl

    from tools import process_data_dolly

    write_instruction_jsonl(data / "raw.jsonl", 24)
    process_data_dolly.main(["--data-dir", str(data), "--processed-data-dir", str(data / "processed"), "--model-path", str(tiny_gpt2_dir),
                             "--max-prompt-length", "64", "--max-length", "96", "--dev-num", "4"])
    common = ["--data-dir", str(data / "processed"), "--do-train", "--batch-size", "4", "--total-iters", "1"]
    with pytest.raises(ValueError, match=message):  # as the student
        finetune.main(["--model-path", str(foreign_weights_dir), "--save", str(tmp_path / "student"), "--type", "sft", *common])
    with pytest.raises(ValueError, match=message.replace("--model-path", "--teacher-model-path")):  # as the teacher
        finetune.main(["--model-path", str(tiny_gpt2_dir), "--teacher-model-path", str(foreign_weights_dir), "--save", str(tmp_path / "teacher"),
                       "--type", "kd", *common])
    assert load_causal_lm(tiny_gpt2_dir).get_output_embeddings() is not None  # a genuine folder (tied head) loads


def test_a_checkpoint_without_tokenizer_files_is_refused_naming_them(tmp_path, tiny_gpt2_dir):
    """transformers 5 builds an empty tokenizer from config.json alone (evaluation then failed on
    'prompt 0 is empty'; processing wrote empty prompts)."""
    import shutil

    from distillation_llm.models import load_tokenizer
    from tools._common import ProcessingError
    from tools._common import load_tokenizer as processing_tokenizer

    folder = tmp_path / "no-tokenizer"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_gpt2_dir / name, folder / name)
    message = rf"--model-path {folder}: no tokenizer files \(none of tokenizer.json, vocab.json, vocab.txt, tokenizer.model"
    with pytest.raises(FileNotFoundError, match=message):
        load_tokenizer(folder)
    with pytest.raises(ProcessingError, match=message):
        processing_tokenizer(folder)
    assert len(load_tokenizer(tiny_gpt2_dir)) > 100
