"""Generate answers to instruction-following evaluation sets and score them with ROUGE-L and exact match.

    python -m distillation_llm.evaluate --model-path "results/gpt2/train/*/best,checkpoints/gpt2-base" \\
        --data-dir data --save results/gpt2/eval_main

Follows the MiniLLM/DistiLLM protocol: every model answers each set (`<data-dir>/<set>/valid.jsonl`)
once per seed, sampling at temperature 1 by default (`--no-do-sample` for greedy decoding) with
repeated 6-grams banned (`--no-repeat-ngram-size`), from prompts encoded with the tokenizer's
special tokens (a BOS for OPT/LLaMA) and cut to their first --max-prompt-length tokens, as
DistiLLM's `evaluate_main.py`. ROUGE-L is reported as mean ± std over the seeds. Outputs in --save:

    args.json                                    the resolved command line
    <model>/<set>/seed<k>/answers.jsonl          line, prompt, generation, references, rougeL, exact_match, length
    <model>/results.json                         per set and on average over sets: mean/std over seeds
    comparison.csv, comparison.png               with several models: ROUGE-L of every model side by side

Per-example `rougeL` and `exact_match` in answers.jsonl lie in [0, 1]; aggregates are on a 0-100 scale,
with the population standard deviation over seeds.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from distillation_llm.generation import GenerationSettings, add_generation_args, generate, resolve_backend, settings_from_args
from distillation_llm.instructions import InstructionExample, chat_prompt, load_instruction_jsonl
from distillation_llm.metrics import exact_match, max_over_references, rouge_l

DEFAULT_SETS = ("dolly", "self-inst", "vicuna", "sinst", "uinst")
DEFAULT_SEEDS = (10, 20, 30, 40, 50)
# MiniLLM's evaluation: pure sampling at temperature 1, a fresh seed per run; DistiLLM's
# `--no-repeat-ngram-size 6` (arguments.py default, passed to generate by evaluate_main.py).
EVAL_GENERATION = GenerationSettings(
    do_sample=True, top_k=0, top_p=1.0, temperature=1.0, max_new_tokens=256, no_repeat_ngram_size=6
)
METRICS = ("rougeL", "exact_match", "length")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class EvaluationError(ValueError):
    """Bad evaluation input (model path, data set); the message names the file."""


# Scoring one model on one set -------------------------------------------------------------------


def evaluate_model(
    model: nn.Module | str | Path,
    tokenizer,
    examples: Sequence[tuple[str, Sequence[str]]],
    settings: GenerationSettings,
    batch_size: int,
    max_prompt_length: int,
    *,
    backend: str = "auto",
    progress: bool = True,
    add_special_tokens: bool = False,
) -> tuple[dict, list[dict]]:
    """Answer each (prompt, references) example and score the answers.

    Returns (scores, records): scores = {"rougeL", "exact_match" (0-100, best reference per
    example), "length" (mean generated tokens), "n", "prompt_truncated"}; records hold per example
    {"prompt", "generation", "references", "rougeL", "exact_match" (in [0, 1]), "length", "stopped"
    (the answer ended with EOS before --max-new-tokens)}.
    Used by this CLI (`add_special_tokens=True`, as DistiLLM's evaluate_main.py) and by
    `finetune --eval-gen` on the dev split (False: the prompts as the training data holds them, as
    DistiLLM's finetune.py generates from its processed prompts).
    """
    if not examples:
        raise EvaluationError("no examples to evaluate")
    prompts = [prompt for prompt, _ in examples]
    output = generate(
        model, tokenizer, prompts, settings, batch_size=batch_size, max_prompt_length=max_prompt_length,
        backend=backend, progress=progress, add_special_tokens=add_special_tokens,
    )
    records = []
    for (prompt, references), text, ids in zip(examples, output.texts, output.token_ids):
        references = list(references)
        records.append({
            "prompt": prompt,
            "generation": text,
            "references": references,
            "rougeL": max_over_references(rouge_l, text, references),
            "exact_match": max_over_references(exact_match, text, references),
            "length": len(ids),
            # The answer ended with an EOS token rather than at --max-new-tokens (ids are cut at EOS).
            "stopped": len(ids) < settings.max_new_tokens,
        })
    n = len(records)
    scores = {
        "rougeL": 100.0 * sum(r["rougeL"] for r in records) / n,
        "exact_match": 100.0 * sum(r["exact_match"] for r in records) / n,
        "length": sum(r["length"] for r in records) / n,
        "n": n,
        "prompt_truncated": output.prompt_truncated,
    }
    return scores, records


# Aggregation over seeds and sets ----------------------------------------------------------------


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and population standard deviation (ddof=0, so a single seed has std 0)."""
    mean = sum(values) / len(values)
    return {"mean": mean, "std": math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))}


