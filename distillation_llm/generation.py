"""Batched generation from instruction prompts, with Hugging Face `generate` or vLLM.

    output = generate(model, tokenizer, prompts, GenerationSettings(do_sample=True, seed=10))
    output.texts, output.token_ids, output.prompt_truncated

Prompts are strings or lists of token ids. Strings are tokenised without special tokens, as
`tools.process_data_dolly` does for training, or with the tokenizer's default ones (a BOS for
OPT/LLaMA) with `add_special_tokens=True`, as DistiLLM's `evaluate_main.py` does. A prompt longer
than `max_prompt_length` keeps its first tokens, as DistiLLM's `PromptDataset` does. Only the
continuation is returned, cut before the first EOS.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

BACKENDS = ("auto", "hf", "vllm")


@dataclass
class GenerationSettings:
    """Decoding settings. The defaults are greedy decoding; MiniLLM-style evaluation samples at
    temperature 1 with top-k and top-p disabled (`top_k=0`, `top_p=1.0`) and bans repeated 6-grams
    (`no_repeat_ngram_size=6`, DistiLLM's `evaluate_main.py`); 0 bans nothing."""

    do_sample: bool = False
    top_k: int = 0
    top_p: float = 1.0
    temperature: float = 1.0
    max_new_tokens: int = 256
    num_beams: int = 1
    seed: int = 42
    no_repeat_ngram_size: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be at least 1, got {self.num_beams}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be 0 (disabled) or positive, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be 0 (no ban) or positive, got {self.no_repeat_ngram_size}")


@dataclass
class GenerationOutput:
    texts: list[str]  # decoded continuations, special tokens removed
    token_ids: list[list[int]]  # continuation ids, without the EOS and the padding after it
    prompt_truncated: int  # prompts cut to their first `max_prompt_length` tokens


def add_generation_args(parser: argparse.ArgumentParser, defaults: GenerationSettings | None = None) -> argparse._ArgumentGroup:
    """Add the decoding flags (MiniLLM/DistiLLM names). `defaults` sets their default values, e.g.
    sampling for evaluation; `--no-do-sample` then selects greedy decoding."""
    defaults = defaults or GenerationSettings()
    group = parser.add_argument_group("generation")
    group.add_argument(
        "--do-sample", action=argparse.BooleanOptionalAction, default=defaults.do_sample,
        help=f"sample the continuation (--no-do-sample: greedy or beam search); default {'sampling' if defaults.do_sample else 'greedy'}",
    )
    group.add_argument("--top-k", type=int, default=defaults.top_k, help=f"sample only from the k most likely tokens (0 disables top-k; default {defaults.top_k})")
    group.add_argument("--top-p", type=float, default=defaults.top_p, help=f"nucleus sampling: keep the smallest token set with this probability mass (1.0 disables; default {defaults.top_p})")
    group.add_argument("--temperature", type=float, default=defaults.temperature, help=f"divide the logits by this before sampling (default {defaults.temperature})")
    group.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens, help=f"generate at most this many tokens after the prompt (default {defaults.max_new_tokens})")
    group.add_argument(
        "--no-repeat-ngram-size", type=int, default=defaults.no_repeat_ngram_size, metavar="N",
        help=f"never generate an n-gram of N tokens twice in a sequence, prompt included (0 bans nothing; default {defaults.no_repeat_ngram_size}; Hugging Face backend only)",
    )
    group.add_argument("--num-beams", type=int, default=defaults.num_beams, help=f"beam-search width; 1 decodes one hypothesis (default {defaults.num_beams}; Hugging Face backend only)")
    group.add_argument(
        "--backend", choices=BACKENDS, default="auto",
        help="generation engine: vllm (needs the vllm package and a CUDA device), hf (transformers generate), auto (vllm when usable, else hf)",
    )
    return group


def settings_from_args(args: argparse.Namespace, seed: int) -> GenerationSettings:
    """The settings of the flags added by `add_generation_args`, seeded with `seed`."""
    return GenerationSettings(
        do_sample=args.do_sample, top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
        max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, seed=seed,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
    )


# Backends ---------------------------------------------------------------------------------------


def _vllm_importable() -> bool:
    return importlib.util.find_spec("vllm") is not None


