"""A smaller student of the teacher's own family, initialised by keeping some of its layers.

    python -m tools.init_student --teacher checkpoints/smollm2-135m-instruct --layers 10 --out checkpoints/smollm2-10l
    python -m tools.init_student --teacher T --layer-ids 0,4,8,29 --out S

The layer-dropping initialisation of DistilBERT (Sanh et al. 2019, one layer in two) and Minitron
(Muralidharan et al. 2024, depth pruning): the student has N of the teacher's L decoder layers,
copied with their weights, and the teacher's embeddings, final norm and LM head. `--layers N`
keeps N evenly spaced layers with the first and the last (layer round(i (L - 1) / (N - 1)) for
i = 0..N-1); `--layer-ids` names them. Works for every decoder-only family the launchers name
(GPT-2, OPT, Llama, Qwen2) and any other `*ForCausalLM` whose config counts its layers in
`num_hidden_layers`: the student is built from the teacher's config with N layers (so each
attention layer knows its new index, which the KV cache needs) and loaded with the teacher's
weights renamed layer by layer, every tensor accounted for.

Writes a Hugging Face folder (safetensors, the teacher's tokenizer and generation config) and
`init_student.json` (teacher path, its weights' SHA-256, the kept layer ids). An existing
non-empty --out is refused unless --overwrite.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from pathlib import Path

RECORD = "init_student.json"


class InitError(Exception):
    """An expected failure (bad layer choice, no teacher, an occupied --out), reported in one line."""


def evenly_spaced(total: int, keep: int) -> list[int]:
    """`keep` of `total` layer ids, evenly spaced, the first and the last included."""
    if not 1 <= keep <= total:
        raise InitError(f"--layers {keep}: choose between 1 and the teacher's {total} layers")
    if keep == 1:
        return [0]
    return [round(i * (total - 1) / (keep - 1)) for i in range(keep)]


def parse_layer_ids(text: str, total: int) -> list[int]:
    try:
        ids = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise InitError(f"--layer-ids {text!r}: give comma-separated integers") from None
    if not ids:
        raise InitError("--layer-ids: give at least one layer")
    if any(not 0 <= i < total for i in ids):
        raise InitError(f"--layer-ids {text}: the teacher has layers 0..{total - 1}")
    if sorted(set(ids)) != ids:
        raise InitError(f"--layer-ids {text}: give distinct layers in increasing order")
    return ids


def student_config(teacher_config, layer_ids: list[int]):
    """The teacher's config with len(layer_ids) layers. Per-layer lists (Qwen2's and others'
    `layer_types`, sliding-window choices) are cut to the kept layers."""
    config = teacher_config.__class__.from_dict(teacher_config.to_dict())
    total = teacher_config.num_hidden_layers
    for key, value in teacher_config.to_dict().items():
        if isinstance(value, list) and len(value) == total and key != "architectures":
            setattr(config, key, [value[i] for i in layer_ids])
    config.num_hidden_layers = len(layer_ids)
    if getattr(config, "max_window_layers", None) is not None:  # Qwen2: layers from this index use sliding windows
        config.max_window_layers = sum(1 for i in layer_ids if i < teacher_config.max_window_layers)
    return config


def layer_prefix(model) -> str:
    """The state-dict prefix of the decoder-layer list ('transformer.h', 'model.layers',
    'model.decoder.layers', ...): the ModuleList with exactly num_hidden_layers entries."""
    import torch

    total = model.config.num_hidden_layers
    found = [name for name, module in model.named_modules() if isinstance(module, torch.nn.ModuleList) and len(module) == total and name]
    if len(found) != 1:
        raise InitError(f"{type(model).__name__}: cannot tell its decoder layers apart (module lists of {total} entries: {found or 'none'})")
    return found[0]


def dropped_state_dict(teacher_state: dict, prefix: str, layer_ids: list[int]) -> dict:
    """The teacher's tensors with layer layer_ids[j] renamed to layer j and the other layers left out."""
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.(.*)$")
    new_index = {old: new for new, old in enumerate(layer_ids)}
    state = {}
    for name, tensor in teacher_state.items():
        match = pattern.match(name)
        if match is None:
            state[name] = tensor
        elif int(match.group(1)) in new_index:
            state[f"{prefix}.{new_index[int(match.group(1))]}.{match.group(2)}"] = tensor
    return state


