"""Loading local causal LMs and splitting them into body (hidden states) and LM head, so the
fused loss can compute the head per chunk instead of materialising full-vocabulary logits."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from abkd.pretrained import check_tokenizer_files, checked_from_pretrained

logger = logging.getLogger(__name__)


def load_tokenizer(path: str | Path, flag: str = "--model-path"):
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{flag} {path}: no such directory (models load from local paths only)")
    check_tokenizer_files(path, flag)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"{flag} {path}: no tokenizer could be loaded ({error})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str | Path, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", flag: str = "--model-path") -> nn.Module:
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{flag} {path}: not a local model directory (no config.json)")
    model = checked_from_pretrained(AutoModelForCausalLM, path, flag, dtype=dtype)
    return model.to(device)


@dataclass
class HeadSplit:
    """`body(input_ids, attention_mask)` -> final hidden states [B, L, H]; `head` the LM head
    module, with `weight` [V, H] and `bias` [V] or None."""

    body: nn.Module | None
    weight: Tensor | None
    bias: Tensor | None
    head: nn.Module | None = None

    @property
    def fused(self) -> bool:
        return self.body is not None and self.weight is not None


def add_lora(model: nn.Module, r: int, alpha: float, dropout: float) -> nn.Module:
    """Wrap `model` in PEFT LoRA adapters (PEFT's default target modules for its family); only
    the adapters train."""
    from peft import LoraConfig, TaskType, get_peft_model

    return get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=r, lora_alpha=alpha, lora_dropout=dropout))


ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# The files that make a checkpoint's outputs: its configuration and weights (a LoRA adapter's too).
CHECKPOINT_FILES = ("config.json", "adapter_config.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def weights_fingerprint(path: str | Path) -> dict:
    """The SHA-256 of each configuration and weight file of a local checkpoint, and one over all
    (the teacher cache's record of its teacher, a run's record of its models: abkd.run)."""
    from abkd.engine import file_sha256

    path = Path(path)
    names = sorted(p.name for p in path.iterdir() if p.is_file() and (p.name in CHECKPOINT_FILES or p.suffix in WEIGHT_SUFFIXES))
    files = {name: file_sha256(path / name) for name in names}
    return {"path": str(path.resolve()), "sha256": hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest(), "files": files}


def local_adapter(path: str | Path, flag: str) -> Path:
    """The absolute path of the saved PEFT adapter directory `path` given by `flag`.

    PEFT reads a string that is not an existing directory holding the weights as a Hub repo id,
    so a relative path from the wrong working directory, or a folder with only its config,
    would send the run to the network. Adapters load from local directories only: this raises
    FileNotFoundError naming the flag unless `path` holds `adapter_config.json` and the weights.
    """
    directory = Path(path).expanduser().absolute()
    if not directory.is_dir():
        raise FileNotFoundError(f"{flag} {path}: no such directory ({directory}); PEFT adapters load from local directories only")
    if not (directory / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{flag} {path}: not a PEFT adapter directory (no adapter_config.json in {directory})")
    if not any((directory / name).is_file() for name in ADAPTER_WEIGHTS):
        raise FileNotFoundError(f"{flag} {path}: the adapter has no weights (neither {' nor '.join(ADAPTER_WEIGHTS)} in {directory})")
    return directory


def _load_adapter(model: nn.Module, path: str | Path, flag: str, is_trainable: bool):
    from peft import PeftModel

    # local_files_only reaches PEFT's hf_hub_download calls: even a PEFT fallback stays offline.
    return PeftModel.from_pretrained(model, str(local_adapter(path, flag)), is_trainable=is_trainable, local_files_only=True)


def load_lora(model: nn.Module, adapter_path: str | Path, flag: str = "--peft-path") -> nn.Module:
    """Wrap `model` in the saved LoRA adapter at `adapter_path` (a local directory, see
    `local_adapter`), trainable (only the adapters)."""
    return _load_adapter(model, adapter_path, flag, is_trainable=True)


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute each layer's activations in the backward pass instead of storing them.

    Non-reentrant checkpointing restores the RNG state, so dropout masks (and the loss and
    gradients) are the same as without it; it needs no inputs that require grad, so it also works
    under LoRA's frozen embeddings. It acts only in train mode, and the KV cache must be off
    (every training forward passes `use_cache=False`).
    """
    unwrap(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def merge_lora(model: nn.Module, adapter_path: str | Path, flag: str = "--teacher-peft-path") -> nn.Module:
    """Load the LoRA adapter at `adapter_path` (a local directory, see `local_adapter`) into
    `model` and merge it, for inference (e.g. a LoRA-tuned teacher)."""
    return _load_adapter(model, adapter_path, flag, is_trainable=False).merge_and_unload()


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (its layers carry the adapters), else `model`."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def split_head(model: nn.Module) -> HeadSplit:
    """The model body and LM head of GPT-2, OPT, Llama, Qwen and other `*ForCausalLM` models.

    `base_model` returns the final hidden states after the last norm (and OPT's project_out),
    which is exactly what `get_output_embeddings()` is applied to. Models without both parts get
    an empty split, and callers fall back to full logits.
    """
    model = unwrap(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    body = getattr(model, "base_model", None)
    if head is None or body is None or body is model or not isinstance(head, nn.Linear):
        return HeadSplit(None, None, None)
    return HeadSplit(body, head.weight, head.bias, head)


def call_as_forward(module: nn.Module, function, *inputs):
    """`function(*inputs)`, run as `module`'s forward, so that the module's hooks apply to it.

    ZeRO-3 partitions every parameter across ranks and gathers a module's parameters only in
    hooks around that module's forward (and again before its backward, releasing them after).
    The fused loss reads the LM head's weight outside the head's own forward; running it as
    the head's forward makes DeepSpeed gather the weight for the loss, gather it again for
    the backward, and reduce-scatter its gradient as for any layer.
    """
    module.forward = function
    try:
        return module(*inputs)
    finally:
        del module.forward


def final_hidden_states(split: HeadSplit, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    return split.body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def check_shared_vocabulary(student_tokenizer, teacher_tokenizer, student_vocab: int, teacher_vocab: int) -> int:
    """Token-level KD compares distributions entry by entry, so both models must index the same
    tokens. Returns the common vocabulary size: padded embedding tables (e.g. 50257 vs 50304
    rows) are compared on their common prefix. Raises ValueError on a real mismatch."""
    student_map, teacher_map = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if student_map != teacher_map:
        for token, index in sorted(student_map.items(), key=lambda item: item[1]):
            if teacher_map.get(token) != index:
                raise ValueError(
                    f"student and teacher tokenizers differ: token {token!r} is id {index} for the student and "
                    f"{teacher_map.get(token)} for the teacher ({len(student_map)} vs {len(teacher_map)} tokens); "
                    "token-level distillation needs a shared vocabulary"
                )
        raise ValueError(f"the teacher tokenizer has {len(teacher_map) - len(student_map)} tokens the student lacks")
    common = min(student_vocab, teacher_vocab)
    if len(student_tokenizer) > common:
        raise ValueError(
            f"the tokenizer has {len(student_tokenizer)} tokens but the model heads have only {student_vocab} (student) "
            f"and {teacher_vocab} (teacher) rows"
        )
    if student_vocab != teacher_vocab:
        logger.info("student head has %d rows, teacher %d: distilling over the common %d", student_vocab, teacher_vocab, common)
    return common