def summarise(per_seed: dict[str, dict[int, dict]]) -> dict:
    """{set: {seed: scores}} -> {"sets": {set: {metric: {mean, std}, "n", "seeds"}}, "avg": {metric: {mean, std}}}.

    The average over sets is computed per seed first, so its std is the spread of the seeds'
    set-averaged scores (its mean equals the mean of the per-set means)."""
    seeds = list(next(iter(per_seed.values())))
    sets = {}
    for name, runs in per_seed.items():
        sets[name] = {metric: mean_std([runs[s][metric] for s in seeds]) for metric in METRICS}
        sets[name]["n"] = runs[seeds[0]]["n"]
        sets[name]["seeds"] = {str(s): {metric: runs[s][metric] for metric in METRICS} for s in seeds}
    averages = {
        metric: mean_std([sum(runs[s][metric] for runs in per_seed.values()) / len(per_seed) for s in seeds])
        for metric in METRICS
    }
    return {"sets": sets, "avg": averages}


def format_table(results: dict[str, dict], sets: Sequence[str]) -> str:
    """ROUGE-L `mean ± std` with models as rows and the sets plus `avg` as columns."""
    header = ["model", *sets, "avg"]
    rows = []
    for name, result in results.items():
        cells = [result["sets"][s]["rougeL"] for s in sets] + [result["avg"]["rougeL"]]
        rows.append([name] + [f"{c['mean']:.2f} ± {c['std']:.2f}" for c in cells])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(["ROUGE-L (mean ± std over seeds)", *lines])


