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
    """Build a randomly initialised causal LM of family `kind` (gpt2, opt or llama) from a config,
    save it with its tokenizer to `out_dir` (safetensors) and return the model.

    `vocab_size` defaults to the tokenizer's length; a larger value mimics a padded vocabulary.
    """
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, OPTConfig

    vocab_size = vocab_size or len(tokenizer)
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if kind == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size, n_positions=max_positions, n_embd=hidden_size, n_layer=num_layers, n_head=num_heads,
            resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, **special,
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
    else:
        raise ValueError(f"unknown model kind '{kind}'; valid: gpt2, opt, llama")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return model
