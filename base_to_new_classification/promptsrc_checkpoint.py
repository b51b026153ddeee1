"""Read PromptKD's published PromptSRC teachers (Dassl checkpoints) as `TeacherPromptLearner` prompts.

PromptKD (Li et al., CVPR 2024) distils from ViT-L/14 teachers trained by PromptSRC (Khattak et
al., ICCV 2023) and publishes them as Dassl checkpoints, `<Dataset>/VLPromptLearner/model-best.pth.tar`
(base-to-new) or `ImageNet-xd/VLPromptLearner_large/model.pth.tar-20` (cross-dataset). A file is
`{"state_dict", "epoch", "optimizer", "scheduler", "val_result"}`, where `state_dict` is the whole
`CustomCLIP` of PromptSRC's trainer (OpenAI CLIP key names, often float16):

| their key | shape | ours |
|---|---|---|
| `prompt_learner.ctx` | [n_ctx_text, text_width] | `text_ctx` |
| `text_encoder.transformer.resblocks.{i}.VPT_shallow`, i = 1..depth_text-1 | [n_ctx_text, text_width] | `text_deep[i-1]` |
| `image_encoder.VPT` | [n_ctx_vision, vision_width] | `vision_prompts[0]` |
| `image_encoder.transformer.resblocks.{i}.VPT_shallow`, i = 1..depth_vision-1 | [n_ctx_vision, vision_width] | `vision_prompts[i]` |
| `prompt_learner.token_prefix`/`token_suffix` (and `...2`) | [classes, 1 / L-1-n_ctx, text_width] | dropped (rebuilt from --dataset's class names, as PromptKD does); their row count is checked |
| every frozen CLIP weight (`image_encoder.*`, `text_encoder.*`, `prompt_learner.ZS_image_encoder.*`, `logit_scale`) | | dropped; a few are compared with --teacher-model-path |

The prompts are inserted exactly where ours are (clip/model.py `VisionTransformer`,
`ResidualAttentionBlock_IVLP`): vision tokens appended after [CLS, patches] before `ln_pre` and the
last n_ctx replaced in deeper layers; text tokens at positions 1..n_ctx.

Loading is `torch.load(weights_only=True)`. Dassl's scheduler state also pickles its successor
`torch.optim.lr_scheduler.CosineAnnealingLR`, which holds the `torch.optim.SGD` object (and its
`collections.defaultdict` state): those globals, and only those, are read as inert placeholders
(no code from the file runs) and discarded with the optimizer and scheduler fields. Any other
global is refused by name.
"""

from __future__ import annotations

import pickle
import re
from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor

MODEL_DIRS = ("VLPromptLearner", "VLPromptLearner_large")
BEST_FILE = "model-best.pth.tar"
EPOCH_FILE = re.compile(r"model\.pth\.tar-(\d+)")

TEXT_CTX = "prompt_learner.ctx"
VISION_CTX = "image_encoder.VPT"
TEXT_DEEP = "text_encoder.transformer.resblocks.{}.VPT_shallow"
VISION_DEEP = "image_encoder.transformer.resblocks.{}.VPT_shallow"
CLASS_PREFIXES = ("prompt_learner.token_prefix", "prompt_learner.token_prefix2")
CTX_INIT = "a photo of a"  # PromptSRC's CTX_INIT; only recorded, the loaded ctx replaces it


class TeacherCheckpointError(ValueError):
    """A teacher checkpoint that does not fit the CLIP or the dataset; the message names the file."""


def is_promptsrc(checkpoint: object) -> bool:
    return isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict) and TEXT_CTX in checkpoint["state_dict"]


def find_checkpoint(path: Path) -> Path:
    """The checkpoint file under a PromptKD teacher directory.

    `path` is the file itself, a `VLPromptLearner` directory, or the dataset directory above it.
    In a directory, `model-best.pth.tar` (what PromptKD loads for base-to-new) is taken, else the
    highest-numbered `model.pth.tar-<epoch>`.
    """
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"--teacher-ckpt {path}: no such file or directory")
    for name in MODEL_DIRS:
        if (path / name).is_dir():
            path = path / name
            break
    if (path / BEST_FILE).is_file():
        return path / BEST_FILE
    epochs = {int(m.group(1)): p for p in path.iterdir() if (m := EPOCH_FILE.fullmatch(p.name))}
    if not epochs:
        raise FileNotFoundError(
            f"--teacher-ckpt {path}: no {BEST_FILE} or model.pth.tar-<epoch> here (nor in {' or '.join(MODEL_DIRS)}/)"
        )
    return epochs[max(epochs)]


