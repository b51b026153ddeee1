"""Shared fixtures: a tokenizer trained here and tiny causal LMs built from configs (no downloads)."""

import json
import os
import random
from pathlib import Path

import pytest

# Tests must never reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_EVAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "eval"

_WORDS = (
    "the a an of to in and is was for on with as by at from that this it be are or not which have has "
    "write describe explain list give answer question story poem summary number color animal city river "
    "mountain water fire earth wind sun moon star tree flower bird fish dog cat red blue green yellow "
    "one two three four five six seven eight nine ten first second last small large quick slow happy sad"
).split()


def multiprocess_env(processes: int, **extra: str) -> dict[str, str]:
    """Environment for a `torchrun --nproc_per_node <processes>` test: gloo on CPU unless this
    machine has a GPU for every process (on a one-GPU machine rank 1 would be handed `cuda:1`),
    one intra-op thread per process, and none of the distributed variables of in-process runs."""
    import torch

    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    if torch.cuda.device_count() < processes:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def tiny_corpus(n: int = 300, seed: int = 0) -> list[str]:
    """Text in the shape of instruction data, for training the test tokenizer."""
    from distillation_llm.instructions import PROMPT_NO_INPUT, PROMPT_WITH_INPUT

    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        sentence = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 16)))
        texts.append(PROMPT_NO_INPUT.format(instruction=sentence.capitalize() + "?"))
        texts.append(PROMPT_WITH_INPUT.format(instruction=sentence, input=sentence[::-1]))
        texts.append(sentence + ".")
    return texts


def write_instruction_jsonl(path: Path, n: int, seed: int = 0, with_input_every: int = 3) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 10))]
        row = {"instruction": "Repeat the words: " + " ".join(words), "input": "", "output": " ".join(words)}
        if i % with_input_every == 0:
            row["input"] = "Words: " + ", ".join(words)
        rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return rows


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    from distillation_llm.toy import train_bpe_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    train_bpe_tokenizer(tiny_corpus(), out, vocab_size=400)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def _model_dir(tmp_path_factory, tokenizer, kind, name, **kwargs) -> Path:
    from distillation_llm.toy import make_causal_lm

    out = tmp_path_factory.mktemp(name)
    make_causal_lm(kind, out, tokenizer, **kwargs)
    return out


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """The student: a 2-layer GPT-2 with dropout 0.1, like a real one (train/eval-mode and RNG bugs show)."""
    return _model_dir(tmp_path_factory, tiny_tokenizer, "gpt2", "gpt2-student", hidden_size=32, num_layers=2, num_heads=2, dropout=0.1, seed=1)


@pytest.fixture(scope="session")
def tiny_gpt2_teacher_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A wider GPT-2 teacher whose vocabulary is padded to a multiple of 64, like gpt2's 50304."""
    vocab = (len(tiny_tokenizer) + 63) // 64 * 64
    return _model_dir(
        tmp_path_factory, tiny_tokenizer, "gpt2", "gpt2-teacher", hidden_size=48, num_layers=2, num_heads=4, vocab_size=vocab, dropout=0.1, seed=2
    )


@pytest.fixture(scope="session")
def tiny_opt_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    return _model_dir(tmp_path_factory, tiny_tokenizer, "opt", "opt", hidden_size=32, num_layers=2, num_heads=2, dropout=0.1, seed=3)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    return _model_dir(tmp_path_factory, tiny_tokenizer, "llama", "llama", hidden_size=32, num_layers=2, num_heads=2, seed=4)
