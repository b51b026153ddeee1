"""Processed instruction and language-modelling datasets and their collation (batch sampling: abkd.sampling).

The processed format is written by `tools.process_data_dolly` / `tools.process_data_pretrain`:
a `datasets.DatasetDict` on disk (Arrow, memory-mapped) with `train`/`valid` splits and a
`meta.json` beside it.

Labels are aligned with the positions that predict them: `labels[t]` is the token the model should
emit after reading `input_ids[: t + 1]` (i.e. `input_ids[t + 1]`), or -100. Prompt and padding
positions are -100, so the loss never needs to shift logits.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

# The label of positions that predict nothing (prompt, padding); the losses skip them.
IGNORE_INDEX = -100

# meta.json "format_version" of processed instruction data (tools.process_data_dolly). Version 2
# follows DistiLLM: valid split = the first --dev-num lines, prompts keep their first tokens, the
# response is sliced from the tokenised prompt + response. Older data is refused, not reinterpreted.
INSTRUCTION_FORMAT_VERSION = 2


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what gives token ids their meaning: the tokenizer's class, its vocabulary (added
    tokens included) and its special tokens. Padding is left out: `distillation_llm.models`
    sets a missing pad token to EOS, and padded positions are never trained on."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    special = {name: token for name, token in tokenizer.special_tokens_map.items() if name != "pad_token"}
    description = [type(tokenizer).__name__, vocab, sorted(special.items(), key=str)]
    return hashlib.sha256(json.dumps(description, ensure_ascii=False, default=str).encode()).hexdigest()


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def load_processed(data_dir: str | Path, tokenizer=None, *, flag: str = "--data-dir", warn: Callable[[str], None] = _warn):
    """Load a processed DatasetDict and its meta.json, checking it was made with `tokenizer`.

    The check compares the tokenizer fingerprint the processing tools store in meta.json
    (`tokenizer_fingerprint`); a meta.json written before they stored one only has its vocabulary
    size compared, and `warn` says so. A mismatch raises ValueError.
    """
    import datasets

    data_dir = Path(data_dir)
    meta_path = data_dir / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{flag} {data_dir}: no processed dataset here (missing meta.json); run tools/process_data_dolly.py first"
        )
    meta = json.loads(meta_path.read_text())
    is_instruction_data = "max_prompt_length" in meta
    if is_instruction_data and meta.get("format_version", 1) < INSTRUCTION_FORMAT_VERSION:
        raise ValueError(
            f"{flag} {data_dir} was processed by an older tools.process_data_dolly (format_version "
            f"{meta.get('format_version', 1)}; this version reads {INSTRUCTION_FORMAT_VERSION}): its valid split, prompt "
            "truncation and response tokens differ from DistiLLM's; re-process it with --overwrite"
        )
    if tokenizer is not None:
        if meta.get("vocab_size") != len(tokenizer):
            raise ValueError(
                f"{flag} {data_dir} was tokenised with a vocabulary of {meta.get('vocab_size')} tokens "
                f"({meta.get('tokenizer')}), but the model's tokenizer has {len(tokenizer)}: re-process the data"
            )
        expected = meta.get("tokenizer_fingerprint")
        if expected is None:
            warn(
                f"{flag} {data_dir}: meta.json records no tokenizer fingerprint (made by an older version), so only "
                "the vocabulary size was checked; re-process the data to have the tokenizer itself checked"
            )
        elif expected != (actual := tokenizer_fingerprint(tokenizer)):
            raise ValueError(
                f"{flag} {data_dir} was tokenised with another tokenizer ({meta.get('tokenizer_class')} from "
                f"{meta.get('tokenizer')}, fingerprint {expected[:12]}) than the model's ({type(tokenizer).__name__}, "
                f"fingerprint {actual[:12]}), although both have {len(tokenizer)} tokens: re-process the data with "
                "the model's tokenizer"
            )
    return datasets.load_from_disk(str(data_dir)), meta


class InstructionCollator:
    """Right-padded prompt + response batches with next-token labels on the response only."""

    def __init__(self, pad_token_id: int, max_length: int):
        self.pad_token_id = pad_token_id
        self.max_length = max_length

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        sequences, first_target = [], []
        for row in rows:
            tokens = (list(row["prompt_ids"]) + list(row["response_ids"]))[: self.max_length]
            sequences.append(tokens)
            first_target.append(len(row["prompt_ids"]))  # index of the first response token
        length = max(len(s) for s in sequences)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        for i, (tokens, start) in enumerate(zip(sequences, first_target)):
            n = len(tokens)
            input_ids[i, :n] = torch.tensor(tokens)
            attention_mask[i, :n] = 1
            # Position t predicts token t + 1; response tokens are the targets.
            first = max(start - 1, 0)
            if first < n - 1:
                labels[i, first : n - 1] = input_ids[i, first + 1 : n]
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if "id" in rows[0]:
            batch["ids"] = torch.tensor([row["id"] for row in rows])
        return batch


class LMCollator:
    """Packed language-modelling blocks: every position predicts the next token."""

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        input_ids = torch.tensor([list(row["input_ids"]) for row in rows], dtype=torch.long)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        labels[:, :-1] = input_ids[:, 1:]
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