class _Discarded:
    """Stands in for a pickled optimizer or scheduler object: accepts anything, keeps nothing."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _plain_dict(*args):
    """`collections.defaultdict(factory)` read as a dict (the unpickler then fills its items)."""
    return {}


def _placeholder(name: str):
    if name == "collections.defaultdict":
        return _plain_dict
    if name == "builtins.dict":
        return dict
    if name.startswith(("torch.optim.", "dassl.")):
        return _Discarded
    return None


def safe_load(path: Path):
    """`torch.load(path, weights_only=True)`, allowing Dassl's pickled optimizer/scheduler objects
    as placeholders (see the module docstring); anything else unsafe is refused by name."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as error:  # the legacy (non-zip) format cannot be inspected
        raise TeacherCheckpointError(f"--teacher-ckpt {path}: cannot be read with weights_only=True ({error})") from None
    refused = [name for name in names if _placeholder(name) is None]
    if refused:
        raise TeacherCheckpointError(
            f"--teacher-ckpt {path}: refusing to unpickle {', '.join(refused)} (only tensors and Dassl's optimizer/"
            "scheduler objects are accepted). If you trust the file, re-save its weights: "
            "torch.save({'state_dict': torch.load(f, weights_only=False)['state_dict']}, f)"
        )
    with torch.serialization.safe_globals([(_placeholder(name), name) for name in names]):
        return torch.load(path, map_location="cpu", weights_only=True)


def _require(state_dict: dict, key: str, shape: tuple[int, ...], source: Path) -> Tensor:
    if key not in state_dict:
        raise TeacherCheckpointError(f"--teacher-ckpt {source}: missing key '{key}' (expected shape {list(shape)})")
    tensor = state_dict[key]
    if not isinstance(tensor, Tensor):
        raise TeacherCheckpointError(f"--teacher-ckpt {source}: '{key}' is a {type(tensor).__name__}, not a tensor")
    if tuple(tensor.shape) != shape:
        raise TeacherCheckpointError(
            f"--teacher-ckpt {source}: '{key}' has shape {list(tensor.shape)}, expected {list(shape)} for "
            "--teacher-model-path (was the teacher trained on another CLIP backbone?)"
        )
    return tensor


def _deep_prompts(state_dict: dict, template: str, n_ctx: int, width: int, num_layers: int, source: Path) -> list[Tensor]:
    """The per-layer prompts of layers 1, 2, ...: contiguous, each [n_ctx, width], within the encoder."""
    pattern = re.compile(re.escape(template).replace(r"\{\}", r"(\d+)"))
    layers = sorted(int(m.group(1)) for key in state_dict if (m := pattern.fullmatch(key)))
    if layers and layers[-1] >= num_layers:
        raise TeacherCheckpointError(
            f"--teacher-ckpt {source}: '{template.format(layers[-1])}' is beyond the {num_layers} layers of "
            "--teacher-model-path (was the teacher trained on another CLIP backbone?)"
        )
    depth = max(layers, default=0)
    return [_require(state_dict, template.format(i), (n_ctx, width), source).float() for i in range(1, depth + 1)]


