"""CIFAR-100 from the official python pickles, decoded once into uint8 tensors and augmented on
whole batches in torch (random 32x32 crop of the 4-pixel zero-padded image, horizontal flip,
per-channel normalisation), as in the CRD/RepDistiller recipe but without per-image PIL work.

Layout read (https://www.cs.toronto.edu/~kriz/cifar.html): `<data-folder>/cifar-100-python/`
(or `<data-folder>` itself) holding the pickles `train`, `test` and `meta`, or the unextracted
`<data-folder>/cifar-100-python.tar.gz`. `write_synthetic_cifar` writes a tiny dataset in the same
layout for tests and CPU smoke runs (`python -m standard_classification.data --synthetic ...`);
`write_superclass_cifar` (`--synthetic --superclasses S`) a harder one whose classes come in
superclasses, for CPU-scale distillation studies (benchmarks/study_cifar_methods.py).
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from abkd.sampling import GlobalBatchSampler, batches, shard_indices

# The per-channel constants of RepDistiller's and ABKD's transforms.Normalize (dataset/cifar100.py).
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
DIRECTORY = "cifar-100-python"
ARCHIVE = "cifar-100-python.tar.gz"
URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"


@dataclass
class CifarSplit:
    """images: uint8 [N, 3, 32, 32]; labels: int64 [N] (fine labels); classes: fine label names."""

    images: Tensor
    labels: Tensor
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def _missing(data_folder: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"CIFAR-100 not found under --data-folder {data_folder}: expected {data_folder / DIRECTORY}/{{train,test,meta}} "
        f"or {data_folder / ARCHIVE}. Download it with `bash scripts/download_cifar100.sh {data_folder}` "
        f"(or fetch {URL} by hand into that folder), or write a tiny synthetic dataset with "
        f"`python -m standard_classification.data --synthetic --data-folder {data_folder}`."
    )


# The only globals in the official pickles (written by Python 2) and in `write_synthetic_cifar`'s
# (Python 3, protocol 2, where numpy stores an array's bytes through `_codecs.encode`): numpy's
# array reconstruction. Dicts, lists, strings and integers need no global at all.
_CIFAR_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
})


class UnsafePickleError(pickle.UnpicklingError):
    """A CIFAR pickle asked for a global outside `_CIFAR_GLOBALS`; nothing of it was executed."""


class _CifarUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` that resolves only the globals of `_CIFAR_GLOBALS`: a plain
    `pickle.loads` would call whatever a tampered file names (e.g. `os.system`)."""

    def __init__(self, data: bytes, source: str):
        super().__init__(io.BytesIO(data), encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) not in _CIFAR_GLOBALS:
            raise UnsafePickleError(
                f"{self.source}: refused to load global {module}.{name}; CIFAR-100 python pickles hold only dicts, lists, "
                "strings, integers and numpy arrays, so this file is not one (or has been tampered with)"
            )
        if module == "numpy.core.multiarray" and hasattr(np, "_core"):
            module = "numpy._core.multiarray"  # numpy >= 2 moved it; avoids the numpy.core deprecation shim
        return super().find_class(module, name)


def _unpickle(data: bytes, source: str) -> dict:
    return _CifarUnpickler(data, source).load()


def _read_pickles(data_folder: Path, names: tuple[str, ...]) -> dict[str, tuple[dict, str]]:
    """The named pickles from the extracted directory or straight from the archive."""
    for directory in (data_folder / DIRECTORY, data_folder):
        if all((directory / name).is_file() for name in names):
            return {name: (_unpickle((directory / name).read_bytes(), str(directory / name)), str(directory / name)) for name in names}
    archive = data_folder / ARCHIVE
    if archive.is_file():
        with tarfile.open(archive, "r:gz") as tar:
            members = {member.name: member for member in tar.getmembers()}
            found = {}
            for name in names:
                member = members.get(f"{DIRECTORY}/{name}")
                if member is None:
                    raise ValueError(f"{archive} has no {DIRECTORY}/{name}; is it the CIFAR-100 python archive?")
                found[name] = (_unpickle(tar.extractfile(member).read(), f"{archive}:{member.name}"), f"{archive}:{member.name}")
            return found
    raise _missing(data_folder)


