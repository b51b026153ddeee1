"""Start-up time of a training process: how long `python -m distillation_llm.finetune` takes
before its first optimizer step, and where that time goes.

    python benchmarks/bench_startup.py            # tiny GPT-2 student and teacher, built here
    python benchmarks/bench_startup.py --runs 3   # median of 3

Phases, each measured in a fresh process (the operating system's file cache is warm after the
first run, as it is on a cluster node that starts its second job):
  import torch                  `python -c "import torch"`
  import the trainer            `python -c "import distillation_llm.finetune"` (torch included)
  import deepspeed              `python -c "import deepspeed"` (torch included)
  whole run to 1 step           the command with --total-iters 1 (kd); the models are so small
                                that a step takes milliseconds, so this is the start-up (and the
                                final save) of the framework, not the models' compute
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(command: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, cwd=ROOT, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build(workdir: Path) -> tuple[Path, Path, Path]:
    """A tokenizer, a 2-layer GPT-2 student, a wider teacher, and processed toy instruction data."""
    import json
    import random

    from distillation_llm.toy import make_causal_lm, train_bpe_tokenizer
    from tools import process_data_dolly

    rng = random.Random(0)
    words = "red green blue fox river stone light cloud sings runs over under quickly".split()
    rows = []
    for _ in range(64):
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(3, 9)))
        rows.append({"instruction": "Repeat: " + sentence, "input": "", "output": sentence})
    raw = workdir / "raw"
    raw.mkdir(parents=True)
    (raw / "raw.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    tokenizer = train_bpe_tokenizer([row["instruction"] + " " + row["output"] for row in rows] * 4, workdir / "tokenizer", vocab_size=300)
    student, teacher = workdir / "student", workdir / "teacher"
    make_causal_lm("gpt2", student, tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=1)
    make_causal_lm("gpt2", teacher, tokenizer, hidden_size=48, num_layers=2, num_heads=4, seed=2)
    processed = workdir / "processed"
    process_data_dolly.main([
        "--data-dir", str(raw), "--processed-data-dir", str(processed), "--model-path", str(workdir / "tokenizer"),
        "--max-prompt-length", "48", "--max-length", "64", "--dev-num", "8",
    ])  # fmt: skip
    return student, teacher, processed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="runs per row (the median is reported)")
    args = parser.parse_args(argv)
    python = sys.executable
    rows = [
        ("import torch", timed([python, "-c", "import torch"], args.runs)),
        ("import the trainer (distillation_llm.finetune)", timed([python, "-c", "import distillation_llm.finetune"], args.runs)),
        ("import deepspeed", timed([python, "-c", "import deepspeed"], args.runs)),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        student, teacher, processed = build(Path(tmp))

        def run(steps: int) -> float:
            save = Path(tmp) / f"run{steps}"
            command = [
                python, "-m", "distillation_llm.finetune", "--model-path", str(student), "--teacher-model-path", str(teacher),
                "--data-dir", str(processed), "--save", str(save), "--type", "kd", "--do-train", "--total-iters", str(steps),
                "--batch-size", "2", "--max-length", "64", "--max-prompt-length", "48", "--save-interval", "-1",
            ]  # fmt: skip
            seconds = timed(command, args.runs)
            return seconds

        rows.append(("whole run to 1 step (kd, tiny models)", run(1)))
    runs = f"median of {args.runs}" if args.runs > 1 else "one run"
    print(f"\nStart-up of a training process, {runs}, python {sys.version.split()[0]}\n")
    print("| phase | seconds |")
    print("|---|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
