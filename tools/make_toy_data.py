"""A deterministic, embedded instruction-following dataset for the demo and the tests.

    python -m tools.make_toy_data --out data/toy --train 4000 --eval 200 --pretrain 4000 --seed 0

Writes, in the MiniLLM/DistiLLM JSONL format (`instruction`, `input`, `output`):
- `OUT/raw.jsonl`: the training examples (for `tools.process_data_dolly --data-dir OUT`);
- `OUT/eval/<family>/valid.jsonl`: held-out evaluation sets, one per task family, plus
  `OUT/eval/all/valid.jsonl` mixing them (for `distillation_llm.evaluate --data-dir OUT/eval`);
- with --pretrain N, a plain-text pre-training corpus of N documents, the toy stand-in for the web
  text GPT-2 was pre-trained on, twice: `OUT/pretrain/data.txt`, one document a line (the layout of
  `tools.process_data_pretrain`), and `OUT/pretrain/raw.jsonl`, the same documents as examples with
  an empty prompt, on which `distillation_llm.finetune --type sft` is causal language modelling
  (every token after a document's first is a target).

Task families, roughly from easy to hard for a small model: copying words, naming an attribute
from a short record, reversing a word list, sorting words alphabetically, and adding two numbers.
Every example records its family and difficulty level, so curricula can be checked against it.
Evaluation examples never appear in the training file.

The corpus is text in the tasks' vocabulary but not the tasks: word lists, records with a sentence
about one field, short facts and sums (`a plus b is c.`), never an instruction, a copied, reversed
or sorted list, nor the sum of an evaluation question. Pre-training on it teaches the words, the
record and sentence shapes and some arithmetic, as web text does for GPT-2; following the
instructions is left to fine-tuning.
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


def _record(rng: random.Random) -> dict[str, str]:
    record = {"color": rng.choice(COLORS), "animal": rng.choice(ANIMALS), "city": rng.choice(CITIES), "object": rng.choice(NOUNS)}
    keys = list(record)
    rng.shuffle(keys)
    return {key: record[key] for key in keys}


def corpus_sentence(rng: random.Random, excluded_sums: set[tuple[int, int]]) -> str:
    """One sentence of the pre-training corpus; `excluded_sums` are the (a, b) it must not add."""
    kind = rng.randrange(4)
    if kind == 0:
        return " ".join(_words(rng, 2, 6)) + "."
    if kind == 1:
        record = _record(rng)
        key = rng.choice(list(record))
        return ", ".join(f"{k}: {v}" for k, v in record.items()) + f". The {key} is {record[key]}."
    if kind == 2:
        return rng.choice((
            f"The {rng.choice(ANIMALS)} lives in {rng.choice(CITIES)}.",
            f"The {rng.choice(NOUNS)} is {rng.choice(COLORS)}.",
            f"The {rng.choice(ANIMALS)} sees a {rng.choice(COLORS)} {rng.choice(NOUNS)}.",
        ))
    while (pair := (rng.randint(0, 99), rng.randint(0, 99))) in excluded_sums:
        pass
    return f"{pair[0]} plus {pair[1]} is {pair[0] + pair[1]}."


def make_corpus(n: int, rng: random.Random, excluded_sums: set[tuple[int, int]]) -> list[str]:
    """n documents of 2 to 5 corpus sentences (most fit the demo's 128 tokens)."""
    return [" ".join(corpus_sentence(rng, excluded_sums) for _ in range(rng.randint(2, 5))) for _ in range(n)]


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
    parser.add_argument("--pretrain", type=int, default=0, help="documents of the plain-text pre-training corpus (0: none)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files")
    args = parser.parse_args(argv)
    if args.train < 1 or args.eval < 1:
        parser.error("--train and --eval must be positive")
    if args.pretrain < 0:
        parser.error("--pretrain must be 0 or more")

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
    if args.pretrain:
        # Its own generator, so that adding a corpus leaves the task files as they were.
        excluded_sums = {_operands(row) for row in evaluation["add"]}
        corpus = make_corpus(args.pretrain, random.Random(args.seed + 1), excluded_sums)
        (out / "pretrain").mkdir(parents=True, exist_ok=True)
        (out / "pretrain" / "data.txt").write_text("".join(document + "\n" for document in corpus))
        write_jsonl(out / "pretrain" / "raw.jsonl", [{"prompt": "", "output": document} for document in corpus])
        print(f"wrote a {len(corpus)}-document pre-training corpus to {out / 'pretrain'} (data.txt and raw.jsonl)")


def _operands(row: dict) -> tuple[int, int]:
    """(a, b) of an `add` example, read back from its instruction "What is a plus b?"."""
    a, b = row["instruction"].removeprefix("What is ").removesuffix("?").split(" plus ")
    return int(a), int(b)


if __name__ == "__main__":
    main()