def load_cifar100(data_folder: str | Path, split: str) -> CifarSplit:
    """Decode the `train` or `test` split once: images uint8 [N, 3, 32, 32], fine labels int64 [N]."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got '{split}'")
    data_folder = Path(data_folder)
    pickles = _read_pickles(data_folder, (split, "meta"))
    (batch, source), (meta, _) = pickles[split], pickles["meta"]
    try:
        data, labels, classes = batch["data"], batch["fine_labels"], list(meta["fine_label_names"])
    except KeyError as error:
        raise ValueError(f"{data_folder}: the {split}/meta pickles lack key {error}; is this CIFAR-100 (python version)?") from None
    # Casting would wrap or truncate silently (a float image in [0, 1] becomes black, 256 becomes 0).
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        found = f"a {data.dtype} array of shape {list(data.shape)}" if isinstance(data, np.ndarray) else f"a {type(data).__name__}"
        raise ValueError(f"{source}: 'data' is {found}; CIFAR-100 images are a uint8 array [N, 3072] (pixel values 0-255, as the official pickles hold them)")
    images = torch.from_numpy(np.ascontiguousarray(data.reshape(-1, 3, 32, 32)))
    labels = torch.as_tensor(labels, dtype=torch.int64)
    if len(labels) != len(images) or (len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < len(classes)):
        raise ValueError(f"{data_folder}/{split}: {len(images)} images, {len(labels)} labels, {len(classes)} classes do not agree")
    return CifarSplit(images, labels, classes)


# ---------------------------------------------------------------------------------------------
# Batches and augmentation.
# ---------------------------------------------------------------------------------------------


def normalize(images: Tensor) -> Tensor:
    """uint8 [B, 3, H, W] -> float32, scaled to [0, 1] and standardised per channel."""
    mean = images.new_tensor(CIFAR100_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = images.new_tensor(CIFAR100_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def augment(images: Tensor, generator: torch.Generator, padding: int = 4) -> Tensor:
    """Random crop of the zero-padded image and random horizontal flip, per image, on a batch.

    images: uint8 [B, 3, H, W] on any device; `generator` is a CPU generator, so the draws are
    the same whatever the device.
    """
    batch, _, height, width = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    top = torch.randint(0, 2 * padding + 1, (batch,), generator=generator).to(images.device)
    left = torch.randint(0, 2 * padding + 1, (batch,), generator=generator).to(images.device)
    flip = (torch.rand(batch, generator=generator) < 0.5).to(images.device)
    rows = (top[:, None] + torch.arange(height, device=images.device))[:, None, :, None]
    cols = left[:, None] + torch.arange(width, device=images.device)
    cols = torch.where(flip[:, None], cols.flip(-1), cols)[:, None, None, :]
    index = torch.arange(batch, device=images.device)[:, None, None, None]
    channel = torch.arange(3, device=images.device)[None, :, None, None]
    return padded[index, channel, rows, cols]


class ContrastiveIndices:
    """CRD's memory-bank indices for training images (RepDistiller's CIFAR100InstanceSample, Tian
    et al., ICLR 2020): for image i of class c, one positive and `k` negatives, [k + 1] indices.

    The positive is i itself (mode "exact") or an image of class c drawn uniformly (mode
    "relax"); the negatives are `k` distinct images of the other classes, drawn uniformly (with
    replacement when there are fewer than k of them, as the reference does). labels: int64 [N].
    """

    def __init__(self, labels: Tensor, k: int, mode: str = "exact"):
        if mode not in ("exact", "relax"):
            raise ValueError(f"unknown CRD mode '{mode}'; valid: exact, relax")
        if k < 1:
            raise ValueError(f"--nce-k must be >= 1, got {k}")
        self.k, self.mode = k, mode
        labels = labels.cpu()
        # Images sorted by class: class c occupies order[start[c] : start[c] + count[c]], and its
        # negatives are order with that slice taken out.
        order = torch.argsort(labels, stable=True)
        count = torch.bincount(labels)
        if int(count.max()) == len(labels):
            raise ValueError("CRD needs images of at least two classes (the negatives are the other classes' images)")
        self.tables = {torch.device("cpu"): (labels, order, torch.cumsum(count, 0) - count, count)}

    def _tables(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(labels, order, start, count) on `device`, copied there once."""
        if device not in self.tables:
            self.tables[device] = tuple(table.to(device) for table in self.tables[torch.device("cpu")])
        return self.tables[device]

    def __call__(self, index: Tensor, generator: torch.Generator) -> Tensor:
        """[b, k + 1] indices (positive first) for the images `index` [b], on the generator's device."""
        device = generator.device
        labels, order, start, count = self._tables(device)
        index = index.to(device)
        start, count = start[labels[index]], count[labels[index]]
        others = len(labels) - count  # negatives of each image's class
        if self.mode == "exact":
            positive = index
        else:
            positive = order[start + (torch.rand(len(index), generator=generator, device=device) * count).long()]
        # A uniform k-subset of range(others): the k largest of uniform keys, the positions past
        # `others` excluded; with replacement (k uniform draws) where there are fewer than k.
        keys = torch.rand(len(index), len(labels), generator=generator, device=device)
        keys = keys.masked_fill(torch.arange(len(labels), device=device) >= others[:, None], -1.0)
        k = min(self.k, len(labels))
        slot = keys.topk(k, dim=1).indices
        if k < self.k:
            slot = torch.cat([slot, slot.new_zeros(len(index), self.k - k)], dim=1)
        drawn = (torch.rand(len(index), self.k, generator=generator, device=device) * others[:, None]).long()
        slot = torch.where((others < self.k)[:, None], drawn, slot)
        negatives = order[slot + count[:, None] * (slot >= start[:, None])]  # skip the class's own slice
        return torch.cat([positive[:, None], negatives], dim=1)


