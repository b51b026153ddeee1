"""A study on a real pretrained checkpoint: SmolLM2-135M-Instruct distilled into a student dropped from
its own layers, with `sft`, `kd` and `ab` at equal steps, scored by ROUGE-L on real instruction sets.

    python benchmarks/study_real_model.py                      # docs/studies.md's table (about an hour on 2 cores)
    python benchmarks/study_real_model.py --methods sft,kd --steps 20 --eval-examples 10   # a quick look

What it runs, each step a command of the framework (logs in `<out>/logs/`):
1. the teacher: `python -m tools.real_checkpoint smollm2-135m-instruct` (the machine's cache, or --teacher);
2. the student: `python -m tools.init_student --layers N` (every third of the 30 layers by default);
3. the data: the real Dolly evaluation file's examples from line `--train-from` on (its first lines
   stay held out for evaluation), the first `--dev-num` of them as the dev split, processed with
   `--chat-template` (the teacher is an instruction model trained on its chat format); the
   evaluation sets are the held-out Dolly lines, SelfInst and Vicuna (`../shared/data/eval`);
   the study checks that no training example's instruction + input occurs in an evaluation set;
4. `python -m distillation_llm.finetune --type sft|kd|ab` from the layer-dropped student, the
   same `--steps`, batch, learning rate and seed for every method (kd and ab with --kd-ratio 1.0,
   as in ABKD; `ab` at the paper's GPT-2 setting alpha 0.2, beta 0.7, `ab_0.9_0.2` at the demo's);
5. `python -m distillation_llm.evaluate` on the teacher, the student before training and every
   trained student: the references' sampling (temperature 1, no top-k/top-p, no repeated 6-gram),
   `--max-new-tokens`, the first `--eval-examples` of each set, each `--seeds`.

Each finished step appends a line to `<out>/results.jsonl`; a rerun skips what is done (a training
run cut off midway resumes from its checkpoint with --resume), and refuses an `<out>` made with
other settings. The table (markdown) is printed and written to `<out>/table.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_EVAL = REPO.parent / "shared" / "data" / "eval"
METHOD_FLAGS = {
    "sft": ("--type", "sft"),
    "kd": ("--type", "kd", "--kd-ratio", "1.0"),
    "ab": ("--type", "ab", "--ab_alpha", "0.2", "--ab_beta", "0.7", "--kd-ratio", "1.0"),  # ABKD's GPT-2 setting
    "ab_0.9_0.2": ("--type", "ab", "--ab_alpha", "0.9", "--ab_beta", "0.2", "--kd-ratio", "1.0"),  # the demo's: close to forward KL
    "rkl": ("--type", "rkl", "--kd-ratio", "1.0"),
    "srkl": ("--type", "srkl", "--skew-alpha", "0.1", "--kd-ratio", "1.0"),
}
EVAL_SETS = ("dolly", "self-inst", "vicuna")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "results" / "study_real_model"), help="data, students, evaluations, logs and the table")
    parser.add_argument("--teacher", help="the teacher checkpoint (default: SmolLM2-135M-Instruct from tools.real_checkpoint's cache)")
    parser.add_argument("--eval-data", default=str(SHARED_EVAL), help="folder of <set>/valid.jsonl (dolly, self-inst, vicuna)")
    parser.add_argument("--student-layers", type=int, default=10, help="layers kept by tools.init_student (evenly spaced, first and last)")
    parser.add_argument("--methods", default="sft,kd,ab,ab_0.9_0.2", help=f"comma-separated, of {', '.join(METHOD_FLAGS)}")
    parser.add_argument("--train-from", type=int, default=101, help="Dolly lines from this one on are training data; the lines before are held out")
    parser.add_argument("--dev-num", type=int, default=40, help="training lines used as the dev split (not trained on)")
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps of every method")
    parser.add_argument("--batch-size", type=int, default=8, help="training batch size")
    parser.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (cosine decay after --warmup-iters)")
    parser.add_argument("--warmup-iters", type=int, default=5, help="learning-rate warm-up steps")
    parser.add_argument("--max-prompt-length", type=int, default=192, help="prompt tokens kept (chat template included)")
    parser.add_argument("--max-length", type=int, default=320, help="prompt + response tokens of a training sequence")
    parser.add_argument("--seed", type=int, default=10, help="training seed (data order, dropout)")
    parser.add_argument("--eval-examples", type=int, default=50, help="first N examples of each evaluation set")
    parser.add_argument("--seeds", default="1,2", help="evaluation sampling seeds")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="generated tokens at most per answer")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process (default: torch's)")
    return parser


class Study:
    def __init__(self, args: argparse.Namespace):
        self.args, self.out = args, Path(args.out)
        self.logs = self.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.results = self.out / "results.jsonl"
        self.settings = {key: value for key, value in vars(args).items() if key not in ("out", "methods", "threads")}

    def check_settings(self) -> None:
        path = self.out / "settings.json"
        if path.is_file():
            recorded = json.loads(path.read_text())
            changed = {key: (recorded.get(key), value) for key, value in self.settings.items() if recorded.get(key) != value}
            if changed:
                raise SystemExit(f"error: {self.out} holds a study with other settings {changed}; give another --out")
        else:
            path.write_text(json.dumps(self.settings, indent=1) + "\n")

    def done(self) -> dict[str, dict]:
        if not self.results.is_file():
            return {}
        return {row["step"]: row for row in map(json.loads, self.results.read_text().splitlines()) if row.get("step")}

    def record(self, row: dict) -> None:
        with self.results.open("a") as handle:
            handle.write(json.dumps(row) + "\n")

    def module(self, name: str, argv: list[str], log: str) -> float:
        """`python -m name argv` from the repository root; its output to logs/<log>.log; wall seconds."""
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        if self.args.threads:
            env.update(OMP_NUM_THREADS=str(self.args.threads), MKL_NUM_THREADS=str(self.args.threads))
        started = time.time()
        with (self.logs / f"{log}.log").open("a") as handle:
            result = subprocess.run([sys.executable, "-m", name, *map(str, argv)], cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, env=env)
        if result.returncode != 0:
            raise SystemExit(f"error: {name} failed (exit {result.returncode}); see {self.logs / f'{log}.log'}")
        return time.time() - started

    def step(self, key: str, action) -> dict:
        done = self.done()
        if key in done:
            return done[key]
        print(f"[{time.strftime('%H:%M:%S')}] {key} ...", flush=True)
        row = {"step": key, **action()}
        self.record(row)
        print(f"[{time.strftime('%H:%M:%S')}] {key}: {row.get('seconds', 0):.0f} s", flush=True)
        return row

    # -- the pipeline ----------------------------------------------------------------------------

    def teacher(self) -> Path:
        if self.args.teacher:
            return Path(self.args.teacher)
        sys.path.insert(0, str(REPO))
        from tools.real_checkpoint import ensure

        return ensure("smollm2-135m-instruct")

    def make_student(self, teacher: Path) -> Path:
        path = self.out / "student-init"

        def action():
            seconds = self.module("tools.init_student", ["--teacher", teacher, "--layers", self.args.student_layers, "--out", path, "--overwrite"], "init_student")
            return {"seconds": seconds, **json.loads((path / "init_student.json").read_text())}

        self.step("init_student", action)
        return path

    def make_data(self, teacher: Path) -> tuple[Path, Path]:
        eval_data = Path(self.args.eval_data)
        raw, evaluation = self.out / "data" / "raw", self.out / "data" / "eval"

        def action():
            lines = {name: (eval_data / name / "valid.jsonl").read_text(encoding="utf-8").splitlines() for name in EVAL_SETS}
            first = self.args.train_from - 1
            train, held_out = lines["dolly"][first:], lines["dolly"][:first]
            (raw / "raw.jsonl").parent.mkdir(parents=True, exist_ok=True)
            (raw / "raw.jsonl").write_text("".join(line + "\n" for line in train), encoding="utf-8")
            for name in EVAL_SETS:
                (evaluation / name).mkdir(parents=True, exist_ok=True)
                kept = held_out if name == "dolly" else lines[name]
                (evaluation / name / "valid.jsonl").write_text("".join(line + "\n" for line in kept), encoding="utf-8")

            def key(line: str) -> tuple[str, str]:
                row = json.loads(line)
                return " ".join(row["instruction"].lower().split()), " ".join((row.get("input") or "").lower().split())

            train_keys = {key(line) for line in train}
            overlap = {name: sum(key(line) in train_keys for line in (held_out if name == "dolly" else lines[name])) for name in EVAL_SETS}
            if any(overlap.values()):
                raise SystemExit(f"error: training examples occur in the evaluation sets: {overlap}")
            seconds = self.module("tools.process_data_dolly", [
                "--data-dir", raw, "--processed-data-dir", self.out / "data" / "processed", "--model-path", teacher, "--chat-template",
                "--max-prompt-length", self.args.max_prompt_length, "--max-length", self.args.max_length, "--dev-num", self.args.dev_num,
            ], "process_data")
            meta = json.loads((self.out / "data" / "processed" / "meta.json").read_text())
            return {"seconds": seconds, "train_lines": len(train), "held_out_dolly": len(held_out), "overlap": overlap, "counts": meta["counts"]}

        self.step("data", action)
        return self.out / "data" / "processed", evaluation

    def train(self, method: str, student: Path, teacher: Path, data: Path) -> Path:
        save = self.out / "runs" / method
        args = self.args

        def action():
            argv = [
                "--model-path", student, "--data-dir", data, "--save", save, "--do-train", *METHOD_FLAGS[method],
                "--total-iters", args.steps, "--batch-size", args.batch_size, "--lr", args.lr, "--warmup-iters", args.warmup_iters,
                "--lr-decay-style", "cosine", "--max-length", args.max_length, "--max-prompt-length", args.max_prompt_length,
                "--seed", args.seed, "--save-interval", max(args.steps // 3, 1), "--log-interval", 5, "--ckpt-name", f"student-{method}",
            ]
            if method != "sft":
                argv += ["--teacher-model-path", teacher]
            if (save / "checkpoints" / "latest").is_file():
                argv.append("--resume")
            seconds = self.module("distillation_llm.finetune", argv, f"train_{method}")
            return {"seconds": seconds, "model": str(save / str(args.steps)), "train_loss": last_losses(save / "log.txt")}

        self.step(f"train_{method}", action)
        return save / str(args.steps)

    def evaluate(self, name: str, model: Path, evaluation: Path) -> dict:
        args = self.args
        save = self.out / "eval"

        def action():
            seconds = self.module("distillation_llm.evaluate", [
                "--model-path", model, "--data-dir", evaluation, "--eval-sets", ",".join(EVAL_SETS), "--max-examples", args.eval_examples,
                "--seeds", args.seeds, "--max-new-tokens", args.max_new_tokens, "--chat-template", "--eval-batch-size", 16,
                "--save", save / name, "--no-progress",
            ], f"eval_{name}")
            results = json.loads(next((save / name).glob("*/results.json")).read_text())
            return {"seconds": seconds, "sets": results["sets"], "avg": results["avg"]}

        return self.step(f"eval_{name}", action)


def last_losses(log: Path) -> dict:
    """The first and last logged training loss of a finetune run (lines `train step N | loss x | ...` of its log.txt)."""
    losses = []
    for line in log.read_text().splitlines():
        if "] train step " in line and " | loss " in line:
            losses.append(float(line.split(" | loss ")[1].split(" |")[0]))
    return {"first": losses[0], "last": losses[-1]} if losses else {}


def table(rows: list[tuple[str, dict]], seeds: str) -> str:
    def cell(scores: dict) -> str:
        return f"{scores['rougeL']['mean']:.2f} ± {scores['rougeL']['std']:.2f}"

    lines = [f"| model | {' | '.join(EVAL_SETS)} | avg |", "|---" * (len(EVAL_SETS) + 2) + "|"]
    for label, row in rows:
        lines.append(f"| {label} | " + " | ".join(cell(row["sets"][name]) for name in EVAL_SETS) + f" | **{cell(row['avg'])}** |")
    lines.append(f"\nROUGE-L (0-100), mean ± std over evaluation seeds {seeds}; lengths (mean generated tokens): "
                 + "; ".join(f"{label} {row['avg']['length']['mean']:.0f}" for label, row in rows))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHOD_FLAGS]
    if unknown:
        raise SystemExit(f"error: --methods {','.join(unknown)}: valid are {', '.join(METHOD_FLAGS)}")
    if not all((Path(args.eval_data) / name / "valid.jsonl").is_file() for name in EVAL_SETS):
        raise SystemExit(f"error: --eval-data {args.eval_data} lacks <set>/valid.jsonl for {', '.join(EVAL_SETS)}")
    study = Study(args)
    study.check_settings()
    started = time.time()
    teacher = study.teacher()
    student = study.make_student(teacher)
    data, evaluation = study.make_data(teacher)
    trained = {method: study.train(method, student, teacher, data) for method in methods}
    rows = [("teacher: SmolLM2-135M-Instruct", study.evaluate("teacher", teacher, evaluation)),
            (f"student: {args.student_layers} of its 30 layers, before training", study.evaluate("student-init", student, evaluation))]
    rows += [(f"student {method} ({args.steps} steps)", study.evaluate(f"student-{method}", path, evaluation)) for method, path in trained.items()]
    text = table(rows, args.seeds)
    (study.out / "table.md").write_text(text + "\n")
    done = study.done()
    print(text)
    print("\nwall seconds: " + ", ".join(f"{key} {row['seconds']:.0f}" for key, row in done.items() if "seconds" in row)
          + f"; this invocation {time.time() - started:.0f}")


if __name__ == "__main__":
    main()
