"""The README's main job, `scripts/demo.sh --quick`, runs end to end and produces the table; and
its data generator, `tools.make_toy_data`, keeps the pre-training corpus apart from the tasks."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = ["teacher", "student-sft", "student-kd", "student-ab", "student-kd-pocl", "student-ab-pocl"]
PRETRAINED = ["teacher-pretrain", "student-pretrain"]
TASKS = ["copy", "lookup", "reverse", "sort", "add"]


def test_toy_corpus_is_text_not_tasks(tmp_path):
    from distillation_llm.instructions import load_instruction_jsonl
    from tools import make_toy_data

    make_toy_data.main(["--out", str(tmp_path / "a"), "--train", "50", "--eval", "40", "--pretrain", "400"])
    make_toy_data.main(["--out", str(tmp_path / "b"), "--train", "50", "--eval", "40"])
    # Adding a corpus leaves the task files as they were.
    assert (tmp_path / "a" / "raw.jsonl").read_bytes() == (tmp_path / "b" / "raw.jsonl").read_bytes()
    documents = (tmp_path / "a" / "pretrain" / "data.txt").read_text().splitlines()
    assert len(documents) == 400 and all(documents)
    # The same documents as prompt-less examples, which tools.process_data_dolly tokenises for --type sft.
    examples, _ = load_instruction_jsonl(tmp_path / "a" / "pretrain" / "raw.jsonl")
    assert [(e.prompt, e.references) for e in examples] == [("", [d]) for d in documents]
    text = "\n".join(documents)
    assert "Instruction" not in text and "?" not in text
    sums = {line for line in text.replace(". ", ".\n").splitlines() if " plus " in line}
    assert sums  # the corpus has arithmetic, but never the answer to an evaluation question
    for row in map(json.loads, (tmp_path / "a" / "eval" / "add" / "valid.jsonl").read_text().splitlines()):
        assert row["output"] not in sums


def test_demo_quick_end_to_end(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(["bash", "scripts/demo.sh", "--quick", "--out", str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]

    # Every model was really trained: its training loss fell and a best checkpoint exists.
    for model in PRETRAINED + MODELS:
        log = (tmp_path / "runs" / model / "log.txt").read_text()
        losses = [float(line.split("| loss ")[1].split()[0]) for line in log.splitlines() if "train step" in line]
        assert len(losses) >= 2 and losses[-1] < losses[0], (model, losses)
        assert (tmp_path / "runs" / model / "best" / "model.safetensors").is_file()
    # The papers' pipeline: both models pre-trained as LMs on the corpus, the teacher SFT'd from its
    # pretrained weights, every student (SFT, KD, ABKD, POCL) from the pretrained student.
    def args_of(model):
        return json.loads((tmp_path / "runs" / model / "args.json").read_text())

    for model in PRETRAINED:
        assert args_of(model)["data_dir"] == str(tmp_path / "processed-pretrain") and args_of(model)["type"] == "sft"
    assert args_of("teacher")["model_path"] == str(tmp_path / "runs" / "teacher-pretrain" / "best")
    for model in MODELS[1:]:
        assert args_of(model)["model_path"] == str(tmp_path / "runs" / "student-pretrain" / "best")
        assert args_of(model)["data_dir"] == str(tmp_path / "processed")
    assert args_of("student-kd")["kd_ratio"] == args_of("student-ab")["kd_ratio"] == 1.0
    ranking_meta = json.loads((tmp_path / "ranking" / "ranking.meta.json").read_text())
    assert ranking_meta["model"] == str(tmp_path / "runs" / "student-pretrain" / "best")
    # The distilled students computed a real divergence against the teacher.
    for model in ("student-kd", "student-ab", "student-kd-pocl", "student-ab-pocl"):
        kd = [float(line.split("| kd ")[1].split()[0]) for line in (tmp_path / "runs" / model / "log.txt").read_text().splitlines() if "train step" in line]
        assert all(value > 0 for value in kd)

    # The comparison table: one row per model, one ROUGE-L column per task family plus the average.
    with open(tmp_path / "eval" / "comparison.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["model"] for row in rows] == [f"{model}/best" for model in MODELS]
    for row in rows:
        values = [float(row[f"{task}_rougeL"]) for task in TASKS]
        assert all(0.0 <= value <= 100.0 for value in values)
        assert abs(float(row["avg_rougeL"]) - sum(values) / len(values)) < 1e-3  # the CSV keeps 4 decimals
    assert (tmp_path / "eval" / "comparison.png").stat().st_size > 1000
    # The curriculum runs walked all four stages from the ranking the pretrained student made.
    assert len((tmp_path / "ranking" / "ranking.jsonl").read_text().splitlines()) == 260
    for model in ("student-kd-pocl", "student-ab-pocl"):
        log = (tmp_path / "runs" / model / "log.txt").read_text()
        assert "curriculum stage 4/4: easiest 100%" in log and "curriculum finished after 4 stages" in log
    table = (tmp_path / "table.txt").read_text()
    assert all(model in table for model in MODELS) and "avg" in table
    results = json.loads((tmp_path / "eval" / "teacher" / "best" / "results.json").read_text())
    assert set(results["sets"]) == set(TASKS)
