"""Small, local stand-ins for real checkpoints: a byte-level BPE tokenizer trained on given text,
and causal LMs built from configs. Used by the embedded demo and by the tests; nothing is
downloaded."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

SPECIAL_TOKEN = "<|endoftext|>"


def train_bpe_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 1024):
    """Train a GPT-2-style byte-level BPE tokenizer and save it as a transformers tokenizer.

    `<|endoftext|>` serves as BOS, EOS and padding, as in GPT-2. Returns the loaded
    `PreTrainedTokenizerFast`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=SPECIAL_TOKEN,
        eos_token=SPECIAL_TOKEN,
        unk_token=SPECIAL_TOKEN,
        pad_token=SPECIAL_TOKEN,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(out_dir)
    return wrapped


KINDS = ("gpt2", "opt", "llama", "qwen2")


def make_causal_lm(
    kind: str,
    out_dir: str | Path,
    tokenizer,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_positions: int = 256,
    vocab_size: int | None = None,
    dropout: float = 0.0,
    seed: int = 0,
):
    """Build a randomly initialised causal LM of family `kind` (one of KINDS) from a config,
    save it with its tokenizer to `out_dir` (safetensors) and return the model.

    `vocab_size` defaults to the tokenizer's length; a larger value mimics a padded vocabulary.
    """
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, OPTConfig, Qwen2Config

    vocab_size = vocab_size or len(tokenizer)
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if kind == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size, n_positions=max_positions, n_embd=hidden_size, n_layer=num_layers, n_head=num_heads,
            resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
            activation_function="gelu_pytorch_tanh",  # gelu_new's maths in one native kernel: faster on CPU
            **special,
        )
    elif kind == "opt":
        config = OPTConfig(
            vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
            ffn_dim=4 * hidden_size, max_position_embeddings=max_positions, word_embed_proj_dim=hidden_size,
            dropout=dropout, attention_dropout=dropout, **special,
        )
    elif kind == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
            num_attention_heads=num_heads, num_key_value_heads=num_heads, max_position_embeddings=max_positions,
            tie_word_embeddings=False, **special,
        )
    elif kind == "qwen2":  # tied embeddings and grouped-query attention, as Qwen2.5's small models
        config = Qwen2Config(
            vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
            num_attention_heads=num_heads, num_key_value_heads=max(1, num_heads // 2), max_position_embeddings=max_positions,
            tie_word_embeddings=True, attention_dropout=dropout, **special,
        )
    else:
        raise ValueError(f"unknown model kind '{kind}'; valid: {', '.join(KINDS)}")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return model


def _instruction_texts(path: Path) -> list[str]:
    """Prompt + response texts of an instruction JSONL file, for tokenizer training."""
    from distillation_llm.instructions import load_instruction_jsonl

    examples, _ = load_instruction_jsonl(path)
    return [example.prompt + reference for example in examples for reference in example.references]


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m distillation_llm.toy", description="Build a local tokenizer or a small model from a config.")
    commands = parser.add_subparsers(dest="command", required=True)
    tok = commands.add_parser("tokenizer", help="train a byte-level BPE tokenizer on an instruction JSONL file")
    tok.add_argument("--data", required=True, help="instruction JSONL file whose prompts and outputs the tokenizer is trained on")
    tok.add_argument("--out", required=True, help="directory the transformers tokenizer is saved to")
    tok.add_argument("--vocab-size", type=int, default=1024, help="BPE vocabulary size, special token included")
    model = commands.add_parser("model", help="create a randomly initialised causal LM from a config")
    model.add_argument("--kind", default="gpt2", choices=KINDS, help="model family")
    model.add_argument("--tokenizer", required=True, help="tokenizer directory (saved beside the model)")
    model.add_argument("--out", required=True, help="directory the model is saved to (safetensors)")
    model.add_argument("--hidden-size", type=int, default=64, help="width of the model")
    model.add_argument("--num-layers", type=int, default=2, help="number of transformer blocks")
    model.add_argument("--num-heads", type=int, default=4, help="attention heads per block")
    model.add_argument("--max-positions", type=int, default=256, help="longest sequence the position embeddings cover")
    model.add_argument("--seed", type=int, default=0, help="initialisation seed")
    args = parser.parse_args(argv)
    if args.command == "tokenizer":
        tokenizer = train_bpe_tokenizer(_instruction_texts(Path(args.data)), args.out, vocab_size=args.vocab_size)
        print(f"trained a {len(tokenizer)}-token BPE tokenizer on {args.data} -> {args.out}")
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, local_files_only=True)
        built = make_causal_lm(
            args.kind, args.out, tokenizer, hidden_size=args.hidden_size, num_layers=args.num_layers,
            num_heads=args.num_heads, max_positions=args.max_positions, seed=args.seed,
        )
        print(f"created {args.kind} with {sum(p.numel() for p in built.parameters()) / 1e6:.2f}M parameters -> {args.out}")


if __name__ == "__main__":
    main()
