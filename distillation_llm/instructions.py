"""The instruction-following data format shared by MiniLLM, DistiLLM, ABKD and POCL.

One JSON object per line: `instruction`, optional `input`, `output` (a string, or in evaluation
sets a list of reference strings), or a ready `prompt` instead of instruction/input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)


def chat_prompt(prompt: str, tokenizer) -> str:
    """`prompt` as the user turn of the tokenizer's chat template, ending where the assistant's
    answer begins (`add_generation_prompt`): the format an instruction-tuned model was trained on.
    Opt-in (`--chat-template`); the references use the plain template above for every model."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"--chat-template: the tokenizer ({type(tokenizer).__name__}) has no chat template")
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)


class DataFormatError(ValueError):
    """A malformed line in an instruction file; the message starts with `path:line:`."""


@dataclass
class InstructionExample:
    line: int  # 1-based line number in the source file
    prompt: str
    references: list[str] = field(default_factory=list)


def format_prompt(instruction: str, input: str | None = None) -> str:
    """The standard Alpaca/MiniLLM prompt, with the `### Input:` variant when input is non-empty."""
    if input:
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input)
    return PROMPT_NO_INPUT.format(instruction=instruction)


def _text(value: str, field: str, where: str) -> str:
    """`value` if it is Unicode text; JSON's `\\ud800` escapes decode to a lone surrogate, which no
    tokenizer (nor UTF-8) can encode: DataFormatError naming `where`, the field and the position."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise DataFormatError(
            f"{where}: field '{field}' holds a lone surrogate (U+{ord(value[error.start]):04X} at character {error.start + 1}), "
            "which is not Unicode text"
        ) from None
    return value


def parse_example(obj: object, where: str, require_output: bool = True) -> InstructionExample:
    """Validate one decoded JSON object; `where` is `path:line` for error messages."""
    line = int(where.rsplit(":", 1)[1])
    if not isinstance(obj, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "prompt" in obj and "instruction" not in obj:
        if not isinstance(obj["prompt"], str):
            raise DataFormatError(f"{where}: field 'prompt' must be a string, got {obj['prompt']!r}")
        prompt = _text(obj["prompt"], "prompt", where)
    else:
        instruction = obj.get("instruction")
        if instruction is None:
            raise DataFormatError(f"{where}: missing field 'instruction' (or a ready 'prompt')")
        extra = obj.get("input")
        extra = "" if extra is None else extra  # absent or null: no input
        for name, value in (("instruction", instruction), ("input", extra)):
            if not isinstance(value, str):  # `"input": 0` used to read as no input
                raise DataFormatError(f"{where}: field '{name}' must be a string, got {value!r}")
            _text(value, name, where)
        prompt = format_prompt(instruction, extra)
    output = obj.get("output")
    if output is None:
        if require_output:
            raise DataFormatError(f"{where}: missing field 'output'")
        references = []
    elif isinstance(output, str):
        references = [_text(output, "output", where)]
    elif isinstance(output, list) and output and all(isinstance(o, str) for o in output):
        references = [_text(o, "output", where) for o in output]
    else:
        raise DataFormatError(f"{where}: field 'output' must be a string or a non-empty list of strings, got {output!r}"[:300])
    return InstructionExample(line=line, prompt=prompt, references=references)


def load_instruction_jsonl(
    path: str | Path, *, require_output: bool = True, skip_invalid: bool = False
) -> tuple[list[InstructionExample], list[tuple[int, str]]]:
    """Read an instruction JSONL file.

    Returns (examples, skipped) where skipped lists (line, reason) for lines dropped under
    `skip_invalid`. Without it, the first bad line raises `DataFormatError` naming file and line.
    Blank lines are ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such instruction file")
    examples, skipped = [], []
    with path.open("rb") as handle:  # bytes, so that a line that is not UTF-8 is reported with its number
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            try:
                text = decode_utf8(raw, where)
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as error:
                    raise DataFormatError(f"{where}: malformed JSON ({error.msg} at column {error.colno})") from None
                examples.append(parse_example(obj, where, require_output))
            except DataFormatError as error:
                if not skip_invalid:
                    raise
                skipped.append((number, str(error)))
    return examples, skipped


def decode_utf8(raw: bytes, where: str) -> str:
    """One line of a file as text; DataFormatError naming `where` (path:line) and the offending byte
    if it is not UTF-8 (a text-mode read would fail without saying which line)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataFormatError(f"{where}: invalid UTF-8 (byte 0x{raw[error.start]:02x} at column {error.start + 1})") from None
