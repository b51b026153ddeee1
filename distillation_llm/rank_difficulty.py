"""POCL difficulty ranking of a processed training set by the student itself.

    python -m distillation_llm.rank_difficulty rank --model-path STUDENT_INIT --data-dir processed_data/dolly/full/gpt2 \
        --ranking results/pocl/ranking.jsonl

For every training example the student (1) generates a response (greedy by default) and is scored
by ROUGE-L against the references, and (2) is scored by its mean LM loss on the reference
response. `abkd.pocl.reciprocal_rank_fusion` fuses the two ranks. Writes `ranking.jsonl` (easy to
hard: id, both signals, both ranks, fused score) and `ranking.meta.json`, which names the dataset
and the checkpoint; a ranking whose meta matches is reused instead of recomputed.

The inputs are POCL's (`--rank-inputs pocl`, tools/generate_data_main.py reading its examples
through data_utils/prompt_datasets.py): the prompt text is tokenised again *with* the tokenizer's
special tokens (a BOS first for OPT and LLaMA, nothing for GPT-2) and keeps its first
--max-prompt-length tokens, for generation and for the loss alike; the first reference is tokenised
alone, also with special tokens, and keeps its first --max-length - --max-prompt-length tokens.
`--rank-inputs processed` scores the processed `prompt_ids` and `response_ids` instead, the tokens
the student trains on.
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
from distillation_llm.data import IGNORE_INDEX, load_processed
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


RANK_INPUTS = ("pocl", "processed")


def pocl_example(
    prompt_ids: list[int], reference_ids: list[int], eos_token_id: int, max_prompt_length: int, max_response_length: int,
    score_eos: bool = False,
) -> dict:
    """The sequence POCL scores (tools/generate_data_main.py `run_model`, data_utils/prompt_datasets.py):
    the prompt's first `max_prompt_length` tokens, then the reference tokenised alone, both with the
    tokenizer's special tokens, the reference cut to its first `max_response_length` tokens.

    POCL pads with EOS and then treats every token equal to EOS as padding: it is never a target
    and nothing attends to it. For OPT, whose BOS is its EOS, that hides both BOS tokens (the
    prompt's and the response's) from the loss's forward pass, while generation attends to the
    prompt's; LLaMA's BOS is no EOS, so the BOS opening its response is a target. `score_eos`
    appends an EOS to the reference and scores it (if it fits). Returns `input_ids`, `targets`
    (each token's target id, or IGNORE_INDEX) and `attention_mask`, lists of one length.
    """
    prompt = list(prompt_ids)[:max_prompt_length]
    response = list(reference_ids)
    eos_kept = score_eos and len(response) < max_response_length
    response = (response + [eos_token_id] * eos_kept)[:max_response_length]
    tokens = prompt + response
    targets = [IGNORE_INDEX] * len(prompt) + [IGNORE_INDEX if t == eos_token_id else t for t in response]
    if eos_kept:
        targets[-1] = eos_token_id
    return {"input_ids": tokens, "targets": targets, "attention_mask": [int(t != eos_token_id) for t in tokens]}


def scored_row(row: dict, eos_token_id: int, max_response_length: int, score_eos: bool = False) -> dict:
    """`--rank-inputs processed`: the processed prompt and the response tokens the ranking loss
    scores, the response without its EOS (`score_eos` keeps it), cut to its first
    `max_response_length` tokens."""
    response = list(row["response_ids"])
    if response and response[-1] == eos_token_id and not score_eos:
        response = response[:-1]
    return {"prompt_ids": list(row["prompt_ids"]), "response_ids": response[:max_response_length]}


def processed_example(row: dict, eos_token_id: int, max_response_length: int, max_length: int, score_eos: bool = False) -> dict:
    """`scored_row` as `pocl_example`'s lists, cut to `max_length` tokens; every response token is a
    target and every token is attended to."""
    scored = scored_row(row, eos_token_id, max_response_length, score_eos)
    tokens = (scored["prompt_ids"] + scored["response_ids"])[:max_length]
    targets = ([IGNORE_INDEX] * len(scored["prompt_ids"]) + scored["response_ids"])[:max_length]
    return {"input_ids": tokens, "targets": targets, "attention_mask": [1] * len(tokens)}


def _loss_batch(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids` and `attention_mask` [batch, length], and `labels` [batch, length]:
    position t is labelled with the target of token t + 1."""
    length = max(len(example["input_ids"]) for example in examples)
    input_ids = torch.zeros((len(examples), length), dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for i, example in enumerate(examples):
        n = len(example["input_ids"])
        input_ids[i, :n] = torch.tensor(example["input_ids"])
        attention_mask[i, :n] = torch.tensor(example["attention_mask"])
        labels[i, : n - 1] = torch.tensor(example["targets"][1:], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@torch.no_grad()
def example_losses(model, examples: list[dict], batch_size: int, device) -> list[float]:
    """Mean token cross-entropy of the model on each example's targets (`pocl_example`,
    `processed_example`); 0 for an example without one."""
    model.eval()
    # POCL passes positions counted over the attended tokens to GPT-2 only. OPT counts them from
    # the attention mask itself (so its hidden BOS gets the same position as in POCL); rotary
    # models see the positions of right padding, which differ from POCL's left-padded ones by a
    # shift that rotary attention does not see.
    gpt2_positions = getattr(model.config, "model_type", None) == "gpt2"
    losses = []
    for index in tqdm(batches(range(len(examples)), batch_size), desc="loss", leave=False):
        batch = {k: v.to(device) for k, v in _loss_batch([examples[i] for i in index]).items()}
        mask = batch["attention_mask"]
        positions = {"position_ids": (mask.cumsum(-1) - 1) * mask} if gpt2_positions else {}
        logits = model(input_ids=batch["input_ids"], attention_mask=mask, **positions).logits.float()
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
        "rank_inputs": args.rank_inputs,
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

    max_response_length = args.max_length - args.max_prompt_length
    eos = tokenizer.eos_token_id
    if args.rank_inputs == "pocl":
        prompts = tokenizer(list(train["prompt"]), add_special_tokens=True)["input_ids"]
        references = tokenizer([refs[0] for refs in train["references"]], add_special_tokens=True)["input_ids"]
        examples = [
            pocl_example(prompt, reference, eos, args.max_prompt_length, max_response_length, args.score_eos)
            for prompt, reference in zip(prompts, references)
        ]
    else:
        prompts = [list(row["prompt_ids"]) for row in train]
        examples = [processed_example(row, eos, max_response_length, args.max_length, args.score_eos) for row in train]

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_causal_lm(args.model_path, device=device)
    # `generate` keeps a prompt's first --max-prompt-length tokens, as pocl_example does.
    output = generate(model, tokenizer, prompts, settings, batch_size=args.batch_size, max_prompt_length=args.max_prompt_length)
    rouge = [max_over_references(rouge_l, text, row["references"]) for text, row in zip(output.texts, train)]
    losses = example_losses(model, examples, args.batch_size, device)
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
    ranker.add_argument(
        "--rank-inputs", choices=RANK_INPUTS, default="pocl",
        help="pocl: prompt text tokenised with the tokenizer's special tokens (a BOS for OPT/LLaMA), first reference tokenised alone "
        "(POCL's tools/generate_data_main.py); processed: the dataset's prompt_ids and response_ids, the tokens the student trains on")
    ranker.add_argument("--score-eos", action="store_true", help="count an EOS after the response in the ranking loss (POCL scores none)")
    ranker.add_argument("--batch-size", type=int, default=16, help="examples per generation and loss batch")
    ranker.add_argument("--max-prompt-length", type=int, default=256, help="a longer prompt keeps its first this many tokens, for generation and for the loss (as POCL)")
    ranker.add_argument("--max-length", type=int, default=512, help="the loss scores the response's first max-length - max-prompt-length tokens")
    ranker.add_argument("--seed", type=int, default=10, help="generation seed (matters only with --do-sample)")
    ranker.add_argument("--overwrite", action="store_true", help="recompute even if a matching ranking exists")
    add_generation_args(ranker, GenerationSettings(do_sample=False, max_new_tokens=128))
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if not (Path(args.model_path) / "config.json").is_file():
        raise SystemExit(f"error: --model-path {args.model_path}: not a local model directory (no config.json)")
    if args.max_length <= args.max_prompt_length:
        raise SystemExit(f"error: --max-length {args.max_length} leaves no response tokens after --max-prompt-length {args.max_prompt_length}")
    rank(args)


if __name__ == "__main__":
    main()
