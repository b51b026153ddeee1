"""POCL difficulty ranking of a processed training set by the student itself.

    python -m distillation_llm.rank_difficulty rank --model-path STUDENT_INIT --data-dir processed_data/dolly/full/gpt2 \
        --ranking results/pocl/ranking.jsonl

For every training example the student (1) generates a response (greedy by default) and is scored
by ROUGE-L against the references, and (2) is scored by its mean LM loss on the reference
response (its first max-length - max-prompt-length tokens, EOS left out, as POCL). `abkd.pocl.reciprocal_rank_fusion` fuses the two ranks. Writes `ranking.jsonl`
(easy to hard: id, both signals, both ranks, fused score) and `ranking.meta.json`, which names
the dataset and the checkpoint; a ranking whose meta matches is reused instead of recomputed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from abkd.engine import atomic_write_text
from abkd.pocl import RANK_TIES, read_ranked_ids, reciprocal_rank_fusion
from abkd.sampling import batches
from distillation_llm.data import IGNORE_INDEX, InstructionCollator, load_processed
from distillation_llm.generation import GenerationSettings, add_generation_args, generate, settings_from_args
from distillation_llm.metrics import max_over_references, rouge_l
from distillation_llm.models import load_causal_lm, load_tokenizer


def checkpoint_fingerprint(path: str | Path) -> str:
    """A cheap identity of a local checkpoint: config, and each weight file's size and ends."""
    digest = hashlib.sha256()
    path = Path(path)
    for file in sorted(path.iterdir()):
        if file.name == "config.json":
            digest.update(file.read_bytes())
        elif file.suffix in (".safetensors", ".bin", ".pt"):
            size = file.stat().st_size
            digest.update(f"{file.name}:{size}".encode())
            with file.open("rb") as handle:
                digest.update(handle.read(1 << 20))
                handle.seek(max(size - (1 << 20), 0))
                digest.update(handle.read())
    return digest.hexdigest()


def scored_row(row: dict, eos_token_id: int, max_response_length: int, score_eos: bool = False) -> dict:
    """The prompt and the response tokens the ranking loss scores. As POCL's
    tools/generate_data_main.py: the response without its EOS (POCL tokenises the output alone,
    and masks pad = EOS), cut to its first `max_response_length` tokens (max_length -
    max_prompt_length, 256). `score_eos` keeps the EOS instead."""
    response = list(row["response_ids"])
    if response and response[-1] == eos_token_id and not score_eos:
        response = response[:-1]
    return {"prompt_ids": list(row["prompt_ids"]), "response_ids": response[:max_response_length]}


@torch.no_grad()
def example_losses(model, rows, collate, batch_size: int, device, pad_token_id: int | None = None) -> list[float]:
    """Mean token cross-entropy of the model on each row's response (`scored_row`); targets equal
    to `pad_token_id` are masked, as POCL masks its pad (= EOS for GPT-2) labels."""
    model.eval()
    losses = []
    for index in tqdm(batches(range(len(rows)), batch_size), desc="loss", leave=False):
        batch = {k: v.to(device) for k, v in collate([rows[i] for i in index]).items()}
        if pad_token_id is not None:
            batch["labels"] = batch["labels"].masked_fill(batch["labels"] == pad_token_id, IGNORE_INDEX)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        per_token = F.cross_entropy(logits.transpose(1, 2), batch["labels"], ignore_index=IGNORE_INDEX, reduction="none")
        counts = (batch["labels"] != IGNORE_INDEX).sum(-1).clamp(min=1)
        losses += (per_token.sum(-1) / counts).tolist()
    return losses


def ranking_meta(args, data_meta: dict, settings: GenerationSettings, size: int) -> dict:
    return {
        "dataset": str(Path(args.data_dir).resolve()),
        "dataset_fingerprint": data_meta.get("fingerprint"),
        "model": str(Path(args.model_path).resolve()),
        "model_fingerprint": checkpoint_fingerprint(args.model_path),
        "rrf_k": args.rrf_k,
        "rank_ties": args.rank_ties,
        "score_eos": args.score_eos,
        "seed": args.seed,
        "generation": vars(settings),
        "max_prompt_length": args.max_prompt_length,
        "max_length": args.max_length,
        "examples": size,
    }


