"""Loading local Hugging Face checkpoints without the silent failures of `from_pretrained`: a
folder whose weights belong to another architecture loads as a randomly initialised model (the
mismatch is only logged), and a folder without tokenizer files gives an empty tokenizer (every
prompt encodes to nothing). Shared by the LLM students and teachers, evaluation and CLIP."""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

logger = logging.getLogger(__name__)

# The files that hold a tokenizer's vocabulary in a Hugging Face folder (fast tokenizer, GPT-2/OPT
# BPE, WordPiece, SentencePiece). Without one of them transformers 5 builds an empty tokenizer
# from config.json alone, and every prompt encodes to nothing.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")


def check_tokenizer_files(path: str | Path, flag: str) -> None:
    """FileNotFoundError naming `flag`, the folder and the files looked for when `path` holds no tokenizer vocabulary."""
    path = Path(path)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{flag} {path}: no tokenizer files (none of {', '.join(TOKENIZER_FILES)}); save the tokenizer beside the model "
            "(tokenizer.save_pretrained) or copy its files from the checkpoint it came from"
        )


class WeightsMismatch(ValueError):
    """A checkpoint whose weights are not those of the architecture its config.json names."""


def checked_from_pretrained(model_class, path: str | Path, flag: str, **kwargs) -> nn.Module:
    """`model_class.from_pretrained(path, **kwargs)`, refusing (WeightsMismatch naming `flag`, the
    path and some of the keys) weights that leave a parameter at its random initialisation
    (another architecture's, or a partial file) or do not fit its shape. transformers only logs
    these; keys the checkpoint has but the model does not are counted in a warning."""
    model, info = model_class.from_pretrained(path, local_files_only=True, output_loading_info=True, **kwargs)
    missing, unexpected = sorted(info.get("missing_keys") or ()), sorted(info.get("unexpected_keys") or ())
    mismatched = [str(key[0] if isinstance(key, tuple) else key) for key in info.get("mismatched_keys") or ()]
    if missing or mismatched or info.get("error_msgs"):
        found = f"; the checkpoint holds other weights, e.g. {', '.join(unexpected[:3])}" if unexpected else ""
        problems = [f"{len(missing)} missing (e.g. {', '.join(missing[:3])})"] if missing else []
        problems += [f"{len(mismatched)} of another shape (e.g. {', '.join(mismatched[:3])})"] if mismatched else []
        problems += [f"errors: {'; '.join(map(str, info['error_msgs'][:2]))}"] if info.get("error_msgs") else []
        raise WeightsMismatch(
            f"{flag} {path}: its weights do not fit the {type(model).__name__} its config.json describes: {', '.join(problems)} "
            f"parameters would start random{found}"
        )
    if unexpected:
        logger.warning("%s %s: %d weights of the checkpoint are not used by %s (e.g. %s)", flag, path, len(unexpected), type(model).__name__, ", ".join(unexpected[:3]))
    return model
