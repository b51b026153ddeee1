"""Prompt learners around frozen Hugging Face CLIP encoders (PromptSRC/IVLP teacher, PromptKD student).

Deep prompts (Khattak et al., "Self-regulating Prompts", ICCV 2023; the IVLP design of MaPLe,
CVPR 2023): n_ctx learnable tokens enter the first layer, and before each of the next depth-1
layers the tokens at those positions are replaced by a fresh learnable set.

- Vision: the prompt tokens are appended after [CLS, patches] before `pre_layrnorm`; a deep
  layer replaces the last n_ctx tokens.
- Text: "<bos> ctx_1 .. ctx_n <class name> . <eos>"; the first ctx set is initialised from the
  embeddings of `ctx_init` ("a photo of a"), a deep layer replaces positions 1..n_ctx. The text
  feature is the final-layer-norm state at <eos>, projected.

The encoders are run layer by layer here (embeddings, then `encoder.layers`), so nothing in
`transformers` is patched. The frozen `CLIPModel` is held outside the module's registered
children: `parameters()`, `state_dict()` and therefore every DeepSpeed checkpoint hold only the
prompts (and the student's projector), and the optimizer can never touch the encoders.

Student (Li et al., "PromptKD", CVPR 2024): deep vision prompts on a smaller CLIP, and a
projector from its image-feature width to the teacher's, so that its image features can be scored
against the teacher's class text features, computed once.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from abkd.pretrained import check_tokenizer_files, checked_from_pretrained


def load_frozen_clip(path: str | Path, flag: str, device: torch.device | str = "cpu"):
    """A `CLIPModel` from a local Hugging Face directory, in eval mode with gradients off."""
    from transformers import CLIPModel

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{flag} {path}: not a Hugging Face CLIP directory (no config.json)")
    model = checked_from_pretrained(CLIPModel, str(path), flag, dtype=torch.float32)
    return model.to(device).eval().requires_grad_(False)


def load_tokenizer(path: str | Path, flag: str):
    from transformers import AutoTokenizer

    check_tokenizer_files(path, flag)
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"{flag} {path}: no tokenizer files found ({error})") from None


def _hide(module: nn.Module, name: str, value) -> None:
    """Attach `value` without registering it as a child (see the module docstring)."""
    module.__dict__[name] = value


def _check_depth(name: str, depth: int, num_layers: int) -> None:
    if not 1 <= depth <= num_layers:
        raise ValueError(f"{name} must lie in [1, {num_layers}] (the encoder's layer count), got {depth}")


def encode_image(clip, pixel_values: Tensor, prompts: Tensor | None) -> Tensor:
    """Prompted CLIP image features.

    Args:
        clip: a frozen `CLIPModel`.
        pixel_values: [B, 3, S, S], normalised.
        prompts: [depth, n_ctx, vision_width] or None (plain CLIP).

    Returns:
        [B, projection_dim], not normalised.
    """
    vision = clip.vision_model
    hidden = vision.embeddings(pixel_values)
    batch = hidden.shape[0]
    if prompts is not None:
        prompts = prompts.to(hidden.dtype)
        n_ctx = prompts.shape[1]
        hidden = torch.cat([hidden, prompts[0].expand(batch, -1, -1)], dim=1)
    hidden = vision.pre_layrnorm(hidden)
    for index, layer in enumerate(vision.encoder.layers):
        if prompts is not None and 1 <= index < prompts.shape[0]:
            hidden = torch.cat([hidden[:, :-n_ctx], prompts[index].expand(batch, -1, -1)], dim=1)
        hidden = layer(hidden, None)
    return clip.visual_projection(vision.post_layernorm(hidden[:, 0]))


def causal_mask(length: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Additive causal mask [1, 1, L, L] for CLIP's text encoder (works with eager and SDPA)."""
    mask = torch.full((length, length), torch.finfo(dtype).min, dtype=dtype, device=device).triu(1)
    return mask[None, None]