def resolve_backend(backend: str = "auto", no_repeat_ngram_size: int = 0) -> str:
    """"hf" or "vllm". `auto` picks vLLM when the package is installed and CUDA is available and no
    n-gram ban is asked for (vLLM's sampling has none); asking for vllm explicitly when it cannot
    run raises RuntimeError saying why."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown generation backend '{backend}'; valid: {', '.join(BACKENDS)}")
    if backend == "hf":
        return "hf"
    missing = []
    if no_repeat_ngram_size > 0:
        missing.append(f"vLLM has no no_repeat_ngram_size (--no-repeat-ngram-size {no_repeat_ngram_size}; 0 lifts the ban)")
    if not _vllm_importable():
        missing.append("the vllm package is not installed (pip install 'abkd[gpu]')")
    if not torch.cuda.is_available():
        missing.append("no CUDA device is available")
    if not missing:
        return "vllm"
    if backend == "vllm":
        raise RuntimeError(f"--backend vllm cannot run: {'; '.join(missing)}; use --backend hf")
    return "hf"


# Generation -------------------------------------------------------------------------------------


def _prompt_ids(
    tokenizer, prompts: Sequence[str | Sequence[int]], max_prompt_length: int, add_special_tokens: bool = False
) -> tuple[list[list[int]], int]:
    texts = [p for p in prompts if isinstance(p, str)]
    encoded = iter(tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"] if texts else [])
    ids = [list(next(encoded)) if isinstance(p, str) else list(p) for p in prompts]
    for i, row in enumerate(ids):
        if not row:
            raise ValueError(f"prompt {i} is empty: generation needs at least one prompt token")
    truncated = sum(len(row) > max_prompt_length for row in ids)
    # DistiLLM keeps a long prompt's beginning (PromptDataset: `data[:max_prompt_length]`).
    return [row[:max_prompt_length] for row in ids], truncated


def _eos_ids(tokenizer, model_generation_config=None) -> list[int]:
    eos = [tokenizer.eos_token_id]
    model_eos = getattr(model_generation_config, "eos_token_id", None)
    eos += model_eos if isinstance(model_eos, list) else [model_eos]
    return sorted({i for i in eos if i is not None})


def _cut_at_eos(ids: Sequence[int], eos_ids: Sequence[int]) -> list[int]:
    ids = list(ids)
    stops = [ids.index(e) for e in eos_ids if e in ids]
    return ids[: min(stops)] if stops else ids


def _hf_generation_config(settings: GenerationSettings, pad_id: int, eos_ids: list[int]):
    from transformers import GenerationConfig

    # transformers fills every field left unset from the checkpoint's generation_config.json, so
    # all decoding knobs are set here: evaluation must not depend on a checkpoint's own defaults.
    if settings.do_sample:
        decoding = dict(temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p)
    else:
        # Neutral values, which greedy/beam decoding ignores without a warning.
        decoding = dict(temperature=1.0, top_k=50, top_p=1.0)
    return GenerationConfig(
        do_sample=settings.do_sample, num_beams=settings.num_beams, max_new_tokens=settings.max_new_tokens,
        min_new_tokens=0, repetition_penalty=1.0, no_repeat_ngram_size=settings.no_repeat_ngram_size,
        num_return_sequences=1, use_cache=True,
        pad_token_id=pad_id, eos_token_id=eos_ids, **decoding,
    )


def _position_limit(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


class _TokenizerVocabulary:
    """Logits processor that forbids the rows of a padded embedding table beyond the tokenizer's
    vocabulary (e.g. GPT-2's 50257..50303), which no tokenizer can decode or a smaller-table
    student embed."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.shape[-1] > self.size:
            scores[:, self.size :] = -float("inf")
        return scores


def _generate_hf(model, tokenizer, prompt_ids, settings, batch_size, device, progress) -> list[list[int]]:
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = _eos_ids(tokenizer, getattr(model, "generation_config", None))
    config = _hf_generation_config(settings, pad_id, eos_ids)
    from transformers import LogitsProcessorList

    processors = LogitsProcessorList([_TokenizerVocabulary(len(tokenizer))])
    limit = _position_limit(model)
    longest = max(len(ids) for ids in prompt_ids)
    if limit is not None and longest + settings.max_new_tokens > limit:
        raise ValueError(
            f"the longest prompt ({longest} tokens) plus --max-new-tokens {settings.max_new_tokens} exceeds the model's "
            f"{limit} positions; lower --max-prompt-length or --max-new-tokens"
        )
    device = torch.device(device) if device is not None else next(model.parameters()).device
    # Longest first: batches of similar lengths need little padding, and an out-of-memory error
    # shows up on the first batch.
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    continuations: list[list[int]] = [[] for _ in prompt_ids]
    was_training = model.training
    model.eval()
    torch.manual_seed(settings.seed)
    try:
        with torch.no_grad(), tqdm(total=len(order), desc="generate", unit="prompt", disable=not progress) as bar:
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                width = max(len(prompt_ids[i]) for i in batch)
                # Left padding: every prompt ends at the same column, where generation starts.
                input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    ids = prompt_ids[i]
                    input_ids[row, width - len(ids) :] = torch.tensor(ids)
                    attention_mask[row, width - len(ids) :] = 1
                output = model.generate(
                    input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), generation_config=config,
                    logits_processor=processors,
                )
                for row, i in enumerate(batch):
                    continuations[i] = _cut_at_eos(output[row, width:].tolist(), eos_ids)
                bar.update(len(batch))
    finally:
        model.train(was_training)
    return continuations