def train_batches(split: CifarSplit, sampler: GlobalBatchSampler, device: torch.device,
                  contrast: ContrastiveIndices | None = None) -> Iterator[tuple[Tensor, ...]]:
    """This rank's augmented training micro-batches of the sampler's current epoch (from its
    `skip_steps`): (normalised float images [b, 3, 32, 32], labels [b]) on `device`; with
    `contrast` (CRD) also each image's dataset index [b] and its contrast indices [b, k + 1].

    The augmentation of micro-batch m is drawn from a generator seeded with (seed, epoch, m,
    rank), so a resumed run sees exactly the batches and augmentations of an uninterrupted one;
    the contrast indices from a second generator on `device` seeded from the same numbers.
    """
    first = sampler.skip_steps * sampler.grad_accum
    for micro, index in enumerate(sampler, start=first):
        index = torch.as_tensor(index, dtype=torch.int64)
        seed = ((sampler.seed * 1009 + sampler.epoch) * 100_003 + micro) * 257 + sampler.rank
        generator = torch.Generator().manual_seed(seed)
        images = augment(split.images[index].to(device, non_blocking=True), generator)
        batch = (normalize(images), split.labels[index].to(device, non_blocking=True))
        if contrast is not None:
            # Another stream than the augmentation's (same seed on a CPU device would repeat its draws).
            contrast_generator = torch.Generator(device=device).manual_seed((seed * 2 + 1) % 2**63)
            batch = (*batch, index.to(device), contrast(index, contrast_generator))
        yield batch


