"""MiniLLM's rollouts: responses sampled from the student mixed with the teacher, and the
log-probabilities both models give them, as DistiLLM's `minillm/sampler.py` and `reward.py` do.

    query, response = sample_mixed(student, teacher, prompts, max_new_tokens=256, alpha=0.2, ...)
    student_lp, mask = response_logprobs(student, query, response, pad_id, vocab)
    teacher_lp, _ = response_logprobs(teacher, query, response, pad_id, vocab)

Each token is drawn from (1 - alpha) q + alpha p at temperature 1 with top-k and top-p off (the
MiniLLM launchers' sampling settings), the student q and teacher p over the tokenizer's `vocab`
tokens. Prompts are left-padded with `pad_id`, as the reference's prompt batches; a response
stops at its first EOS and is padded with `pad_id` after it.

The tensors are aligned as the reference's: position t of `mask` and of the log-probabilities is
the prediction of response token t, from the token before it; it counts where that token is not
the pad token (so, with pad = EOS as for GPT-2, up to and including the first EOS).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _positions(attention_mask: Tensor) -> Tensor:
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


def left_pad(prompts: list[list[int]], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """[B, P] ids left-padded with `pad_id` and their attention mask."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        if not prompt:
            raise ValueError(f"prompt {row} is empty: a rollout needs at least one prompt token")
        ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long, device=device)
        mask[row, width - len(prompt):] = 1
    return ids, mask


@torch.no_grad()
def sample_mixed(
    student: nn.Module,
    teacher: nn.Module | None,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    alpha: float | None,
    eos_id: int,
    pad_id: int,
    vocab: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """(query [B, P], response [B, R]) with R <= max_new_tokens: each token from the mixture of the
    student's and (alpha > 0) the teacher's next-token distributions, drawn with `generator`."""
    device = next(student.parameters()).device
    query, attention = left_pad(prompts, pad_id, device)
    models = [student] + ([teacher] if alpha else [])
    caches: list = [None] * len(models)
    tokens, positions = query, _positions(attention)
    finished = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    response = []
    for _ in range(max_new_tokens):
        probs = None
        for index, model in enumerate(models):
            out = model(input_ids=tokens, attention_mask=attention, position_ids=positions, past_key_values=caches[index], use_cache=True)
            caches[index] = out.past_key_values
            dist = torch.softmax(out.logits[:, -1, :vocab].float(), dim=-1)
            weight = 1.0 if len(models) == 1 else (1 - alpha if index == 0 else alpha)
            probs = weight * dist if probs is None else probs + weight * dist
        token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        response.append(token)
        finished |= token == eos_id
        if finished.all():
            break
        tokens = token[:, None]
        attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=-1)
        positions = positions[:, -1:] + 1
    return query, torch.stack(response, dim=1)


def model_inputs(query: Tensor, response: Tensor, pad_id: int) -> dict[str, Tensor]:
    """The reference's `get_model_inputs`: prompt + response, attention on every non-pad token,
    positions counted over the attended tokens."""
    tokens = torch.cat([query, response], dim=1)
    attention = (tokens != pad_id).long()
    return {"input_ids": tokens, "attention_mask": attention, "position_ids": _positions(attention)}


def response_mask(query: Tensor, response: Tensor, pad_id: int) -> Tensor:
    """[B, R]: 1 where response token t is predicted from a non-pad token (the reference's mask)."""
    tokens = torch.cat([query, response], dim=1)
    start = query.shape[1] - 1
    return (tokens[:, start:start + response.shape[1]] != pad_id).long()


@torch.no_grad()
def response_logprobs(model: nn.Module, query: Tensor, response: Tensor, pad_id: int, vocab: int, rows: int = 8) -> tuple[Tensor, Tensor]:
    """(log-probabilities [B, R] of the response tokens under `model`, 0 where masked; mask [B, R]),
    `rows` responses at a time so that [rows, R, V] logits are the most held."""
    mask = response_mask(query, response, pad_id)
    start = query.shape[1] - 1
    out = torch.zeros(response.shape, dtype=torch.float32, device=response.device)
    for first in range(0, query.shape[0], rows):
        part = slice(first, first + rows)
        logits = model(**model_inputs(query[part], response[part], pad_id), use_cache=False).logits
        logits = logits[:, start:start + response.shape[1], :vocab].float()
        picked = torch.log_softmax(logits, dim=-1).gather(-1, response[part, :, None]).squeeze(-1)
        out[part] = picked * mask[part]
    return out, mask
