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
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from abkd.engine import read_text
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


def _image_path(directory: Path, image_dir: Path, relative: object, where: str) -> str:
    """`image_dir / relative`, refused unless it stays inside the dataset directory.

    Checked on the normalised path, not `resolve()`d: a dataset whose image folder is a symlink to
    another disk is a normal layout, while `..` or an absolute path in a split file is not.
    """
    if not isinstance(relative, str) or not relative:
        raise ValueError(f"{where}: image path must be a non-empty string, got {relative!r}")
    path = Path(os.path.normpath(image_dir / relative))
    if Path(relative).is_absolute() or not path.is_relative_to(os.path.normpath(directory)):
        raise ValueError(f"{where}: image path {relative!r} leaves the dataset directory {directory}")
    return str(path)


def _label(value: object, where: str) -> int:
    # bool is an int subclass and json reads 1.0 as a float: both are refused, never rounded.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: label must be an integer, got {value!r}")
    if value < 0:
        raise ValueError(f"{where}: label must be >= 0, got {value}")
    return value


def _read_split_file(path: Path, directory: Path, image_dir: Path) -> tuple[list[str], dict[str, list[Item]]]:
    """Every entry is checked: `[relative image path inside the dataset, integer label, class name]`,
    the labels exactly 0..C-1, one name per label. Errors name the file and the entry (`train[3]`)."""
    try:
        raw = json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise ValueError(f"split file {path}: invalid JSON at line {error.lineno}: {error.msg}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"split file {path}: expected an object with train, val and test lists, got {type(raw).__name__}")
    missing = [key for key in ("train", "val", "test") if key not in raw]
    if missing:
        raise ValueError(f"split file {path}: missing list(s) {missing} (expected train, val, test)")
    names: dict[int, str] = {}
    where_label: dict[int, str] = {}
    splits: dict[str, list[Item]] = {}
    for key in ("train", "val", "test"):
        if not isinstance(raw[key], list):
            raise ValueError(f"split file {path}: '{key}' must be a list of [image path, label, class name], got {type(raw[key]).__name__}")
        items = []
        for index, entry in enumerate(raw[key]):
            where = f"split file {path}, {key}[{index}]"
            if not isinstance(entry, list) or len(entry) != 3:
                raise ValueError(f"{where}: expected [image path, label, class name], got {entry!r}")
            relative, label, classname = entry
            label = _label(label, where)
            if not isinstance(classname, str):
                raise ValueError(f"{where}: class name must be a string, got {classname!r}")
            if names.setdefault(label, classname) != classname:
                raise ValueError(f"{where}: label {label} is named '{classname}' here but '{names[label]}' at {where_label[label]}")
            where_label.setdefault(label, f"{key}[{index}]")
            items.append((_image_path(directory, image_dir, relative, where), label))
        splits[key] = items
    for label in sorted(names, reverse=True):
        if label >= len(names):
            raise ValueError(
                f"split file {path}, {where_label[label]}: label {label} is out of range: the file names {len(names)} classes, "
                f"so labels must be 0..{len(names) - 1} with every class present"
            )
    return [names[label] for label in range(len(names))], splits


def _read_aircraft(directory: Path, image_dir: Path) -> tuple[list[str], dict[str, list[Item]]]:
    variants = directory / "variants.txt"
    classnames = [line.strip() for line in read_text(variants).splitlines() if line.strip()]
    label_of = {name: label for label, name in enumerate(classnames)}
    splits = {}
    for key in ("train", "val", "test"):
        listing = directory / f"images_variant_{key}.txt"
        items = []
        for number, line in enumerate(read_text(listing).splitlines(), start=1):
            if line.strip():
                where = f"split file {listing}, line {number}"
                image, _, variant = line.strip().partition(" ")
                if variant not in label_of:
                    raise ValueError(f"{where}: variant {variant!r} is not in {variants}")
                items.append((_image_path(directory, image_dir, f"{image}.jpg", where), label_of[variant]))
        splits[key] = items
    return classnames, splits


def _read_imagenet(directory: Path, image_dir: Path) -> tuple[list[str], dict[str, list[Item]]]:
    folders, classnames = [], []
    for line in read_text(directory / "classnames.txt").splitlines():
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
        classnames, splits = _read_split_file(split_path, directory, image_dir)
    elif name == "fgvc_aircraft" and (directory / "variants.txt").is_file():
        classnames, splits = _read_aircraft(directory, image_dir)
    elif name == "imagenet" and (directory / "classnames.txt").is_file():
        classnames, splits = _read_imagenet(directory, image_dir)
    else:
        extra = {"fgvc_aircraft": f" (or {directory / 'variants.txt'})", "imagenet": f" (or {directory / 'classnames.txt'})"}
        raise FileNotFoundError(f"dataset '{name}': split file {split_path} not found{extra.get(name, '')}; see base_to_new_classification/README.md, 'Data layout'")
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