@functools.lru_cache(maxsize=1)
def _vllm_engine(path: str):
    import vllm

    return vllm.LLM(model=path, tokenizer=path, dtype="auto")


def _generate_vllm(path: str, tokenizer, prompt_ids, settings, progress) -> list[list[int]]:
    from vllm import SamplingParams

    if settings.num_beams > 1:
        raise ValueError("--num-beams > 1 is not supported with --backend vllm; use --backend hf")
    if settings.no_repeat_ngram_size > 0:
        raise ValueError(
            f"--no-repeat-ngram-size {settings.no_repeat_ngram_size} is not supported with --backend vllm; "
            "use --backend hf or --no-repeat-ngram-size 0"
        )
    eos_ids = _eos_ids(tokenizer)
    sampling = settings.do_sample
    params = SamplingParams(
        n=1,
        temperature=settings.temperature if sampling else 0.0,  # 0 is greedy in vLLM
        top_p=settings.top_p if sampling else 1.0,
        top_k=settings.top_k if sampling and settings.top_k > 0 else -1,  # -1 disables top-k
        max_tokens=settings.max_new_tokens,
        stop_token_ids=eos_ids,
        seed=settings.seed,
    )
    requests = [{"prompt_token_ids": ids} for ids in prompt_ids]
    outputs = _vllm_engine(path).generate(requests, params, use_tqdm=progress)
    return [_cut_at_eos(out.outputs[0].token_ids, eos_ids) for out in outputs]


def generate(
    model_or_path: nn.Module | str | Path,
    tokenizer,
    prompts: Sequence[str | Sequence[int]],
    settings: GenerationSettings,
    *,
    batch_size: int = 8,
    max_prompt_length: int = 256,
    backend: str = "auto",
    device: torch.device | str | None = None,
    progress: bool = True,
    add_special_tokens: bool = False,
) -> GenerationOutput:
    """Continue each prompt; results are in the order of `prompts`.

    With the Hugging Face backend, prompts are sorted by length into left-padded batches of
    `batch_size`, decoded with the KV cache, and `torch.manual_seed(settings.seed)` is called once
    first, so sampled outputs are reproducible for a given seed and batch size. The model runs in
    eval mode under `torch.no_grad()`; its training mode is restored afterwards. A path is loaded
    (to `device`, default CUDA when available) for the hf backend and handed to vLLM as is.
    `backend="auto"` uses vLLM only for a model path and no n-gram ban; a loaded model always runs
    with hf. `add_special_tokens` applies to string prompts (token-id prompts are used as given).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if max_prompt_length < 1:
        raise ValueError(f"max_prompt_length must be at least 1, got {max_prompt_length}")
    if not prompts:
        return GenerationOutput(texts=[], token_ids=[], prompt_truncated=0)
    chosen = resolve_backend(backend, settings.no_repeat_ngram_size)
    is_path = isinstance(model_or_path, (str, Path))
    if chosen == "vllm" and not is_path:
        if backend == "vllm":
            raise ValueError("--backend vllm needs a model path, not a loaded model")
        chosen = "hf"
    prompt_ids, truncated = _prompt_ids(tokenizer, prompts, max_prompt_length, add_special_tokens)
    if chosen == "vllm":
        token_ids = _generate_vllm(str(model_or_path), tokenizer, prompt_ids, settings, progress)
    else:
        model = model_or_path
        if is_path:
            from distillation_llm.models import load_causal_lm

            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            model = load_causal_lm(model_or_path, device=device)
        token_ids = _generate_hf(model, tokenizer, prompt_ids, settings, batch_size, device, progress)
    texts = tokenizer.batch_decode(token_ids, skip_special_tokens=True)
    return GenerationOutput(texts=texts, token_ids=token_ids, prompt_truncated=truncated)