def rank(args: argparse.Namespace) -> Path:
    ranking = Path(args.ranking)
    meta_path = ranking.with_suffix(".meta.json")
    tokenizer = load_tokenizer(args.model_path)
    data, data_meta = load_processed(args.data_dir, tokenizer)
    train = data["train"]
    settings = settings_from_args(args, args.seed)
    meta = ranking_meta(args, data_meta, settings, len(train))
    if ranking.is_file() and meta_path.is_file() and json.loads(meta_path.read_text()) == meta and not args.overwrite:
        print(f"ranking {ranking} matches this checkpoint and dataset: reusing it")
        return ranking

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_causal_lm(args.model_path, device=device)
    output = generate(
        model, tokenizer, [list(row["prompt_ids"]) for row in train], settings,
        batch_size=args.batch_size, max_prompt_length=args.max_prompt_length,
    )
    rouge = [max_over_references(rouge_l, text, row["references"]) for text, row in zip(output.texts, train)]
    rows = [scored_row(row, tokenizer.eos_token_id, args.max_length - args.max_prompt_length, args.score_eos) for row in train]
    pad = None if args.score_eos and tokenizer.pad_token_id == tokenizer.eos_token_id else tokenizer.pad_token_id
    losses = example_losses(model, rows, InstructionCollator(tokenizer.pad_token_id, args.max_length), args.batch_size, device, pad)
    ranked = reciprocal_rank_fusion(train["id"], rouge, losses, k=args.rrf_k, ties=args.rank_ties)

    ranking.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(ranking, "".join(json.dumps(vars(example)) + "\n" for example in ranked))
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"ranked {len(ranked)} examples ({output.prompt_truncated} prompts truncated) -> {ranking}")
    return ranking


def load_ranking(path: str | Path, data_dir: str | Path, data_meta: dict) -> list[int]:
    """Example ids easy to hard, after checking the ranking was made for this dataset."""
    path = Path(path)
    meta_path = path.with_suffix(".meta.json")
    if not path.is_file() or not meta_path.is_file():
        raise FileNotFoundError(f"--ranking {path}: no ranking (and {meta_path.name}) here; run `python -m distillation_llm.rank_difficulty rank` first")
    meta = json.loads(meta_path.read_text())
    if meta.get("dataset_fingerprint") != data_meta.get("fingerprint"):
        raise ValueError(f"--ranking {path} was made for {meta.get('dataset')}, not for --data-dir {data_dir} (dataset fingerprints differ)")
    return read_ranked_ids(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m distillation_llm.rank_difficulty",
        description="POCL: rank the training examples from easy to hard with the student (ROUGE-L and LM-loss ranks fused by RRF).")
    commands = parser.add_subparsers(dest="command", required=True)
    ranker = commands.add_parser("rank", help="rank the training set from easy to hard with the student")
    ranker.add_argument("--model-path", required=True, help="the student checkpoint that judges difficulty (usually the SFT-initialised student)")
    ranker.add_argument("--data-dir", required=True, help="processed dataset whose train split is ranked")
    ranker.add_argument("--ranking", required=True, help="output ranking.jsonl; its meta goes beside it as ranking.meta.json")
    ranker.add_argument("--rrf-k", type=float, default=60.0, help="reciprocal-rank-fusion constant k")
    ranker.add_argument("--rank-ties", choices=RANK_TIES, default="sequential",
        help="sequential: ranks 1, 2, 3, ... after stable sorts, ties broken by order (POCL's tools/rank.py); mean: tied values share their mean rank")
    ranker.add_argument("--score-eos", action="store_true", help="count the response's EOS in the ranking loss (POCL leaves it out)")
    ranker.add_argument("--batch-size", type=int, default=16, help="examples per generation and loss batch")
    ranker.add_argument("--max-prompt-length", type=int, default=256, help="prompts longer than this are truncated from the left for generation")
    ranker.add_argument("--max-length", type=int, default=512, help="prompt + response tokens for the loss")
    ranker.add_argument("--seed", type=int, default=10, help="generation seed (matters only with --do-sample)")
    ranker.add_argument("--overwrite", action="store_true", help="recompute even if a matching ranking exists")
    add_generation_args(ranker, GenerationSettings(do_sample=False, max_new_tokens=128))
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if not (Path(args.model_path) / "config.json").is_file():
        raise SystemExit(f"error: --model-path {args.model_path}: not a local model directory (no config.json)")
    rank(args)


if __name__ == "__main__":
    main()
