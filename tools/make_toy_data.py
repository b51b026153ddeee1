"""A deterministic, embedded instruction-following dataset for the demo and the tests.

    python -m tools.make_toy_data --out data/toy --train 4000 --eval 200 --seed 0

Writes, in the MiniLLM/DistiLLM JSONL format (`instruction`, `input`, `output`):
- `OUT/raw.jsonl`: the training examples (for `tools.process_data_dolly --data-dir OUT`);
- `OUT/eval/<family>/valid.jsonl`: held-out evaluation sets, one per task family, plus
  `OUT/eval/all/valid.jsonl` mixing them (for `distillation_llm.evaluate --data-dir OUT/eval`).

Task families, roughly from easy to hard for a small model: copying words, naming an attribute
from a short record, reversing a word list, sorting words alphabetically, and adding two numbers.
Every example records its family and difficulty level, so curricula can be checked against it.
Evaluation examples never appear in the training file.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

COLORS = "red blue green yellow black white orange purple brown pink gray silver gold".split()
ANIMALS = "cat dog bird fish horse cow sheep goat lion tiger bear wolf fox owl frog duck".split()
CITIES = "paris london tokyo rome cairo lima oslo delhi sydney madrid berlin dublin vienna".split()
NOUNS = "apple river mountain table garden window candle bottle pencil mirror ladder basket bridge forest".split()
WORDS = sorted(set(COLORS + ANIMALS + CITIES + NOUNS))


def _words(rng: random.Random, low: int, high: int) -> list[str]:
    return rng.sample(WORDS, rng.randint(low, high))


def copy_words(rng: random.Random) -> dict:
    words = _words(rng, 2, 6)
    return {"instruction": "Repeat the following words exactly.", "input": " ".join(words), "output": " ".join(words)}


def lookup(rng: random.Random) -> dict:
    record = {"color": rng.choice(COLORS), "animal": rng.choice(ANIMALS), "city": rng.choice(CITIES), "object": rng.choice(NOUNS)}
    keys = list(record)
    rng.shuffle(keys)
    asked = rng.choice(keys)
    text = ", ".join(f"{key}: {record[key]}" for key in keys)
    return {"instruction": f"What is the {asked} in the record?", "input": text, "output": f"The {asked} is {record[asked]}."}


def reverse_words(rng: random.Random) -> dict:
    words = _words(rng, 2, 6)
    return {"instruction": "Write the following words in reverse order.", "input": " ".join(words), "output": " ".join(reversed(words))}


def sort_words(rng: random.Random) -> dict:
    words = _words(rng, 3, 6)
    return {"instruction": "Sort the following words alphabetically.", "input": " ".join(words), "output": " ".join(sorted(words))}


def add_numbers(rng: random.Random) -> dict:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return {"instruction": f"What is {a} plus {b}?", "input": "", "output": f"{a} plus {b} is {a + b}."}


FAMILIES: dict[str, tuple[int, Callable[[random.Random], dict]]] = {
    "copy": (0, copy_words),
    "lookup": (1, lookup),
    "reverse": (2, reverse_words),
    "sort": (3, sort_words),
    "add": (4, add_numbers),
}


def make_examples(n: int, rng: random.Random, exclude: set[str] = frozenset()) -> list[dict]:
    """n examples cycling through the families; prompts in `exclude` are regenerated."""
    examples, names = [], list(FAMILIES)
    while len(examples) < n:
        family = names[len(examples) % len(names)]
        level, make = FAMILIES[family]
        example = make(rng)
        if example["instruction"] + "\n" + example["input"] in exclude:
            continue
        examples.append({**example, "family": family, "level": level})
    return examples


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.make_toy_data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory (raw.jsonl and eval/<family>/valid.jsonl)")
    parser.add_argument("--train", type=int, default=4000, help="number of training examples")
    parser.add_argument("--eval", type=int, default=100, help="evaluation examples per task family")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files")
    args = parser.parse_args(argv)
    if args.train < 1 or args.eval < 1:
        parser.error("--train and --eval must be positive")

    out = Path(args.out)
    rng = random.Random(args.seed)
    evaluation = {}
    seen: set[str] = set()
    for family, (level, make) in FAMILIES.items():
        rows = []
        while len(rows) < args.eval:
            example = make(rng)
            key = example["instruction"] + "\n" + example["input"]
            if key not in seen:
                seen.add(key)
                rows.append({**example, "family": family, "level": level})
        evaluation[family] = rows
        write_jsonl(out / "eval" / family / "valid.jsonl", rows)
    write_jsonl(out / "eval" / "all" / "valid.jsonl", [row for rows in zip(*evaluation.values()) for row in rows])
    train = make_examples(args.train, rng, exclude=seen)
    write_jsonl(out / "raw.jsonl", train)
    print(f"wrote {len(train)} training examples to {out / 'raw.jsonl'} and {args.eval} x {len(FAMILIES)} evaluation examples to {out / 'eval'}")


if __name__ == "__main__":
    main()
