"""MiniLLM's policy-gradient terms (Gu et al., ICLR 2024), as DistiLLM's `minillm/` computes them.

MiniLLM minimises the reverse KL KL(q_student || p_teacher) over the student's own responses by
policy gradient. One rollout round samples responses y to prompts x, each token from the mixture
(1 - alpha) q + alpha p (`--teacher-mixed-alpha`), and stores per response token t:

    reward      r_t = (log p(y_t | y_<t) - log q(y_t | y_<t)) / reward_scaling, clipped to +-clip
    weight      w_t = q(y_t) / ((1 - alpha) q(y_t) + alpha p(y_t))   (importance weight of the mixture)
    old log q   the student's log-probabilities at sampling time

The update then takes `ppo_epochs` passes over the stored responses, each mini-batch with

    advantage   A_t = whiten(sum_{k >= t} gamma^(k-t) r_k / (valid tokens from t to the end))
    loss        sum_t max(-A_t w_t rho_t, -A_t clip(w_t rho_t, 1 - eps, 1 + eps)) m_t / sum_t m_t,
                rho_t = exp(log q_new - log q_old)
    + the single-step regulariser: the per-token KL(q || p) over the whole vocabulary, averaged over
      the response tokens (computed by `abkd.fused.fused_linear_divergence("rkl", ...)` so that the
      vocabulary is never held in full),

where m_t masks the tokens of a response up to and including its EOS. Every function takes
[B, T] tensors aligned on the response tokens (position t predicts response token t) and the
[B, T] mask; masked positions carry log-probabilities 0, as in the reference.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch import distributed as dist


def importance_weights(student_logprobs: Tensor, teacher_logprobs: Tensor, alpha: float | None) -> Tensor:
    """w_t = q / ((1 - alpha) q + alpha p) per sampled token (1 without teacher mixing). At masked
    positions both log-probabilities are 0, so the weight is 1 there."""
    if alpha is None:
        return torch.ones_like(student_logprobs)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"--teacher-mixed-alpha must lie in [0, 1], got {alpha}")
    student, teacher = student_logprobs.float(), teacher_logprobs.float()
    mixture = torch.log((1 - alpha) * torch.exp(student) + alpha * torch.exp(teacher))
    return torch.exp(student - mixture)


def token_rewards(
    teacher_logprobs: Tensor, student_logprobs: Tensor, mask: Tensor, scaling: float | None = None, clip: float | None = None
) -> Tensor:
    """r_t = log p - log q of each sampled token (0 where masked), divided by `scaling` and clipped
    to [-clip, clip] (the reference's --reward-scaling and --cliprange-reward; None or 0 skips)."""
    rewards = (teacher_logprobs - student_logprobs) * mask
    if scaling is not None:
        rewards = rewards / scaling
    if clip:
        rewards = torch.clamp(rewards, -clip, clip)
    return rewards


def _global_mean_var(values: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and (unbiased) variance over every element, across processes when distributed."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        stats = torch.stack([values.sum(), values.square().sum(), torch.tensor(float(values.numel()), device=values.device)]).double()
        dist.all_reduce(stats)
        total, squares, count = stats
        mean = total / count
        var = (squares - count * mean**2) / (count - 1)
        return mean.to(values.dtype), var.to(values.dtype)
    var, mean = torch.var_mean(values)
    return mean, var


def advantages(rewards: Tensor, mask: Tensor, gamma: float = 0.95, whiten: bool = True) -> Tensor:
    """Discounted reward-to-go divided by the number of valid tokens from t to the end (1 past the
    response), then whitened over all [B, T] elements (across processes), as the reference's
    `_get_advantages_and_returns`."""
    rewards, mask = rewards.float(), mask.float()
    counts = torch.cumsum(mask, dim=-1)
    remaining = mask - counts + counts[:, -1:]  # valid tokens from t to the end
    remaining = torch.masked_fill(remaining, remaining == 0, 1)
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    returns = returns / remaining
    if whiten:
        mean, var = _global_mean_var(returns)
        returns = (returns - mean) * torch.rsqrt(var + 1e-8)
    return returns.detach()


def clipped_policy_loss(logprobs: Tensor, old_logprobs: Tensor, advantage: Tensor, mask: Tensor, weights: Tensor, cliprange: float = 0.2) -> Tensor:
    """The reference's `_pg_loss`: PPO's clipped objective on the importance-weighted ratio, averaged
    over the valid tokens of the mini-batch."""
    mask = mask.float()
    ratio = torch.exp(((logprobs - old_logprobs) * mask).float()) * weights
    unclipped = -advantage * ratio
    clipped = -advantage * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    return torch.sum(torch.max(unclipped, clipped) * mask) / mask.sum()


def sequence_reward(rewards: Tensor, mask: Tensor, gamma: float = 0.95, length_norm: bool = True) -> Tensor:
    """Per response: the discounted sum of its token rewards, divided by its length with
    --length-norm (the reference's logged `reward`)."""
    total = torch.zeros_like(rewards[:, 0], dtype=torch.float32)
    for t in reversed(range(rewards.shape[1])):
        total = gamma * total + rewards[:, t].float()
    return total / mask.float().sum(-1).clamp(min=1) if length_norm else total


def _chunk_logprobs(hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None) -> Tensor:
    logits = hidden @ weight.T
    if bias is not None:
        logits = logits + bias
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def token_logprobs(hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None = None, chunk_size: int = 512) -> Tensor:
    """log softmax(hidden @ weight.T + bias)[target] per row, differentiable, never holding more
    than `chunk_size` rows of [V] logits (each chunk's logits are recomputed in the backward pass).
    hidden [..., H], weight [V, H], targets [...] -> [...], float32 for half-precision inputs."""
    from torch.utils.checkpoint import checkpoint

    lead = targets.shape
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    parts = [
        checkpoint(_chunk_logprobs, hidden[start:start + chunk_size], weight, targets[start:start + chunk_size], bias, use_reentrant=False)
        for start in range(0, hidden.shape[0], chunk_size)
    ]
    return torch.cat(parts).reshape(lead)