class ClassPromptTemplate:
    """Token ids of "<bos> X*n_ctx <class name> . <eos> <pad>..." for every class.

    `input_ids` [C, L] (the ctx positions hold a placeholder, replaced by learned embeddings),
    `eos_positions` [C].
    """

    def __init__(self, tokenizer, classnames: list[str], n_ctx: int, max_length: int):
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        if bos is None or eos is None:
            raise ValueError("the CLIP tokenizer must define bos and eos tokens")
        rows = []
        room = max_length - n_ctx - 2
        for name in classnames:
            ids = tokenizer(name.replace("_", " ") + ".", add_special_tokens=False)["input_ids"][:room]
            rows.append([bos] + [bos] * n_ctx + ids + [eos])
        length = max(len(row) for row in rows)
        self.input_ids = torch.tensor([row + [pad] * (length - len(row)) for row in rows], dtype=torch.long)
        self.eos_positions = torch.tensor([len(row) - 1 for row in rows], dtype=torch.long)
        self.n_ctx = n_ctx


def encode_text(clip, template: ClassPromptTemplate, ctx: Tensor, deep: Tensor | None) -> Tensor:
    """Prompted class text features.

    Args:
        ctx: [n_ctx, text_width], the first layer's context tokens.
        deep: [depth - 1, n_ctx, text_width] or None.

    Returns:
        [C, projection_dim], not normalised.
    """
    text = clip.text_model
    device = text.embeddings.token_embedding.weight.device
    input_ids = template.input_ids.to(device)
    tokens = text.embeddings.token_embedding(input_ids)
    classes, n_ctx = tokens.shape[0], template.n_ctx
    ctx = ctx.to(tokens.dtype)
    tokens = torch.cat([tokens[:, :1], ctx.expand(classes, -1, -1), tokens[:, 1 + n_ctx :]], dim=1)
    hidden = text.embeddings(inputs_embeds=tokens)
    mask = causal_mask(hidden.shape[1], hidden.dtype, device)
    for index, layer in enumerate(text.encoder.layers):
        if deep is not None and 1 <= index <= deep.shape[0]:
            replace = deep[index - 1].to(hidden.dtype).expand(classes, -1, -1)
            hidden = torch.cat([hidden[:, :1], replace, hidden[:, 1 + n_ctx :]], dim=1)
        hidden = layer(hidden, mask)
    hidden = text.final_layer_norm(hidden)
    pooled = hidden[torch.arange(classes, device=device), template.eos_positions.to(device)]
    return clip.text_projection(pooled)


def normalize(features: Tensor) -> Tensor:
    return features / features.norm(dim=-1, keepdim=True)