def init_student(teacher_path: str | Path, out: str | Path, layers: int | None = None, layer_ids: str | list[int] | None = None, overwrite: bool = False) -> dict:
    """Write the layer-dropped student of `teacher_path` to `out`; returns the record."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from abkd.engine import file_sha256
    from abkd.pretrained import WeightsMismatch, checked_from_pretrained

    teacher_path, out = Path(teacher_path), Path(out)
    if not (teacher_path / "config.json").is_file():
        raise InitError(f"--teacher {teacher_path}: not a local model directory (no config.json)")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InitError(f"--out {out} exists and is not empty; give a new folder or --overwrite")
    config = AutoConfig.from_pretrained(teacher_path, local_files_only=True)
    total = getattr(config, "num_hidden_layers", None)
    if total is None:
        raise InitError(f"--teacher {teacher_path}: its config ({type(config).__name__}) does not count its layers in num_hidden_layers")
    if (layers is None) == (layer_ids is None):
        raise InitError("give exactly one of --layers and --layer-ids")
    ids = evenly_spaced(total, layers) if layers is not None else (parse_layer_ids(layer_ids, total) if isinstance(layer_ids, str) else list(layer_ids))
    try:
        teacher = checked_from_pretrained(AutoModelForCausalLM, teacher_path, "--teacher", dtype=torch.float32)
    except WeightsMismatch as error:
        raise InitError(str(error)) from None
    prefix = layer_prefix(teacher)
    torch.manual_seed(0)  # nothing is left at its initialisation (checked below), but keep it reproducible
    student = AutoModelForCausalLM.from_config(student_config(teacher.config, ids), dtype=torch.float32)
    state = dropped_state_dict(teacher.state_dict(), prefix, ids)
    missing, unexpected = student.load_state_dict(state, strict=False)
    tied = {name for name, _ in student.named_parameters(remove_duplicate=False)} - {name for name, _ in student.named_parameters()}
    buffers = {name for name, _ in student.named_buffers()}  # rotary frequencies etc., rebuilt from the config
    if unexpected or set(missing) - tied - buffers:
        raise InitError(f"{type(teacher).__name__}: the student does not take the teacher's tensors (missing {sorted(set(missing) - tied - buffers)[:5]}, unexpected {unexpected[:5]})")

    staging = out.with_name(f".{out.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    student.save_pretrained(staging, safe_serialization=True)
    AutoTokenizer.from_pretrained(teacher_path, local_files_only=True).save_pretrained(staging)
    if (teacher_path / "generation_config.json").is_file():
        GenerationConfig.from_pretrained(teacher_path, local_files_only=True).save_pretrained(staging)
    weights = sorted(p for p in teacher_path.iterdir() if p.suffix == ".safetensors" or p.name == "pytorch_model.bin")
    record = {
        "teacher": {"path": str(teacher_path.resolve()), "layers": total, "weights_sha256": {p.name: file_sha256(p) for p in weights}},
        "layer_ids": ids,
        "parameters": {"teacher": sum(p.numel() for p in teacher.parameters()), "student": sum(p.numel() for p in student.parameters())},
        "method": "layer dropping: the kept decoder layers, embeddings, final norm and LM head copied from the teacher",
    }
    (staging / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, out)
    return record


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.init_student", description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="local teacher checkpoint (Hugging Face folder)")
    choice = parser.add_mutually_exclusive_group(required=True)
    choice.add_argument("--layers", type=int, help="keep this many evenly spaced layers, the first and last included")
    choice.add_argument("--layer-ids", help="comma-separated teacher layers to keep, in increasing order (0-based)")
    parser.add_argument("--out", required=True, help="folder for the student (new or empty)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    try:
        record = init_student(args.teacher, args.out, layers=args.layers, layer_ids=args.layer_ids, overwrite=args.overwrite)
    except InitError as error:
        raise SystemExit(f"error: {error}") from None
    parameters = record["parameters"]
    print(f"student with layers {record['layer_ids']} of {record['teacher']['layers']} "
          f"({parameters['student'] / 1e6:.1f}M of the teacher's {parameters['teacher'] / 1e6:.1f}M parameters) -> {args.out}")
    return record


if __name__ == "__main__":
    main()
