"""MiniLLM rollouts (distillation_llm.rollouts): the cached sampler draws exactly the tokens a
full-recompute loop over the mixture (1 - alpha) q + alpha p draws with the same generator, stops
at EOS and pads after it; the log-probabilities and mask follow the reference's alignment."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from distillation_llm.rollouts import response_logprobs, response_mask, sample_mixed

PROMPTS = [[5, 17, 42, 9], [7, 3], [11, 12, 13]]


@pytest.fixture(scope="module")
def models(tiny_gpt2_dir, tiny_gpt2_teacher_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval(), AutoModelForCausalLM.from_pretrained(tiny_gpt2_teacher_dir).eval()


def _reference_loop(student, teacher, prompts, steps, alpha, eos, pad, vocab, seed):
    """One row at a time, recomputing every forward from scratch (no cache, no padding)."""
    generator = torch.Generator().manual_seed(seed)
    rows = [list(p) for p in prompts]
    done = [False] * len(rows)
    out = [[] for _ in rows]
    for _ in range(steps):
        probs = []
        for row in rows:
            ids = torch.tensor([row])
            q = torch.softmax(student(input_ids=ids).logits[0, -1, :vocab].double(), -1)
            p = torch.softmax(teacher(input_ids=ids).logits[0, -1, :vocab].double(), -1) if alpha else torch.zeros_like(q)
            probs.append(((1 - alpha) * q + alpha * p) if alpha else q)
        drawn = torch.multinomial(torch.stack(probs).float(), 1, generator=generator).squeeze(-1).tolist()
        for i, token in enumerate(drawn):
            token = pad if done[i] else token
            out[i].append(token)
            rows[i].append(token)
            done[i] = done[i] or token == eos
        if all(done):
            break
    return out


@pytest.mark.parametrize("alpha", [None, 0.2, 1.0])
def test_the_cached_sampler_draws_what_a_full_recompute_draws(models, tiny_tokenizer, alpha):
    student, teacher = models
    vocab, eos = len(tiny_tokenizer), tiny_tokenizer.eos_token_id
    with torch.no_grad():
        expected = _reference_loop(student, teacher, PROMPTS, 12, alpha or 0.0, eos, eos, vocab, seed=3)
        query, response = sample_mixed(student, teacher, PROMPTS, max_new_tokens=12, alpha=alpha, eos_id=eos, pad_id=eos,
                                       vocab=vocab, generator=torch.Generator().manual_seed(3))
    assert response.tolist() == expected
    assert query.shape == (3, 4) and query[1].tolist() == [eos, eos, 7, 3]  # left-padded


def test_alpha_one_samples_the_teacher_and_changes_the_draws(models, tiny_tokenizer):
    student, teacher = models
    vocab, eos = len(tiny_tokenizer), tiny_tokenizer.eos_token_id
    draws = {alpha: sample_mixed(student, teacher, PROMPTS, max_new_tokens=12, alpha=alpha, eos_id=eos, pad_id=eos, vocab=vocab,
                                 generator=torch.Generator().manual_seed(5))[1] for alpha in (None, 1.0)}
    assert not torch.equal(draws[None], draws[1.0])


def test_responses_stop_at_eos_and_the_mask_counts_the_eos_target(models, tiny_tokenizer):
    student, teacher = models
    eos = tiny_tokenizer.eos_token_id
    query = torch.tensor([[eos, 7, 3], [5, 6, 8]])
    response = torch.tensor([[9, 10, eos, eos], [11, eos, eos, eos]])  # 2 and 1 tokens, then EOS, then padding
    mask = response_mask(query, response, eos)
    assert mask.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]
    logprobs, mask2 = response_logprobs(student, query, response, eos, len(tiny_tokenizer), rows=1)
    assert torch.equal(mask, mask2)
    with torch.no_grad():
        for i in range(2):
            start = int((query[i] != eos).nonzero()[0])
            ids = torch.cat([query[i, start:], response[i]])[None]
            logp = torch.log_softmax(student(input_ids=ids).logits[0, :, : len(tiny_tokenizer)].float(), -1)
            p = query.shape[1] - start
            for t in range(response.shape[1]):
                expected = logp[p - 1 + t, response[i, t]].item() if mask[i, t] else 0.0
                assert logprobs[i, t].item() == pytest.approx(expected, abs=1e-5)
