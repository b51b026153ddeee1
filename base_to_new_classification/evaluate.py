"""Base-to-new accuracy (CoOp protocol) and the harmonic mean.

Base accuracy: test images of the base classes, classified among the base classes only. New
accuracy: test images of the new classes, classified among the new classes only. HM =
2 * base * new / (base + new), and 0 when both are 0. Accuracies are percentages.
"""

from __future__ import annotations

import torch
from torch import Tensor

from abkd import engine as E
from abkd.sampling import batches, shard_indices


def harmonic_mean(base: float, new: float) -> float:
    return 0.0 if base + new == 0 else 2.0 * base * new / (base + new)


def correct_counts(logits: Tensor, labels: Tensor, num_base: int) -> Tensor:
    """[base correct, base total, new correct, new total] for logits [N, C] over all classes."""
    labels = labels.to(logits.device)
    is_base = labels < num_base
    base_pred = logits[:, :num_base].argmax(dim=-1)
    new_pred = logits[:, num_base:].argmax(dim=-1) + num_base if logits.shape[1] > num_base else torch.full_like(labels, -1)
    return torch.stack([
        ((base_pred == labels) & is_base).sum(), is_base.sum(),
        ((new_pred == labels) & ~is_base).sum(), (~is_base).sum(),
    ]).double()


def accuracies(counts: Tensor) -> dict[str, float]:
    base = 100.0 * counts[0].item() / max(counts[1].item(), 1.0)
    new = 100.0 * counts[2].item() / max(counts[3].item(), 1.0)
    return {"base_acc": base, "new_acc": new, "hm": harmonic_mean(base, new),
            "num_base_images": int(counts[1].item()), "num_new_images": int(counts[3].item())}


def base_to_new_accuracy(logits: Tensor, labels: Tensor, num_base: int) -> dict[str, float]:
    """Base/new/HM accuracy of logits [N, C] (all classes) for labels [N]."""
    return accuracies(correct_counts(logits, labels, num_base))


@torch.no_grad()
def evaluate(logits_fn, dataset, num_base: int, batch_size: int, device: torch.device) -> dict[str, float]:
    """Base/new/HM of `logits_fn(pixel_values [B, 3, S, S]) -> [B, C]` on `dataset`, sharded over ranks."""
    counts = torch.zeros(4, dtype=torch.float64, device=device)
    for index in batches(shard_indices(len(dataset), E.world_size(), E.rank()), batch_size):
        pixels, labels = zip(*(dataset[i] for i in index))
        logits = logits_fn(torch.stack(pixels).to(device))
        counts += correct_counts(logits, torch.tensor(labels), num_base).to(device)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(counts)
    return accuracies(counts)
