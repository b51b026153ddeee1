"""CLIP image preprocessing with PIL and numpy only (no torchvision).

Evaluation: resize the shorter side to `size` (bicubic), centre crop `size` x `size`, scale to
[0, 1], normalise with CLIP's mean and std. Training (CoOp/PromptKD): random resized crop
(scale 0.08-1, aspect 3/4-4/3, bicubic) and a horizontal flip with probability 1/2, then the same
normalisation.

The random choices come from an explicit `numpy.random.Generator`, so a training example's crop
is a pure function of (seed, epoch, index) and a resumed run sees exactly the same pixels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_tensor(image: Image.Image, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """RGB PIL image -> normalised float32 tensor [3, H, W]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    array = (array - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def resize_shorter(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    if min(width, height) == size:
        return image
    if width <= height:
        new = (size, max(1, round(height * size / width)))
    else:
        new = (max(1, round(width * size / height)), size)
    return image.resize(new, Image.Resampling.BICUBIC)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    left, top = round((width - size) / 2), round((height - size) / 2)
    return image.crop((left, top, left + size, top + size))


def random_resized_box(
    width: int, height: int, rng: np.random.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
    """(left, top, crop_width, crop_height) of a random crop, as torchvision's RandomResizedCrop."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    # Fallback: the whole image, centre-cropped to the allowed aspect range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


class EvalTransform:
    """Resize (shorter side) + centre crop + normalise -> [3, size, size]."""

    def __init__(self, size: int, mean=CLIP_MEAN, std=CLIP_STD):
        self.size, self.mean, self.std = size, mean, std

    def __call__(self, image: Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        return to_tensor(center_crop(resize_shorter(image.convert("RGB"), self.size), self.size), self.mean, self.std)


class TrainTransform:
    """Random resized crop + horizontal flip + normalise -> [3, size, size]."""

    def __init__(self, size: int, mean=CLIP_MEAN, std=CLIP_STD, scale=(0.08, 1.0)):
        self.size, self.mean, self.std, self.scale = size, mean, std, scale

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        image = image.convert("RGB")
        left, top, w, h = random_resized_box(*image.size, rng, scale=self.scale)
        image = image.resize((self.size, self.size), Image.Resampling.BICUBIC, box=(left, top, left + w, top + h))
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_tensor(image, self.mean, self.std)