class TeacherPromptLearner(nn.Module):
    """Deep text and vision prompts of the teacher (PromptSRC/IVLP). Only these are learned.

    The frozen CLIP and the class prompt template are attached, not registered.
    """

    def __init__(
        self, clip, tokenizer, classnames: list[str], *, n_ctx_text: int = 4, n_ctx_vision: int = 4,
        depth_text: int = 9, depth_vision: int = 9, ctx_init: str = "a photo of a",
    ):
        super().__init__()
        text_config, vision_config = clip.config.text_config, clip.config.vision_config
        _check_depth("--prompt-depth-text", depth_text, text_config.num_hidden_layers)
        _check_depth("--prompt-depth-vision", depth_vision, vision_config.num_hidden_layers)
        self.prompt_config = {
            "n_ctx_text": n_ctx_text, "n_ctx_vision": n_ctx_vision, "depth_text": depth_text,
            "depth_vision": depth_vision, "ctx_init": ctx_init,
        }
        text_width, vision_width = text_config.hidden_size, vision_config.hidden_size
        ctx = torch.empty(n_ctx_text, text_width).normal_(std=0.02)
        if ctx_init:
            init_ids = tokenizer(ctx_init, add_special_tokens=False)["input_ids"][:n_ctx_text]
            with torch.no_grad():
                embedded = clip.text_model.embeddings.token_embedding.weight[torch.tensor(init_ids)].detach().cpu()
            ctx[: len(init_ids)] = embedded
        self.text_ctx = nn.Parameter(ctx)
        # None at depth 1: a zero-size parameter would upset ZeRO's flattening.
        deep = torch.empty(depth_text - 1, n_ctx_text, text_width).normal_(std=0.02)
        self.text_deep = nn.Parameter(deep) if depth_text > 1 else None
        self.vision_prompts = nn.Parameter(torch.empty(depth_vision, n_ctx_vision, vision_width).normal_(std=0.02))
        _hide(self, "clip", clip)
        _hide(self, "template", ClassPromptTemplate(tokenizer, classnames, n_ctx_text, text_config.max_position_embeddings))
        self.classnames = list(classnames)

    def text_features(self) -> Tensor:
        """Normalised class text features [C, projection_dim]."""
        return normalize(encode_text(self.clip, self.template, self.text_ctx, self.text_deep))

    def image_features(self, pixel_values: Tensor) -> Tensor:
        """Normalised image features [B, projection_dim]."""
        return normalize(encode_image(self.clip, pixel_values, self.vision_prompts))

    def logit_scale(self) -> Tensor:
        return self.clip.logit_scale.exp()

    def forward(self, pixel_values: Tensor, class_slice: slice = slice(None)) -> Tensor:
        """Logits [B, C'] over the classes in `class_slice` (base classes during teacher training)."""
        text = self.text_features()[class_slice]
        return self.logit_scale() * self.image_features(pixel_values) @ text.t()


class StudentPromptLearner(nn.Module):
    """PromptKD student: deep vision prompts and a projector to the teacher's feature width.

    Projector: Linear(d_s, d_t) -> BatchNorm -> ReLU -> Linear(d_t, d_t), the 1x1-conv
    "Feature_Trans_Module_two_layer" of PromptKD written with linear layers.
    """

    def __init__(self, clip, teacher_dim: int, *, n_ctx_vision: int = 4, depth_vision: int = 9):
        super().__init__()
        vision_config = clip.config.vision_config
        _check_depth("--student-prompt-depth", depth_vision, vision_config.num_hidden_layers)
        self.prompt_config = {"n_ctx_vision": n_ctx_vision, "depth_vision": depth_vision, "teacher_dim": teacher_dim}
        self.vision_prompts = nn.Parameter(torch.empty(depth_vision, n_ctx_vision, vision_config.hidden_size).normal_(std=0.02))
        student_dim = clip.config.projection_dim
        self.projector = nn.Sequential(
            nn.Linear(student_dim, teacher_dim), nn.BatchNorm1d(teacher_dim), nn.ReLU(), nn.Linear(teacher_dim, teacher_dim)
        )
        _hide(self, "clip", clip)

    def logit_scale(self) -> Tensor:
        return self.clip.logit_scale.exp()

    def forward(self, pixel_values: Tensor, class_text_features: Tensor) -> Tensor:
        """Student logits [B, C] against the teacher's normalised class text features [C, d_t]."""
        features = encode_image(self.clip, pixel_values, self.vision_prompts)
        # DeepSpeed may hold the learnable module in bf16/fp16 while the frozen encoder stays fp32.
        features = self.projector(features.to(self.projector[0].weight.dtype))
        return self.logit_scale() * normalize(features) @ class_text_features.to(features.dtype).t()


def frozen_fingerprint(clip) -> dict[str, Tensor]:
    """A copy of every frozen encoder tensor (for tests and sanity checks)."""
    return {name: tensor.detach().clone() for name, tensor in clip.state_dict().items()}


def num_base_classes(num_classes: int) -> int:
    """CoOp's base/new split: the first ceil(C/2) labels are base, the rest new."""
    return math.ceil(num_classes / 2)