def eval_batches(split: CifarSplit, batch_size: int, rank: int, world: int, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """This rank's share (rank, rank + world, ...) of a split, unaugmented, `batch_size` at a time."""
    for index in batches(shard_indices(len(split), world, rank), batch_size):
        index = torch.as_tensor(index, dtype=torch.int64)
        yield normalize(split.images[index].to(device, non_blocking=True)), split.labels[index].to(device, non_blocking=True)


# ---------------------------------------------------------------------------------------------
# A tiny dataset in the official layout.
# ---------------------------------------------------------------------------------------------


def _synthetic_split(rng: np.random.RandomState, templates: np.ndarray, per_class: int, split: str, noise: float, coarse_labels: np.ndarray) -> dict:
    """One split's pickle payload: `per_class` images of each of the classes of `templates`
    [C, 3, 32, 32] (intensities, 1 = full range), in shuffled order, each its class's template
    rolled by up to 3 pixels plus Gaussian pixel noise of std `noise`; coarse_labels: [C]."""
    num_classes = len(templates)
    labels = np.repeat(np.arange(num_classes), per_class)
    rng.shuffle(labels)
    images = []
    for label in labels:
        shift = rng.randint(-3, 4, size=2)
        image = np.roll(templates[label], tuple(shift), axis=(1, 2)) + noise * rng.randn(3, 32, 32)
        images.append(np.clip(image * 255.0, 0, 255).astype(np.uint8))
    data = np.stack(images).reshape(len(labels), 3072) if images else np.zeros((0, 3072), np.uint8)
    return {
        "filenames": [f"synthetic_{split}_{i}.png" for i in range(len(labels))],
        "batch_label": f"synthetic {split}",
        "fine_labels": labels.tolist(),
        "coarse_labels": coarse_labels[labels].tolist(),
        "data": data,
    }


def _write_payloads(data_folder: str | Path, payloads: dict[str, dict]) -> Path:
    """`<data_folder>/cifar-100-python/<name>` for each payload, each written atomically."""
    directory = Path(data_folder) / DIRECTORY
    directory.mkdir(parents=True, exist_ok=True)
    for name, payload in payloads.items():
        temporary = directory / f".{name}.tmp"
        temporary.write_bytes(pickle.dumps(payload, protocol=2))
        os.replace(temporary, directory / name)
    return directory


def write_synthetic_cifar(
    data_folder: str | Path, *, num_classes: int = 10, train_per_class: int = 16, test_per_class: int = 8, seed: int = 0, noise: float = 0.25
) -> Path:
    """Write `<data_folder>/cifar-100-python/{train,test,meta}` with the official pickle keys.

    Each class is a smooth random colour pattern; images are that pattern, randomly shifted by
    up to 3 pixels, with Gaussian pixel noise of std `noise` (1 = the full intensity range), so the classes are learnable but not trivially so by a
    small network in a few epochs. Returns the directory written.
    """
    if not 1 <= num_classes <= 100:
        raise ValueError(f"num_classes must be in [1, 100], got {num_classes}")
    rng = np.random.RandomState(seed)
    coarse = rng.rand(num_classes, 3, 4, 4)
    templates = coarse.repeat(8, axis=2).repeat(8, axis=3)  # [C, 3, 32, 32], 8x8 tiles
    coarse_labels = np.arange(num_classes) // 5
    return _write_payloads(data_folder, {
        "train": _synthetic_split(rng, templates, train_per_class, "train", noise, coarse_labels),
        "test": _synthetic_split(rng, templates, test_per_class, "test", noise, coarse_labels),
        "meta": {"fine_label_names": [f"class_{i}" for i in range(num_classes)], "coarse_label_names": [f"super_{i}" for i in range(20)]},
    })


def superclass_templates(num_classes: int, num_superclasses: int, class_strength: float, seed: int) -> np.ndarray:
    """[C, 3, 32, 32] class templates with a class similarity: class c belongs to superclass
    c // (C / S), and its template is its superclass's smooth colour pattern (uniform in [0, 1]
    on 8x8 tiles) plus `class_strength` times its own zero-mean pattern (uniform in [-1/2, 1/2]
    on finer 4x4 tiles). The classes of a superclass differ only by the weaker patterns, so a
    classifier's confusions, and a teacher's soft labels, concentrate within superclasses."""
    if num_superclasses < 1 or num_classes % num_superclasses:
        raise ValueError(f"{num_classes} classes cannot be split into {num_superclasses} equal superclasses")
    rng = np.random.RandomState(seed)
    shared = rng.rand(num_superclasses, 3, 4, 4).repeat(8, axis=2).repeat(8, axis=3)
    own = (rng.rand(num_classes, 3, 8, 8) - 0.5).repeat(4, axis=2).repeat(4, axis=3)
    return shared[np.arange(num_classes) // (num_classes // num_superclasses)] + class_strength * own


def write_superclass_cifar(
    data_folder: str | Path, *, num_classes: int = 20, num_superclasses: int = 4, train_per_class: int = 80, test_per_class: int = 40,
    seed: int = 0, class_strength: float = 0.3, noise: float = 0.25,
) -> Path:
    """Write a synthetic dataset in the official layout (as `write_synthetic_cifar`) whose
    classes are grouped into `num_superclasses` equal superclasses (`superclass_templates`;
    `coarse_labels` holds each image's superclass), so that the teacher's soft labels carry
    which classes resemble which: a harder set on which distillation can help. Images are the
    template rolled by up to 3 pixels plus Gaussian pixel noise of std `noise`. Returns the
    directory written."""
    if not 1 <= num_classes <= 100:
        raise ValueError(f"num_classes must be in [1, 100], got {num_classes}")
    templates = superclass_templates(num_classes, num_superclasses, class_strength, seed)
    rng = np.random.RandomState(seed + 1)  # the images' draws, apart from the templates'
    coarse_labels = np.arange(num_classes) // (num_classes // num_superclasses)
    return _write_payloads(data_folder, {
        "train": _synthetic_split(rng, templates, train_per_class, "train", noise, coarse_labels),
        "test": _synthetic_split(rng, templates, test_per_class, "test", noise, coarse_labels),
        "meta": {"fine_label_names": [f"class_{i}" for i in range(num_classes)],
                 "coarse_label_names": [f"super_{i}" for i in range(num_superclasses)]},
    })


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a tiny synthetic CIFAR-format dataset, or summarise a CIFAR-100 folder.")
    parser.add_argument("--data-folder", required=True, help="folder holding (or to receive) cifar-100-python/")
    parser.add_argument("--synthetic", action="store_true", help="write a synthetic dataset instead of reading one")
    parser.add_argument("--classes", type=int, default=10, help="synthetic: number of classes (1-100)")
    parser.add_argument("--train-per-class", type=int, default=16, help="synthetic: training images per class")
    parser.add_argument("--test-per-class", type=int, default=8, help="synthetic: test images per class")
    parser.add_argument("--seed", type=int, default=0, help="synthetic: random seed of the patterns and noise")
    parser.add_argument("--noise", type=float, default=0.25, help="synthetic: std of the pixel noise (1 = the full intensity range)")
    parser.add_argument("--superclasses", type=int, default=0,
                        help="synthetic: group the --classes into this many equal superclasses sharing a pattern (write_superclass_cifar; 0: none)")
    parser.add_argument("--class-strength", type=float, default=0.3,
                        help="synthetic with --superclasses: amplitude of each class's own pattern beside its superclass's (1 = the full range)")
    args = parser.parse_args(argv)
    if args.synthetic:
        sizes = dict(num_classes=args.classes, train_per_class=args.train_per_class, test_per_class=args.test_per_class, seed=args.seed, noise=args.noise)
        try:
            if args.superclasses:
                directory = write_superclass_cifar(args.data_folder, num_superclasses=args.superclasses, class_strength=args.class_strength, **sizes)
            else:
                directory = write_synthetic_cifar(args.data_folder, **sizes)
        except ValueError as error:
            parser.error(str(error))
        print(f"wrote a synthetic CIFAR-format dataset to {directory}")
    for split in ("train", "test"):
        data = load_cifar100(args.data_folder, split)
        print(f"{split}: {len(data)} images, {len(data.classes)} classes")


if __name__ == "__main__":
    main()