def _check_backbone(state_dict: dict, clip, source: Path) -> None:
    """The frozen CLIP weights the file carries must have --teacher-model-path's sizes, and two of
    them its values (float16 tolerance): the prompts only mean something on the CLIP they were
    trained with."""
    text, vision = clip.config.text_config, clip.config.vision_config
    width, patch, grid = vision.hidden_size, vision.patch_size, vision.image_size // vision.patch_size
    shapes = {
        "image_encoder.conv1.weight": (width, 3, patch, patch),
        "image_encoder.class_embedding": (width,),
        "image_encoder.positional_embedding": (grid * grid + 1, width),
        "image_encoder.proj": (width, clip.config.projection_dim),
        "text_encoder.positional_embedding": (text.max_position_embeddings, text.hidden_size),
        "text_encoder.text_projection": (text.hidden_size, clip.config.projection_dim),
    }
    for key, shape in shapes.items():
        if key in state_dict:
            _require(state_dict, key, shape, source)
    for encoder, num_layers in (("image_encoder", vision.num_hidden_layers), ("text_encoder", text.num_hidden_layers)):
        pattern = re.compile(rf"{encoder}\.transformer\.resblocks\.(\d+)\.")
        found = {int(m.group(1)) for key in state_dict if (m := pattern.match(key)) and not key.endswith(".VPT_shallow")}
        if found and max(found) + 1 != num_layers:
            raise TeacherCheckpointError(
                f"--teacher-ckpt {source}: {encoder} has {max(found) + 1} layers, --teacher-model-path has {num_layers} "
                "(was the teacher trained on another CLIP backbone?)"
            )
    embeddings = clip.vision_model.embeddings
    for key, ours in (("image_encoder.class_embedding", embeddings.class_embedding),
                      ("image_encoder.positional_embedding", embeddings.position_embedding.weight)):
        if key in state_dict:
            theirs = state_dict[key].float()
            if not torch.allclose(theirs, ours.detach().float().cpu(), rtol=1e-3, atol=1e-3):
                difference = (theirs - ours.detach().float().cpu()).abs().max().item()
                raise TeacherCheckpointError(
                    f"--teacher-ckpt {source}: '{key}' differs from --teacher-model-path's weights (max |difference| "
                    f"{difference:.3g}): the teacher was trained on another CLIP checkpoint"
                )


def convert(state_dict: dict, clip, num_classes: int, num_base: int, source: Path) -> tuple[dict, dict[str, Tensor]]:
    """PromptSRC `state_dict` -> (prompt_config, our `TeacherPromptLearner` state dict, float32).

    `num_classes`/`num_base` of --dataset: the class-name buffers were built for the classes the
    teacher was trained on, all of them (cross-dataset) or the base ones (base-to-new).
    """
    text, vision = clip.config.text_config, clip.config.vision_config
    _check_backbone(state_dict, clip, source)
    if TEXT_CTX not in state_dict:
        raise TeacherCheckpointError(f"--teacher-ckpt {source}: missing key '{TEXT_CTX}': not a PromptSRC teacher")
    n_ctx_text = state_dict[TEXT_CTX].shape[0]
    text_ctx = _require(state_dict, TEXT_CTX, (n_ctx_text, text.hidden_size), source).float()
    if VISION_CTX not in state_dict:
        raise TeacherCheckpointError(f"--teacher-ckpt {source}: missing key '{VISION_CTX}' (PromptSRC's first-layer vision prompts)")
    n_ctx_vision = state_dict[VISION_CTX].shape[0]
    vision_first = _require(state_dict, VISION_CTX, (n_ctx_vision, vision.hidden_size), source).float()
    text_deep = _deep_prompts(state_dict, TEXT_DEEP, n_ctx_text, text.hidden_size, text.num_hidden_layers, source)
    vision_deep = _deep_prompts(state_dict, VISION_DEEP, n_ctx_vision, vision.hidden_size, vision.num_hidden_layers, source)
    # PromptKD's own prompt learner splits the class buffers into base (prefix) and new (prefix2) rows.
    trained_classes = sum(state_dict[key].shape[0] for key in CLASS_PREFIXES if key in state_dict)
    if CLASS_PREFIXES[0] in state_dict and trained_classes not in (num_classes, num_base):
        raise TeacherCheckpointError(
            f"--teacher-ckpt {source}: '{CLASS_PREFIXES[0]}' was built for {trained_classes} classes, but --dataset has "
            f"{num_classes} ({num_base} base): use the teacher trained on this dataset"
        )
    prompt_config = {
        "n_ctx_text": n_ctx_text, "n_ctx_vision": n_ctx_vision, "depth_text": 1 + len(text_deep),
        "depth_vision": 1 + len(vision_deep), "ctx_init": CTX_INIT,
    }
    prompts = OrderedDict(text_ctx=text_ctx, vision_prompts=torch.stack([vision_first, *vision_deep]))
    if text_deep:
        prompts["text_deep"] = torch.stack(text_deep)
    return prompt_config, prompts
