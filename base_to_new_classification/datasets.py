"""The eleven CoOp base-to-new datasets, read from the CoOp/PromptKD directory layout.

Every dataset lives in `<root>/<directory>/` with its images under `<image_dir>/` and a split file
`split_zhou_<Name>.json` holding `train`, `val` and `test` lists of `[relative path, label,
classname]`. FGVC-Aircraft and ImageNet have no such file in CoOp; when it is absent they are read
from their native layouts as CoOp does (`variants.txt` + `images_variant_<split>.txt`;
`classnames.txt` + `images/{train,val}/<wnid>/`, val serving as test).

Base-to-new: the classes are sorted by label; the first ceil(C/2) are base, the rest new.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from base_to_new_classification.clip_prompts import num_base_classes

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".JPEG")


@dataclass(frozen=True)
class DatasetSpec:
    directory: str
    image_dir: str
    split_file: str


DATASETS: dict[str, DatasetSpec] = {
    "caltech101": DatasetSpec("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"),
    "oxford_pets": DatasetSpec("oxford_pets", "images", "split_zhou_OxfordPets.json"),
    "stanford_cars": DatasetSpec("stanford_cars", "", "split_zhou_StanfordCars.json"),
    "oxford_flowers": DatasetSpec("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
    "food101": DatasetSpec("food-101", "images", "split_zhou_Food101.json"),
    "fgvc_aircraft": DatasetSpec("fgvc_aircraft", "images", "split_zhou_FGVCAircraft.json"),
    "sun397": DatasetSpec("sun397", "SUN397", "split_zhou_SUN397.json"),
    "dtd": DatasetSpec("dtd", "images", "split_zhou_DescribableTextures.json"),
    "eurosat": DatasetSpec("eurosat", "2750", "split_zhou_EuroSAT.json"),
    "ucf101": DatasetSpec("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
    "imagenet": DatasetSpec("imagenet", "images", "split_zhou_ImageNet.json"),
}

Item = tuple[str, int]  # (absolute image path, label)


@dataclass
class BaseToNewData:
    name: str
    classnames: list[str]
    train: list[Item]
    val: list[Item]
    test: list[Item]

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def num_base(self) -> int:
        return num_base_classes(self.num_classes)

    def base(self, items: list[Item]) -> list[Item]:
        return [item for item in items if item[1] < self.num_base]

    def new(self, items: list[Item]) -> list[Item]:
        return [item for item in items if item[1] >= self.num_base]


def spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset '{name}'; valid names: {', '.join(DATASETS)}")
    return DATASETS[name]


def _classnames(items_with_names: list[tuple[str, int, str]], where: Path) -> list[str]:
    names: dict[int, str] = {}
    for _, label, classname in items_with_names:
        if names.setdefault(label, classname) != classname:
            raise ValueError(f"{where}: label {label} is named both '{names[label]}' and '{classname}'")
    if sorted(names) != list(range(len(names))):
        raise ValueError(f"{where}: labels must be 0..C-1, found {sorted(names)[:10]}...")
    return [names[label] for label in range(len(names))]


def _read_split_file(path: Path, image_dir: Path) -> tuple[list[str], dict[str, list[Item]]]:
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"split file {path}: invalid JSON at line {error.lineno}: {error.msg}") from None
    missing = [key for key in ("train", "val", "test") if key not in raw]
    if missing:
        raise ValueError(f"split file {path}: missing list(s) {missing} (expected train, val, test)")
    rows = [(str(p), int(label), str(name)) for key in ("train", "val", "test") for p, label, name in raw[key]]
    classnames = _classnames(rows, path)
    splits = {key: [(str(image_dir / p), int(label)) for p, label, _ in raw[key]] for key in ("train", "val", "test")}
    return classnames, splits


def _read_aircraft(directory: Path, image_dir: Path) -> tuple[list[str], dict[str, list[Item]]]:
    variants = directory / "variants.txt"
    classnames = [line.strip() for line in variants.read_text().splitlines() if line.strip()]
    label_of = {name: label for label, name in enumerate(classnames)}
    splits = {}
    for key in ("train", "val", "test"):
        items = []
        for line in (directory / f"images_variant_{key}.txt").read_text().splitlines():
            if line.strip():
                image, variant = line.strip().split(" ", 1)
                items.append((str(image_dir / f"{image}.jpg"), label_of[variant]))
        splits[key] = items
    return classnames, splits


def _read_imagenet(directory: Path, image_dir: Path) -> tuple[list[str], dict[str, list[Item]]]:
    folders, classnames = [], []
    for line in (directory / "classnames.txt").read_text().splitlines():
        if line.strip():
            folder, name = line.strip().split(" ", 1)
            folders.append(folder)
            classnames.append(name)

    def listing(split: str) -> list[Item]:
        return [
            (str(path), label)
            for label, folder in enumerate(folders)
            for path in sorted((image_dir / split / folder).iterdir())
            if path.suffix in IMAGE_SUFFIXES
        ]

    test = listing("val")
    return classnames, {"train": listing("train"), "val": test, "test": test}


def load_dataset(name: str, root: str | Path) -> BaseToNewData:
    """Read dataset `name` under `root`; errors name the missing file and the valid dataset names."""
    entry = spec(name)
    directory = Path(root) / entry.directory
    image_dir = directory / entry.image_dir if entry.image_dir else directory
    split_path = directory / entry.split_file
    if split_path.is_file():
        classnames, splits = _read_split_file(split_path, image_dir)
    elif name == "fgvc_aircraft" and (directory / "variants.txt").is_file():
        classnames, splits = _read_aircraft(directory, image_dir)
    elif name == "imagenet" and (directory / "classnames.txt").is_file():
        classnames, splits = _read_imagenet(directory, image_dir)
    else:
        extra = {"fgvc_aircraft": f" (or {directory / 'variants.txt'})", "imagenet": f" (or {directory / 'classnames.txt'})"}
        raise FileNotFoundError(f"dataset '{name}': split file {split_path} not found{extra.get(name, '')}; see the README for the layout")
    if not splits["train"]:
        raise ValueError(f"dataset '{name}' under {directory}: the train split is empty")
    return BaseToNewData(name, classnames, splits["train"], splits["val"], splits["test"])


def few_shot(items: list[Item], shots: int, seed: int) -> list[Item]:
    """At most `shots` examples per class, drawn with `seed` (CoOp's few-shot sampling)."""
    if shots <= 0:
        return list(items)
    by_label: dict[int, list[Item]] = {}
    for item in items:
        by_label.setdefault(item[1], []).append(item)
    rng = np.random.default_rng(seed)
    chosen = []
    for label in sorted(by_label):
        group = by_label[label]
        picks = rng.permutation(len(group))[:shots]
        chosen.extend(group[i] for i in sorted(picks))
    return chosen


class ImageDataset(torch.utils.data.Dataset):
    """(pixel_values [3, S, S], label) pairs. With a random `transform`, example i of epoch e is
    augmented with a generator seeded by (seed, epoch, i): resuming reproduces the same crops."""

    def __init__(self, items: list[Item], transform, seed: int = 0):
        self.items, self.transform, self.seed, self.epoch = items, transform, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[index]
        with Image.open(path) as image:
            pixels = self.transform(image, np.random.default_rng([self.seed, self.epoch, index]))
        return pixels, label