def write_comparison(save: Path, results: dict[str, dict], paths: dict[str, str], sets: Sequence[str]) -> None:
    """comparison.csv (one row per model: ROUGE-L mean and std per set and on average) and a bar chart."""
    columns = [*sets, "avg"]
    with (save / "comparison.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "model_path"] + [f"{c}_{stat}" for c in columns for stat in ("rougeL", "rougeL_std")])
        for name, result in results.items():
            cells = [result["sets"][s]["rougeL"] for s in sets] + [result["avg"]["rougeL"]]
            writer.writerow([name, paths[name]] + [f"{c[stat]:.4f}" for c in cells for stat in ("mean", "std")])

    # Figure + FigureCanvasAgg draw off-screen without switching pyplot's global backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(6.0, 1.2 * len(columns) * max(1, len(results)) ** 0.5), 4.0))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / len(results)
    for k, (name, result) in enumerate(results.items()):
        cells = [result["sets"][s]["rougeL"] for s in sets] + [result["avg"]["rougeL"]]
        positions = [i - 0.4 + width * (k + 0.5) for i in range(len(columns))]
        axes.bar(positions, [c["mean"] for c in cells], width, yerr=[c["std"] for c in cells], capsize=2, label=name)
    axes.set_xticks(range(len(columns)), columns)
    axes.set_ylabel("ROUGE-L")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(save / "comparison.png", dpi=120)


# Inputs -----------------------------------------------------------------------------------------


def resolve_model_paths(spec: str) -> list[Path]:
    """Comma-separated directories and/or glob patterns -> model directories, in the given order
    (each pattern's matches sorted). Raises EvaluationError naming any entry that is not a local
    model directory or a pattern that matches nothing."""
    paths: list[Path] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        if glob.has_magic(item):
            matches = sorted(glob.glob(item))
            if not matches:
                raise EvaluationError(f"--model-path pattern {item!r} matches nothing")
            candidates = [Path(m) for m in matches]
        else:
            candidates = [Path(item)]
        for path in candidates:
            if not path.is_dir():
                raise EvaluationError(f"--model-path {path}: no such directory (models load from local paths only)")
            if not (path / "config.json").is_file():
                raise EvaluationError(f"--model-path {path}: not a model directory (no config.json)")
            if path.absolute() in [p.absolute() for p in paths]:
                raise EvaluationError(f"--model-path {path} is given twice")
            paths.append(path)
    if not paths:
        raise EvaluationError("--model-path names no model")
    return paths


def model_names(paths: Sequence[Path]) -> list[str]:
    """Directory names; names shared by several paths get their parent directory (`parent/name`)."""
    names = [p.absolute().name for p in paths]
    names = [f"{p.absolute().parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(paths, names)]
    for name in names:
        if names.count(name) > 1:
            clashing = [str(p) for p, n in zip(paths, names) if n == name]
            raise EvaluationError(f"--model-path entries {', '.join(clashing)} cannot be told apart by name ({name})")
    return names


def load_eval_sets(data_dir: Path, sets: Sequence[str], max_examples: int | None) -> dict[str, list[InstructionExample]]:
    """`<data-dir>/<set>/valid.jsonl` for each set, every line with an output (the references);
    the first `max_examples` of each when given."""
    if not data_dir.is_dir():
        raise EvaluationError(f"--data-dir {data_dir}: no such directory")
    loaded = {}
    for name in sets:
        path = data_dir / name / "valid.jsonl"
        if not path.parent.is_dir():
            raise EvaluationError(f"{path.parent}: no such directory (evaluation set '{name}' of --eval-sets)")
        if not path.is_file():
            raise EvaluationError(f"{path}: no such file (evaluation set '{name}' of --eval-sets)")
        examples, _ = load_instruction_jsonl(path, require_output=True)
        if not examples:
            raise EvaluationError(f"{path}: no examples (the file is empty)")
        loaded[name] = examples[:max_examples] if max_examples else examples
    return loaded


def load_model(path: Path, peft_path: Path | None, dtype: torch.dtype, device: str) -> nn.Module:
    from distillation_llm.models import load_causal_lm, merge_lora

    model = load_causal_lm(path, dtype=dtype, device=device)
    if peft_path is not None:
        model = merge_lora(model, peft_path, flag="--peft-path")  # local directories only, never the Hub
    return model


# Command line -----------------------------------------------------------------------------------


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m distillation_llm.evaluate",
        description="Sample answers to instruction-following evaluation sets and report ROUGE-L over several seeds.",
    )
    models = parser.add_argument_group("models")
    models.add_argument("--model-path", required=True, help="comma-separated local model directories and/or glob patterns (quote them), e.g. 'results/*/best,checkpoints/gpt2-base'")
    models.add_argument("--peft-path", help="LoRA/PEFT adapter directory merged into the single --model-path before evaluation")
    models.add_argument("--dtype", choices=("auto", *DTYPES), default="auto", help="weights' dtype for the Hugging Face backend (auto: float16 on CUDA, as the references evaluate; float32 on CPU)")

    data = parser.add_argument_group("data")
    data.add_argument("--data-dir", required=True, help="directory holding <set>/valid.jsonl for every evaluation set")
    data.add_argument("--eval-sets", default=",".join(DEFAULT_SETS), help=f"comma-separated evaluation sets, subdirectories of --data-dir (default {','.join(DEFAULT_SETS)})")
    data.add_argument("--max-examples", type=int, default=None, help="evaluate only the first N examples of each set (quick checks; default all)")
    data.add_argument("--max-prompt-length", type=int, default=256, help="prompts longer than this many tokens keep their first ones (default 256)")
    data.add_argument(
        "--prompt-special-tokens", action=argparse.BooleanOptionalAction, default=True,
        help="encode prompts with the tokenizer's special tokens (a BOS for OPT/LLaMA, nothing for GPT-2), as DistiLLM's "
        "evaluate_main.py; --no-prompt-special-tokens encodes them as the training data does (default on)",
    )

    data.add_argument(
        "--chat-template", action="store_true",
        help="wrap each prompt in the model's chat template as the user turn (instruction-tuned models; as "
        "tools.process_data_dolly --chat-template); the references use the plain template (default off)",
    )

    run = parser.add_argument_group("run")
    run.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)), help=f"comma-separated generation seeds; scores are mean ± std over them (default {','.join(map(str, DEFAULT_SEEDS))})")
    run.add_argument("--eval-batch-size", type=int, default=8, help="prompts generated together in one batch (default 8)")
    run.add_argument("--save", required=True, help="output directory for answers.jsonl, results.json and the comparison of several models")
    run.add_argument("--no-progress", action="store_true", help="hide the per-run progress bars")

    add_generation_args(parser, EVAL_GENERATION)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.seeds = [int(seed) for seed in _comma_list(args.seeds)]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    args.eval_sets = _comma_list(args.eval_sets)
    for flag, values in (("--seeds", args.seeds), ("--eval-sets", args.eval_sets)):
        if not values:
            parser.error(f"{flag} is empty")
        if len(set(values)) != len(values):
            parser.error(f"{flag} lists an entry twice: {values}")
    for flag in ("eval_batch_size", "max_prompt_length", "max_examples"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if args.peft_path and args.backend == "vllm":
        parser.error("--peft-path is merged with the Hugging Face backend: use --backend hf")
    try:
        settings_from_args(args, seed=0)
        args.backend = "hf" if args.peft_path else resolve_backend(args.backend, args.no_repeat_ngram_size)
    except (ValueError, RuntimeError) as error:
        parser.error(str(error))
    return args


def run(args: argparse.Namespace) -> dict[str, dict]:
    """Evaluate every model; returns {model name: results}."""
    paths = resolve_model_paths(args.model_path)
    peft_path = Path(args.peft_path) if args.peft_path else None
    if peft_path is not None:
        if len(paths) != 1:
            raise EvaluationError(f"--peft-path applies to one --model-path, got {len(paths)}")
        from distillation_llm.models import local_adapter

        try:
            peft_path = local_adapter(peft_path, "--peft-path")
        except FileNotFoundError as error:
            raise EvaluationError(str(error)) from None
    names = [peft_path.name] if peft_path is not None else model_names(paths)
    from abkd.pretrained import check_tokenizer_files

    for path in paths:  # before the first model is evaluated, not when the loop reaches it
        check_tokenizer_files(path, "--model-path")
    sets = load_eval_sets(Path(args.data_dir), args.eval_sets, args.max_examples)

    save = Path(args.save)
    save.mkdir(parents=True, exist_ok=True)
    (save / "args.json").write_text(json.dumps(vars(args), indent=2, default=str) + "\n")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = DTYPES[args.dtype] if args.dtype != "auto" else (torch.float16 if device == "cuda" else torch.float32)

    from distillation_llm.models import load_tokenizer

    all_results, path_of = {}, {}
    for name, path in zip(names, paths):
        tokenizer = load_tokenizer(path)
        # vLLM loads the weights itself; the hf backend loads them once for all sets and seeds.
        model = str(path) if args.backend == "vllm" else load_model(path, peft_path, dtype, device)
        per_seed: dict[str, dict[int, dict]] = {}
        for set_name, examples in sets.items():
            per_seed[set_name] = {}
            for seed in args.seeds:
                settings = settings_from_args(args, seed)
                pairs = [(chat_prompt(e.prompt, tokenizer) if args.chat_template else e.prompt, e.references) for e in examples]
                scores, records = evaluate_model(
                    model, tokenizer, pairs, settings, args.eval_batch_size, args.max_prompt_length,
                    backend=args.backend, progress=not args.no_progress, add_special_tokens=args.prompt_special_tokens,
                )
                out = save / name / set_name / f"seed{seed}"
                out.mkdir(parents=True, exist_ok=True)
                with (out / "answers.jsonl").open("w", encoding="utf-8") as handle:
                    for example, record in zip(examples, records):
                        handle.write(json.dumps({"line": example.line, **record}, ensure_ascii=False) + "\n")
                per_seed[set_name][seed] = scores
                print(
                    f"{name} {set_name} seed {seed}: ROUGE-L {scores['rougeL']:.2f}, exact match {scores['exact_match']:.2f}, "
                    f"length {scores['length']:.1f} (n={scores['n']}, {scores['prompt_truncated']} prompts truncated)"
                )
        results = {
            "model": name,
            "model_path": str(path),
            "peft_path": str(peft_path) if peft_path else None,
            "data_dir": str(args.data_dir),
            "seeds": args.seeds,
            "generation": {k: v for k, v in asdict(settings_from_args(args, seed=0)).items() if k != "seed"},
            "backend": args.backend,
            "max_prompt_length": args.max_prompt_length,
            "prompt_special_tokens": args.prompt_special_tokens,
            "chat_template": args.chat_template,
            "max_examples": args.max_examples,
            **summarise(per_seed),
        }
        (save / name / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        print(format_table({name: results}, args.eval_sets))
        all_results[name], path_of[name] = results, str(path)
        del model
    if len(all_results) > 1:
        print(format_table(all_results, args.eval_sets))
        write_comparison(save, all_results, path_of, args.eval_sets)
        print(f"wrote {save / 'comparison.csv'} and {save / 'comparison.png'}")
    return all_results


def main(argv: list[str] | None = None) -> dict[str, dict]:
    args = parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as error:  # EvaluationError, DataFormatError, impossible lengths
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
