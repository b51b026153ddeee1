"""POCL's ranking inputs (tools/generate_data_main.py through data_utils/prompt_datasets.py): the
prompt text tokenised with the tokenizer's special tokens (a BOS for OPT and LLaMA, none for
GPT-2) for generation and for the loss, and the reference tokenised alone for the loss."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_corpus, write_instruction_jsonl
from llama_like_tokenizer import train_llama_like_tokenizer

from distillation_llm import generation
from distillation_llm import rank_difficulty as R
from distillation_llm.data import IGNORE_INDEX
from distillation_llm.models import load_causal_lm
from distillation_llm.toy import make_causal_lm

MAX_PROMPT, MAX_LENGTH = 32, 48  # every prompt is cut; long references are cut to 16 tokens


def train_opt_like_tokenizer(out: Path) -> Path:
    """Byte-level BPE laid out as OPT's: <s> 0, <pad> 1, </s> 2, <unk> 3, and `</s>` serving as BOS
    and EOS, prepended to every text that is tokenised with special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(tiny_corpus(), trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="</s> $A", special_tokens=[("</s>", tokenizer.token_to_id("</s>"))])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="</s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    wrapped.save_pretrained(out)
    return out


def peaky_model(kind: str, out: Path, tokenizer) -> Path:
    """A tiny model whose embeddings (token and position) and output head are scaled by 25. A freshly
    initialised one predicts almost uniformly, so a wrong position or a hidden token would move its
    loss by a few millionths; this one's predictions are peaky, as a trained model's, and a loss
    comparison can fail."""
    from transformers import AutoModelForCausalLM

    make_causal_lm(kind, out, tokenizer, hidden_size=32, num_layers=2, num_heads=2, dropout=0.1, seed=5)
    model = AutoModelForCausalLM.from_pretrained(out)
    weights = {id(m.weight): m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    weights[id(model.get_output_embeddings().weight)] = model.get_output_embeddings().weight
    with torch.no_grad():
        for weight in weights.values():
            weight.mul_(25)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    return peaky_model("gpt2", tmp_path_factory.mktemp("peaky-gpt2"), tiny_tokenizer)


@pytest.fixture(scope="module", params=["gpt2", "opt", "llama"])
def family(request, tmp_path_factory, gpt2_dir):
    """(family, model directory with its tokenizer, processed data made with that tokenizer)."""
    from transformers import AutoTokenizer

    from tools import process_data_dolly

    root = tmp_path_factory.mktemp(f"rank-{request.param}")
    if request.param == "gpt2":
        model_dir = gpt2_dir
    else:
        train = train_opt_like_tokenizer if request.param == "opt" else train_llama_like_tokenizer
        tokenizer = AutoTokenizer.from_pretrained(train(root / "tokenizer"))
        model_dir = peaky_model(request.param, root / "model", tokenizer)
    write_instruction_jsonl(root / "raw" / "raw.jsonl", 10, seed=7)
    data_dir = root / "processed"
    process_data_dolly.main([
        "--data-dir", str(root / "raw"), "--processed-data-dir", str(data_dir), "--model-path", str(model_dir),
        "--max-prompt-length", "256", "--max-length", "512", "--dev-num", "0",
    ])
    return request.param, model_dir, data_dir


@pytest.fixture(scope="module")
def ranked(family, tmp_path_factory):
    """Rank with POCL's inputs, recording the prompt ids handed to Hugging Face `generate`."""
    name, model_dir, data_dir = family
    fed = []
    real = generation._generate_hf

    def recording(model, tokenizer, prompt_ids, *args, **kwargs):
        fed.extend(prompt_ids)
        return real(model, tokenizer, prompt_ids, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(generation, "_generate_hf", recording)
        path = tmp_path_factory.mktemp("ranking") / "ranking.jsonl"
        R.main([
            "rank", "--model-path", str(model_dir), "--data-dir", str(data_dir), "--ranking", str(path), "--backend", "hf",
            "--max-prompt-length", str(MAX_PROMPT), "--max-length", str(MAX_LENGTH), "--max-new-tokens", "4", "--batch-size", "4",
        ])
    losses = {row["id"]: row["loss"] for row in map(json.loads, path.read_text().splitlines())}
    return fed, losses


def train_rows(model_dir, data_dir):
    import datasets

    from distillation_llm.models import load_tokenizer

    return load_tokenizer(model_dir), list(datasets.load_from_disk(str(data_dir))["train"])


def test_generation_prompts_start_with_a_bos_where_the_tokenizer_adds_one(family, ranked):
    name, model_dir, data_dir = family
    fed, _ = ranked
    tokenizer, rows = train_rows(model_dir, data_dir)
    assert len(fed) == len(rows) and all(len(ids) == MAX_PROMPT for ids in fed)  # every prompt is longer: its start is kept
    bos = tokenizer.bos_token_id
    starts = {tuple(ids) for ids in fed}
    for row in rows:
        text = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        assert row["prompt_ids"][0] != bos  # the training data has no BOS
        if name == "gpt2":
            assert tuple(text[:MAX_PROMPT]) in starts
        else:
            assert tuple([bos] + text[: MAX_PROMPT - 1]) in starts
    assert all((ids[0] == bos) == (name != "gpt2") for ids in fed)


def pocl_loss_by_hand(model, tokenizer, prompt: str, reference: str) -> float:
    """POCL's run_model on one example: the prompt (with special tokens, first MAX_PROMPT tokens)
    left-padded with EOS to MAX_PROMPT, then the reference tokenised alone (first
    MAX_LENGTH - MAX_PROMPT tokens); tokens equal to EOS are padding, neither attended to nor targets;
    GPT-2 alone is given positions counted over the attended tokens."""
    eos = tokenizer.eos_token_id
    prompt_ids = tokenizer(prompt)["input_ids"][:MAX_PROMPT]
    response_ids = tokenizer(reference)["input_ids"][: MAX_LENGTH - MAX_PROMPT]
    ids = torch.tensor([[eos] * (MAX_PROMPT - len(prompt_ids)) + prompt_ids + response_ids])
    inputs, labels = ids[:, :-1], ids[:, 1:].clone()
    labels[labels == eos] = IGNORE_INDEX
    labels[:, : MAX_PROMPT - 1] = IGNORE_INDEX
    mask = (inputs != eos).long()
    extra = {"position_ids": (mask.cumsum(-1) - 1) * mask} if model.config.model_type == "gpt2" else {}
    with torch.no_grad():
        logits = model(input_ids=inputs, attention_mask=mask, **extra).logits.float()
    return F.cross_entropy(logits[0], labels[0], ignore_index=IGNORE_INDEX).item()


def test_loss_is_on_the_reference_tokenised_alone(family, ranked):
    name, model_dir, data_dir = family
    _, losses = ranked
    tokenizer, rows = train_rows(model_dir, data_dir)
    model = load_causal_lm(model_dir).eval()
    eos = tokenizer.eos_token_id
    differs = []
    for row in rows:
        by_hand = pocl_loss_by_hand(model, tokenizer, row["prompt"], row["references"][0])
        assert losses[row["id"]] == pytest.approx(by_hand, rel=1e-4), row["id"]
        # The same budget on the processed ids (no BOS; the response cut from the joint tokenisation),
        # as the ranking scored before and `--rank-inputs processed` still does.
        cut = {**row, "prompt_ids": row["prompt_ids"][:MAX_PROMPT]}
        [processed] = R.example_losses(model, [R.processed_example(cut, eos, MAX_LENGTH - MAX_PROMPT, 10**6)], 1, "cpu")
        differs.append(abs(processed - by_hand) > 1e-3 * by_hand)
    # OPT's BOS takes a prompt token's place and its response's (hidden) BOS is what predicts the
    # first response token; the LLaMA-like response alone starts with its BOS, a target, and
    # "▁word" where the joint text has "word". GPT-2 adds no BOS and tokenises these responses
    # alike in context and alone, so there the two inputs agree.
    assert all(differs) if name != "gpt2" else not any(differs)


def test_gpt2_positions_skip_a_hidden_eos(gpt2_dir):
    """An EOS inside GPT-2's text is hidden as POCL's padding is, and the tokens after it take the
    positions POCL gives them (counted over attended tokens), in a padded batch."""
    from distillation_llm.models import load_tokenizer

    tokenizer, model = load_tokenizer(gpt2_dir), load_causal_lm(gpt2_dir).eval()
    eos = tokenizer.eos_token_id
    prompt, reference = "Describe the sea.", "Wide<|endoftext|> and blue."
    response = tokenizer(reference)["input_ids"]
    assert eos in response[1:-1]
    examples = [
        R.pocl_example(tokenizer(text)["input_ids"], response, eos, MAX_PROMPT, MAX_LENGTH - MAX_PROMPT)
        for text in (prompt, prompt + " Name a star.")
    ]
    loss, _ = R.example_losses(model, examples, 2, "cpu")
    assert loss == pytest.approx(pocl_loss_by_hand(model, tokenizer, prompt, reference), rel=1e-4)


def test_pocl_example_masks_eos_valued_tokens_and_cuts_both_parts():
    # OPT: BOS = EOS = 2, hidden from attention and never a target.
    opt = R.pocl_example([2, 5, 6, 7], [2, 8, 9, 10], eos_token_id=2, max_prompt_length=3, max_response_length=3)
    assert opt == {"input_ids": [2, 5, 6, 2, 8, 9], "targets": [IGNORE_INDEX] * 4 + [8, 9], "attention_mask": [0, 1, 1, 0, 1, 1]}
    # LLaMA: BOS 1 is no EOS, so the response's BOS is a target.
    llama = R.pocl_example([1, 5], [1, 8], eos_token_id=2, max_prompt_length=8, max_response_length=8)
    assert llama == {"input_ids": [1, 5, 1, 8], "targets": [IGNORE_INDEX] * 2 + [1, 8], "attention_mask": [1, 1, 1, 1]}
    # --score-eos appends a scored EOS where it fits, and only there.
    assert R.pocl_example([5], [8, 9], 2, 8, 3, score_eos=True)["targets"] == [IGNORE_INDEX, 8, 9, 2]
    assert R.pocl_example([5], [8, 9], 2, 8, 2, score_eos=True)["targets"] == [IGNORE_INDEX, 8, 9]


def test_max_length_must_leave_response_tokens(tiny_gpt2_dir):
    with pytest.raises(SystemExit, match="leaves no response tokens"):
        R.main(["rank", "--model-path", str(tiny_gpt2_dir), "--data-dir", "x", "--ranking", "r.jsonl", "--max-length", "256"])
