"""The offline teacher (`tools.cache_teacher_logits` + `finetune --teacher-cache`) on the embedded
demo: what a cache costs, how close its truncated divergence is to the exact one, and what it saves
on an (alpha, beta) sweep. Prints markdown tables and writes them, with the raw numbers, to
`--out` (results.json, tables.md).

    bash scripts/demo.sh --out results/demo                       # the demo's data, teacher and students
    python benchmarks/bench_teacher_cache.py --demo results/demo  # all three parts
    python benchmarks/bench_teacher_cache.py --demo results/demo --parts accuracy

Parts:
  size      a cache of the demo's train + valid splits for each K in --ks (float16, T = 1): size on
            disk, per 1M response tokens, and the build's wall time (a fresh process, start-up included);
  accuracy  the bucketed divergence (as training computes it from a float16 cache) against the exact
            one on held-out teacher/student pairs: the demo's teacher and its pretrained, SFT and
            ABKD-distilled students on the demo's held-out evaluation sets, and on the real instruction sets in
            /work/shared/data/eval when present (skipped otherwise). Per K: relative error of the
            mean loss, cosine between the gradients of the two losses with respect to the student
            logits, and the teacher's mean tail mass;
  sweep     the demo's ABKD run and a 9-point (alpha, beta) grid, each trained once with the online
            teacher and once from a cache at each K of --sweep-ks (each cache built once; the
            first K's build counted in the sweep's cost, the others are float32 controls: K = V is
            the exact loss, up to float32 rounding): wall time and peak RSS of every run (each a fresh
            `python -m distillation_llm.finetune` process, one at a time, --threads each), then
            ROUGE-L of every student with the demo's evaluation protocol (3 sampling seeds, T = 0.7);
  real      (not in the default; after benchmarks/study_real_model.py, --study) the same at a real
            vocabulary: SmolLM2-135M-Instruct (V = 49,152) as the teacher, caches of the study's dev
            split at each K (bytes per token), and the bucketed divergence against the exact one on
            held-out real prompts (the study's evaluation sets, chat template, --limit each) for
            the study's layer-dropped student before training and after KD.

    python benchmarks/bench_teacher_cache.py --parts real --limit 40      # after study_real_model.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_EVAL = REPO.parent / "shared" / "data" / "eval"
DIVERGENCES = {"fkl": {}, "rkl": {}, "srkl": {"lam": 0.1}, "ab (0.2, 0.7)": {"alpha": 0.2, "beta": 0.7}}
# The demo's student runs (scripts/demo.sh: `finetune student-ab ...`); checked against its args.json.
DEMO_RUN = {
    "do_train": True, "do_valid": True, "epochs": 6, "batch_size": 32, "eval_batch_size": 64, "lr": 3e-3, "warmup_iters": 20,
    "weight_decay": 0.0, "max_length": 128, "max_prompt_length": 96, "log_interval": 50, "seed": 10, "kd_ratio": 1.0,
}
DEMO_AB = (0.9, 0.2)
GRID = [(alpha, beta) for alpha in (0.2, 0.5, 0.9) for beta in (0.2, 0.5, 0.7)]  # holds the demo's (0.9, 0.2) and ABKD's GPT-2 (0.2, 0.7)
DEMO_TASKS = "copy,lookup,reverse,sort,add"
# Threads of every measured process (--threads). One by default: where other jobs share the cores,
# two OpenMP threads spin while one waits for a core, which inflated a step 30-fold in CPU and wall time.
THREADS = 1


def run(command: list[str], log: Path) -> dict:
    """Run `command` (from the repository root) as a fresh process; its wall time, CPU time (user +
    system, less sensitive than wall time to other jobs sharing the cores) and peak RSS."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("w") as handle:
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}
        process = subprocess.Popen(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed; see {log}")
    return {"seconds": round(seconds, 2), "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def build_cache(demo: Path, out: Path, k: int, logs: Path, dtype: str = "float16") -> dict:
    command = [sys.executable, "-m", "tools.cache_teacher_logits", "--teacher-model-path", str(demo / "runs" / "teacher" / "best"),
               "--data-dir", str(demo / "processed"), "--out", str(out), "--top-k", str(k), "--temperatures", "1", "--batch-size", "64", "--dtype", dtype]
    cost_file = out.with_name(f"{out.name}.cost.json")
    if (out / "meta.json").is_file() and cost_file.is_file():  # built by an earlier part or invocation
        cost = json.loads(cost_file.read_text())
    else:
        cost = run(command, logs / f"cache-k{k}.log")
        cost_file.write_text(json.dumps(cost) + "\n")
    return {**cost, "meta": json.loads((out / "meta.json").read_text())}


# ------------------------------------------------------------------------------------------------
# Size.
# ------------------------------------------------------------------------------------------------


def size_part(demo: Path, out: Path, ks: list[int]) -> dict:
    rows = []
    for k in ks:
        built = build_cache(demo, out / f"cache-k{k}", k, out / "logs")
        meta = built["meta"]
        tokens = sum(split["tokens"] for split in meta["splits"].values())
        rows.append({"k": k, "tokens": tokens, "bytes": meta["bytes"], "mib_per_1m_tokens": meta["bytes"] / tokens * 1e6 / 2**20,
                     "bytes_per_token": meta["bytes"] / tokens, "build_s": built["seconds"], "build_cpu_s": built["cpu_seconds"],
                     "in_process_build_s": meta["build"]["seconds"]})
    lines = ["| K | response tokens | size on disk | MiB per 1M tokens | bytes per token | build: wall / CPU s (process) | build s (in process) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['k']} | {r['tokens']:,} | {r['bytes'] / 2**20:.1f} MiB | {r['mib_per_1m_tokens']:,.0f} | {r['bytes_per_token']:.0f} | "
              f"{r['build_s']:.1f} / {r['build_cpu_s']:.1f} | {r['in_process_build_s']:.1f} |" for r in rows]
    return {"rows": rows, "table": "\n".join(lines)}


# ------------------------------------------------------------------------------------------------
# Accuracy of the bucketed divergence.
# ------------------------------------------------------------------------------------------------


def eval_rows(path: Path, tokenizer, limit: int) -> list[dict]:
    """Held-out examples tokenised as tools.process_data_dolly does (prompt, then prompt + first
    reference sliced after the prompt, plus EOS), cut as the demo's data (96 + 128)."""
    from distillation_llm.instructions import load_instruction_jsonl

    examples, _ = load_instruction_jsonl(path, skip_invalid=True)
    rows = []
    for index, example in enumerate(examples[:limit]):
        prompt = tokenizer(example.prompt, add_special_tokens=False)["input_ids"][: DEMO_RUN["max_prompt_length"]]
        full = tokenizer(example.prompt + example.references[0], add_special_tokens=False)["input_ids"]
        response = (full[len(prompt):] + [tokenizer.eos_token_id])[: DEMO_RUN["max_length"] - len(prompt)]
        if response:
            rows.append({"id": index, "prompt_ids": prompt, "response_ids": response})
    return rows


@torch.no_grad()
def response_logits(model, rows: list[dict], collate, vocab: int) -> torch.Tensor:
    """float32 logits [N, V] of `model` at every response position of `rows` (labels != -100)."""
    from distillation_llm.data import IGNORE_INDEX

    out = []
    for start in range(0, len(rows), 32):
        batch = collate(rows[start : start + 32])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[..., :vocab].float()
        out.append(logits[batch["labels"] != IGNORE_INDEX])
    return torch.cat(out)


def compare(teacher_logits: torch.Tensor, student_logits: torch.Tensor, k: int) -> dict:
    """For each divergence: relative error of the mean bucketed loss (teacher from a float16 cache
    at top-K, T = 1) against the exact mean loss, and the cosine of their student-logit gradients."""
    from abkd.losses import bucketed_divergence, divergence, teacher_bucket_log_probs
    from distillation_llm.teacher_cache import logits_to_storage, storage_to_logits
    from tools.cache_teacher_logits import tail_log_mass

    top, ids = teacher_logits.topk(k, dim=-1)
    stored = storage_to_logits(logits_to_storage(top - top[:, :1], "float16"), "float16").view(-1, k)
    tail = tail_log_mass(teacher_logits, ids, 1.0)
    buckets = teacher_bucket_log_probs(stored.float(), tail, 1.0)
    result = {"tail_mass": tail.exp().mean().item()}
    for label, params in DIVERGENCES.items():
        name = label.split()[0]
        exact_z = student_logits.clone().requires_grad_(True)
        exact = divergence(name, exact_z, teacher_logits, **params).mean()
        exact.backward()
        bucket_z = student_logits.clone().requires_grad_(True)
        approx = bucketed_divergence(name, bucket_z, ids, buckets, **params).mean()
        approx.backward()
        cosine = torch.nn.functional.cosine_similarity(exact_z.grad.flatten().double(), bucket_z.grad.flatten().double(), dim=0).item()
        result[label] = {"exact": exact.item(), "bucketed": approx.item(), "relative_error": abs(approx.item() - exact.item()) / exact.item(), "cosine": cosine}
    return result


def accuracy_part(demo: Path, ks: list[int], limit: int) -> dict:
    from distillation_llm.data import InstructionCollator
    from distillation_llm.models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(demo / "tokenizer")
    vocab = len(tokenizer)
    collate = InstructionCollator(tokenizer.pad_token_id, DEMO_RUN["max_length"])
    teacher = load_causal_lm(demo / "runs" / "teacher" / "best").eval()
    # The student where distillation starts (pretrained), the SFT baseline, and where it ends (the demo's ABKD student).
    runs = (("pretrained", "student-pretrain"), ("SFT", "student-sft"), ("distilled (demo ABKD)", "student-ab"))
    students = {name: load_causal_lm(demo / "runs" / run / "best").eval() for name, run in runs}
    sets = {"demo held-out (5 tasks)": [demo / "data" / "eval" / task / "valid.jsonl" for task in DEMO_TASKS.split(",")]}
    if SHARED_EVAL.is_dir():
        sets["real instructions (dolly, self-inst, vicuna, sinst)"] = [SHARED_EVAL / name / "valid.jsonl" for name in ("dolly", "self-inst", "vicuna", "sinst")]
    else:
        print(f"note: {SHARED_EVAL} is absent: the real-instruction rows are skipped")
    results, tables = {}, []
    for set_name, paths in sets.items():
        rows = [row for path in paths for row in eval_rows(path, tokenizer, limit)]
        teacher_logits = response_logits(teacher, rows, collate, vocab)
        for student_name, student in students.items():
            student_logits = response_logits(student, rows, collate, vocab)
            key = f"{set_name}, {student_name} student"
            results[key] = {"positions": len(teacher_logits), "rows": {k: compare(teacher_logits, student_logits, k) for k in [*ks, vocab]}}
            header = "| K | teacher tail mass | " + " | ".join(f"{label}: rel. err / cos" for label in DIVERGENCES) + " |"
            lines = [f"**{key}** ({len(teacher_logits):,} response tokens, V = {vocab})", "", header, "|---:|---:|" + "---:|" * len(DIVERGENCES)]
            for k, row in results[key]["rows"].items():
                cells = [f"{row[label]['relative_error']:.2e} / {row[label]['cosine']:.6f}" for label in DIVERGENCES]
                lines.append(f"| {k}{' (= V)' if k == vocab else ''} | {row['tail_mass']:.2e} | " + " | ".join(cells) + " |")
            tables.append("\n".join(lines))
    return {"results": results, "table": "\n\n".join(tables)}


# ------------------------------------------------------------------------------------------------
# The cache at a real vocabulary (SmolLM2-135M-Instruct, V = 49,152; benchmarks/study_real_model.py).
# ------------------------------------------------------------------------------------------------


def real_rows(paths: list[Path], tokenizer, limit: int, max_prompt_length: int, max_length: int) -> list[dict]:
    """Held-out examples as tools.process_data_dolly --chat-template tokenises them (the study's data)."""
    from distillation_llm.instructions import chat_prompt, load_instruction_jsonl

    rows = []
    for path in paths:
        examples, _ = load_instruction_jsonl(path, skip_invalid=True)
        for example in examples[:limit]:
            text = chat_prompt(example.prompt, tokenizer)
            prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
            full = tokenizer(text + example.references[0], add_special_tokens=False)["input_ids"]
            response = (full[len(prompt):] + [tokenizer.eos_token_id])[: max_length - min(len(prompt), max_prompt_length)]
            if response:
                rows.append({"prompt_ids": prompt[:max_prompt_length], "response_ids": response})
    return rows


def accumulate(totals: dict, teacher_logits: torch.Tensor, student_logits: torch.Tensor, ks: list[int], positions: int) -> None:
    """Add one batch of response positions to `totals`: per divergence the exact and, per K, the
    bucketed (float16 cache, T = 1) sums of the loss, and the dot products and squared norms of
    their gradients with respect to the student logits (the loss being the mean over `positions`)."""
    from abkd.losses import bucketed_divergence, divergence, teacher_bucket_log_probs
    from distillation_llm.teacher_cache import logits_to_storage, storage_to_logits
    from tools.cache_teacher_logits import tail_log_mass

    buckets = {}
    for k in ks:
        top, ids = teacher_logits.topk(k, dim=-1)
        stored = storage_to_logits(logits_to_storage(top - top[:, :1], "float16"), "float16").view(-1, k)
        tail = tail_log_mass(teacher_logits, ids, 1.0)
        buckets[k] = (ids, teacher_bucket_log_probs(stored.float(), tail, 1.0))
        totals.setdefault(f"tail {k}", 0.0)
        totals[f"tail {k}"] += tail.exp().sum().item()
    for label, params in DIVERGENCES.items():
        name = label.split()[0]
        z = student_logits.clone().requires_grad_(True)
        exact = divergence(name, z, teacher_logits, **params).sum()
        (exact / positions).backward()
        exact_grad = z.grad.double()
        entry = totals.setdefault(label, {"exact": 0.0, "exact_norm2": 0.0, **{k: {"bucketed": 0.0, "dot": 0.0, "norm2": 0.0} for k in ks}})
        entry["exact"] += exact.item()
        entry["exact_norm2"] += exact_grad.square().sum().item()
        for k, (ids, log_probs) in buckets.items():
            z = student_logits.clone().requires_grad_(True)
            approx = bucketed_divergence(name, z, ids, log_probs, **params).sum()
            (approx / positions).backward()
            entry[k]["bucketed"] += approx.item()
            entry[k]["dot"] += (z.grad.double() * exact_grad).sum().item()
            entry[k]["norm2"] += z.grad.double().square().sum().item()


def real_part(study: Path, out: Path, ks: list[int], limit: int) -> dict:
    """Bytes per token of a cache at each K (built on the study's dev split with the real teacher),
    and the bucketed divergence against the exact one on held-out real prompts, for the
    layer-dropped student before and after KD."""
    from distillation_llm.data import IGNORE_INDEX, InstructionCollator
    from distillation_llm.models import load_causal_lm, load_tokenizer

    settings = json.loads((study / "settings.json").read_text())
    teacher_path = Path(json.loads((study / "student-init" / "init_student.json").read_text())["teacher"]["path"])
    tokenizer = load_tokenizer(teacher_path)
    sizes = []
    for k in ks:
        cache = out / "real" / f"cache-k{k}"
        command = [sys.executable, "-m", "tools.cache_teacher_logits", "--teacher-model-path", str(teacher_path), "--data-dir", str(study / "data" / "processed"),
                   "--out", str(cache), "--top-k", str(k), "--temperatures", "1", "--splits", "valid", "--batch-size", "8"]
        cost = run(command, out / "logs" / f"real-cache-k{k}.log") if not (cache / "meta.json").is_file() else {}
        meta = json.loads((cache / "meta.json").read_text())
        tokens = meta["splits"]["valid"]["tokens"]
        sizes.append({"k": k, "tokens": tokens, "bytes_per_token": meta["bytes"] / tokens, "build_s": cost.get("seconds", meta["build"]["seconds"])})
    vocab = len(tokenizer)
    collate = InstructionCollator(tokenizer.pad_token_id, settings["max_length"])
    evaluation = study / "data" / "eval"
    rows = real_rows([evaluation / name / "valid.jsonl" for name in ("dolly", "self-inst", "vicuna")], tokenizer, limit,
                     settings["max_prompt_length"], settings["max_length"])
    teacher = load_causal_lm(teacher_path).eval()
    students = {"layer-dropped (before training)": study / "student-init", "after KD (the study's kd student)": study / "runs" / "kd" / str(settings["steps"])}
    positions = sum(len(row["response_ids"]) for row in rows)
    results, tables = {"sizes": sizes, "positions": positions, "examples": len(rows)}, []
    for student_name, path in students.items():
        student = load_causal_lm(path).eval()
        totals: dict = {}
        for start in range(0, len(rows), 8):
            batch = collate(rows[start : start + 8])
            mask = batch["labels"] != IGNORE_INDEX
            with torch.no_grad():
                teacher_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[..., :vocab].float()[mask]
                student_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[..., :vocab].float()[mask]
            accumulate(totals, teacher_logits, student_logits, ks, positions)
            print(f"  {student_name}: {min(start + 8, len(rows))}/{len(rows)} examples", file=sys.stderr, flush=True)
        summary = {}
        for k in ks:
            summary[k] = {"tail_mass": totals[f"tail {k}"] / positions}
            for label in DIVERGENCES:
                entry = totals[label]
                cosine = entry[k]["dot"] / (entry["exact_norm2"] * entry[k]["norm2"]) ** 0.5
                summary[k][label] = {"exact": entry["exact"] / positions, "bucketed": entry[k]["bucketed"] / positions,
                                     "relative_error": abs(entry[k]["bucketed"] - entry["exact"]) / entry["exact"], "cosine": cosine}
        results[student_name] = summary
        header = "| K | bytes per token | teacher tail mass | " + " | ".join(f"{label}: rel. err / cos" for label in DIVERGENCES) + " |"
        lines = [f"**{student_name}** ({positions:,} response tokens of {len(rows)} held-out prompts, V = {vocab})", "", header,
                 "|---:|---:|---:|" + "---:|" * len(DIVERGENCES)]
        for size, (k, row) in zip(sizes, summary.items()):
            cells = [f"{row[label]['relative_error']:.2e} / {row[label]['cosine']:.4f}" for label in DIVERGENCES]
            lines.append(f"| {k} | {size['bytes_per_token']:.0f} | {row['tail_mass']:.2e} | " + " | ".join(cells) + " |")
        tables.append("\n".join(lines))
    return {**results, "table": "\n\n".join(tables)}


# ------------------------------------------------------------------------------------------------
# The sweep.
# ------------------------------------------------------------------------------------------------


def finetune_command(demo: Path, save: Path, alpha: float, beta: float, teacher: list[str]) -> list[str]:
    flags = [f"--{key.replace('_', '-')}" if value is True else f"--{key.replace('_', '-')}={value}" for key, value in DEMO_RUN.items()]
    return [sys.executable, "-m", "distillation_llm.finetune", "--type", "ab", f"--ab_alpha={alpha}", f"--ab_beta={beta}",
            "--model-path", str(demo / "runs" / "student-pretrain" / "best"), "--data-dir", str(demo / "processed"), "--save", str(save), *flags, *teacher]


def check_demo_settings(demo: Path) -> None:
    recorded = json.loads((demo / "runs" / "student-ab" / "args.json").read_text())
    differ = {key: (recorded.get(key), value) for key, value in DEMO_RUN.items() if recorded.get(key) != value}
    if differ or (recorded["ab_alpha"], recorded["ab_beta"]) != DEMO_AB:
        raise SystemExit(f"the demo's ABKD run in {demo} was trained with other settings than this benchmark's DEMO_RUN: {differ}")


def rouge(demo: Path, out: Path, models: dict[str, Path]) -> dict[str, dict]:
    """ROUGE-L of each model with the demo's protocol (scripts/demo.sh's evaluate command)."""
    command = [sys.executable, "-m", "distillation_llm.evaluate", "--model-path", ",".join(str(path) for path in models.values()),
               "--data-dir", str(demo / "data" / "eval"), "--eval-sets", DEMO_TASKS, "--seeds", "10,20,30", "--do-sample", "--temperature", "0.7",
               "--max-new-tokens", "32", "--eval-batch-size", "64", "--save", str(out / "eval"), "--no-progress"]
    run(command, out / "logs" / "evaluate.log")
    from distillation_llm.evaluate import model_names

    names = model_names(list(models.values()))
    return {key: json.loads((out / "eval" / name / "results.json").read_text())["avg"]["rougeL"] for key, name in zip(models, names)}


def sweep_part(demo: Path, out: Path, ks: list[int], grid: list[tuple[float, float]]) -> dict:
    """The grid trained online and from a cache at each K of `ks`. The first K is the recommended
    one, whose cost is compared; the others (e.g. K = V, the exact loss up to float rounding) show
    how far two students trained on the same loss drift apart."""
    import shutil

    check_demo_settings(demo)
    teachers = {"online": ["--teacher-model-path", str(demo / "runs" / "teacher" / "best")]}
    builds = {}
    for index, k in enumerate(ks):  # the controls store float32 logits: with K = V, the online loss up to float32 rounding
        builds[f"cache-k{k}"] = build_cache(demo, out / f"cache-k{k}", k, out / "logs", dtype="float16" if index == 0 else "float32")
        teachers[f"cache-k{k}"] = ["--teacher-cache", str(out / f"cache-k{k}")]
    runs, students = {}, {}
    for alpha, beta in grid:
        for mode, teacher in teachers.items():
            name = f"{mode}-a{alpha:g}_b{beta:g}"
            save = out / "runs" / name
            if (save / "best" / "model.safetensors").is_file() and (save / "cost.json").is_file():
                runs[name] = json.loads((save / "cost.json").read_text())
            else:
                shutil.rmtree(save, ignore_errors=True)
                runs[name] = run(finetune_command(demo, save, alpha, beta, teacher), out / "logs" / f"{name}.log")
                (save / "cost.json").write_text(json.dumps(runs[name]) + "\n")
            students[name] = save / "best"
            print(f"{name}: {runs[name]['seconds']:.1f} s, peak RSS {runs[name]['peak_rss_mib']:.0f} MiB", flush=True)
    scores = rouge(demo, out, students)
    k, cache = ks[0], f"cache-k{ks[0]}"
    built = builds[cache]
    demo_point = f"a{DEMO_AB[0]:g}_b{DEMO_AB[1]:g}"
    online, cached = (runs[f"{mode}-{demo_point}"] for mode in ("online", cache))

    def total(mode: str, key: str) -> float:
        return sum(runs[f"{mode}-a{a:g}_b{b:g}"][key] for a, b in grid)

    peak = {mode: max(runs[f"{mode}-a{a:g}_b{b:g}"]["peak_rss_mib"] for a, b in grid) for mode in ("online", cache)}
    sweep = {key: (total("online", key), total(cache, key) + built[key]) for key in ("seconds", "cpu_seconds")}
    lines = [
        f"| | online teacher | cache (K = {k}) | cache / online |", "|---|---:|---:|---:|",
        f"| build the cache (once), wall / CPU | – | {built['seconds']:.1f} s / {built['cpu_seconds']:.1f} s | – |",
        *(f"| demo's ABKD run (α = {DEMO_AB[0]:g}, β = {DEMO_AB[1]:g}), {label} | {online[key]:.1f} s | {cached[key]:.1f} s | {cached[key] / online[key]:.2f} |"
          for key, label in (("seconds", "wall time"), ("cpu_seconds", "CPU time"))),
        f"| demo's ABKD run, peak RSS | {online['peak_rss_mib']:.0f} MiB | {cached['peak_rss_mib']:.0f} MiB | {cached['peak_rss_mib'] / online['peak_rss_mib']:.2f} |",
        *(f"| {len(grid)}-point sweep, {label} (cache: build included) | {sweep[key][0]:.1f} s | {sweep[key][1]:.1f} s | **{sweep[key][1] / sweep[key][0]:.2f}** |"
          for key, label in (("seconds", "wall time"), ("cpu_seconds", "CPU time"))),
        f"| {len(grid)}-point sweep, largest peak RSS of a run | {peak['online']:.0f} MiB | {peak[cache]:.0f} MiB | {peak[cache] / peak['online']:.2f} |",
    ]
    modes = list(teachers)
    header = "| (α, β) | " + " | ".join(f"{mode}: wall / CPU s" for mode in modes) + " | " + " | ".join(f"{mode} ROUGE-L" for mode in modes) + " | "
    header += " | ".join(f"{mode} − online" for mode in modes[1:]) + " |"
    rouge_lines = [header, "|---|" + "---:|" * (3 * len(modes) - 1)]
    differences = {mode: [] for mode in modes[1:]}
    for alpha, beta in grid:
        point = f"a{alpha:g}_b{beta:g}"
        costs = [f"{runs[f'{mode}-{point}']['seconds']:.1f} / {runs[f'{mode}-{point}']['cpu_seconds']:.1f}" for mode in modes]
        values = [scores[f"{mode}-{point}"] for mode in modes]
        for mode in modes[1:]:
            differences[mode].append(scores[f"{mode}-{point}"]["mean"] - scores[f"online-{point}"]["mean"])
        rouge_lines.append(f"| ({alpha:g}, {beta:g}){' (demo)' if (alpha, beta) == DEMO_AB else ''} | " + " | ".join(costs) + " | "
                           + " | ".join(f"{v['mean']:.2f} ± {v['std']:.2f}" for v in values) + " | "
                           + " | ".join(f"{differences[mode][-1]:+.2f}" for mode in modes[1:]) + " |")
    means = {mode: sum(scores[f"{mode}-a{a:g}_b{b:g}"]["mean"] for a, b in grid) / len(grid) for mode in modes}
    rouge_lines.append(
        "| mean over the grid | " + " | ".join(f"{total(mode, 'seconds') / len(grid):.1f}" for mode in modes) + " | "
        + " | ".join(f"{means[mode]:.2f}" for mode in modes) + " | "
        + " | ".join(f"{means[mode] - means['online']:+.2f}; \\|Δ\\| ≤ 0.5 at {sum(abs(d) <= 0.5 for d in differences[mode])} of {len(grid)}, largest "
                     f"{max(abs(d) for d in differences[mode]):.2f}" for mode in modes[1:]) + " |"
    )
    return {"k": k, "builds": {mode: {key: value for key, value in b.items() if key != "meta"} for mode, b in builds.items()}, "runs": runs, "rouge": scores,
            "ratio": {key: cached_total / online_total for key, (online_total, cached_total) in sweep.items()},
            "table": "\n".join(lines), "rouge_table": "\n".join(rouge_lines)}


def main(argv: list[str] | None = None) -> None:
    global THREADS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", default=str(REPO / "results" / "demo"), help="output folder of `bash scripts/demo.sh` (its data, teacher and students)")
    parser.add_argument("--out", default=str(REPO / "results" / "bench_teacher_cache"), help="caches, runs, logs and the tables")
    parser.add_argument("--parts", default="size,accuracy,sweep", help="comma-separated: size, accuracy, sweep, real (not in the default)")
    parser.add_argument("--study", default=str(REPO / "results" / "study_real_model"), help="the real part: output folder of benchmarks/study_real_model.py")
    parser.add_argument("--ks", default="8,32,128,512", help="K values of the size and accuracy parts")
    parser.add_argument("--sweep-ks", default="128,600",
                        help="K of the sweep's caches: the first is the recommended one whose cost is compared, the others controls (600 = V: the exact loss)")
    parser.add_argument("--limit", type=int, default=200, help="examples per evaluation set in the accuracy part")
    parser.add_argument("--threads", type=int, default=THREADS, help="OMP/MKL threads of each measured process (default 1: robust to other jobs on the cores)")
    args = parser.parse_args(argv)
    THREADS = args.threads
    demo, out = Path(args.demo).resolve(), Path(args.out).resolve()
    if set(args.parts.split(",")) - {"real"} and not (demo / "runs" / "teacher" / "best").is_dir():
        raise SystemExit(f"--demo {demo}: no demo outputs (runs/teacher/best); run `bash scripts/demo.sh --out {demo}` first")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    ks = [int(k) for k in args.ks.split(",")]
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    results["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, {THREADS} thread(s) per measured process"
    for part in args.parts.split(","):
        started = time.strftime("%Y-%m-%d")
        if part == "size":
            results["size"] = size_part(demo, out, ks)
        elif part == "accuracy":
            results["accuracy"] = accuracy_part(demo, ks, args.limit)
        elif part == "sweep":
            results["sweep"] = sweep_part(demo, out, [int(k) for k in args.sweep_ks.split(",")], GRID)
        elif part == "real":
            results["real"] = real_part(Path(args.study).resolve(), out, ks, args.limit)
        else:
            raise SystemExit(f"--parts: unknown part '{part}' (size, accuracy, sweep, real)")
        results[part]["date"] = started
        results_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
        for key in ("table", "rouge_table"):
            if key in results[part]:
                print(f"\n{results[part][key]}\n", flush=True)
    tables = [f"## {part} ({results[part]['date']}, {results['machine']})\n\n" + "\n\n".join(results[part][key] for key in ("table", "rouge_table") if key in results[part])
              for part in ("size", "accuracy", "sweep", "real") if part in results]
    (out / "tables.md").write_text("\n\n".join(tables) + "\n")


if __name__ == "__main__":
    main()
