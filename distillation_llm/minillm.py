"""MiniLLM (`--type minillm`) in the training loop: a batch source of rollouts and its objective.

`RolloutSource` plays DistiLLM's `PPOSampler` and rollout store. A round samples responses to
`--num-rollouts` prompts (divided among the processes) from the student mixed with the teacher
(`distillation_llm.rollouts`), scores them (rewards, importance weights, the student's
log-probabilities at sampling time: `abkd.minillm`) and stores them; the training loop then
draws `--ppo-epochs` shuffled passes over the store, one `--batch-size` mini-batch per
micro-batch, before the next round. The advantages are whitened over each optimizer step's
rollouts (the micro-batches of its gradient accumulation, on every process), the group the
reference whitens over when it runs one mini-batch per process and step. Prompts come from the
training split in an order of their own (`--seed-ppo`), so the loop's dataset rows are not used.

The store, the prompt order and the positions are the source's `state_dict()`, saved in each
rank's checkpoint, so that a run stopped inside a round or between PPO epochs resumes exactly.

`MiniLLMObjective.forward_train` is the reference's loss on one mini-batch: the clipped policy
loss on the student's new log-probabilities, plus the single-step regulariser (the per-token
KL(q || p) over the vocabulary, through the fused path) with `--single-step-reg`, plus
`--lm-coef` x ((1 - kd_ratio) CE + kd_ratio forward KL) on the `--lm-data-dir` batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from abkd import engine as E
from abkd import minillm
from abkd.fused import FusedLossOutput, default_chunk_size, fused_linear_divergence
from distillation_llm.models import split_head
from distillation_llm.objective import Objective, head_bias
from distillation_llm.rollouts import model_inputs, response_logprobs, sample_mixed

STORE_KEYS = ("query", "response", "mask", "old_logprobs", "rewards", "weights")


def _pad_right(rows: list[Tensor], value) -> Tensor:
    width = max(row.shape[-1] for row in rows)
    return torch.stack([torch.nn.functional.pad(row, (0, width - row.shape[-1]), value=value) for row in rows])


def _pad_left(rows: list[Tensor], value) -> Tensor:
    width = max(row.shape[-1] for row in rows)
    return torch.stack([torch.nn.functional.pad(row, (width - row.shape[-1], 0), value=value) for row in rows])


class RolloutSource:
    def __init__(self, args, prompts: Sequence[Sequence[int]], student: Callable[[], nn.Module], teacher: nn.Module, tokenizer, vocab: int):
        if not prompts:
            raise ValueError("--type minillm: the training split has no prompts to roll out")
        self.args, self.prompts, self.student, self.teacher, self.vocab = args, [list(p) for p in prompts], student, teacher, vocab
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_id = tokenizer.eos_token_id
        self.per_process = args.num_rollouts // E.world_size()
        if self.per_process < args.batch_size * args.gradient_accumulation_steps:
            raise ValueError(f"--num-rollouts {args.num_rollouts} gives {self.per_process} rollouts per process, fewer than one optimizer step "
                             f"takes (--batch-size {args.batch_size} x --gradient-accumulation-steps {args.gradient_accumulation_steps})")
        self.round, self.ppo_epoch, self.position = 0, 0, 0
        self.prompt_epoch, self.prompt_position = 0, 0
        self.store: dict[str, Tensor] | None = None
        self.order: list[int] = []
        self.advantage_cache: dict[int, Tensor] = {}
        self.round_stats: dict[str, float] = {}
        self.log: Callable[[str], None] | None = None  # finetune sets its RunLog.info: a line per round

    needs_initial_validation = False
    validates_at_epoch_ends = False  # the reference validates every --eval-interval steps only

    # Prompts ------------------------------------------------------------------------------------
    def _prompt_order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.args.seed_ppo + epoch)
        order = torch.randperm(len(self.prompts), generator=generator).tolist()
        return order[E.rank()::E.world_size()]

    def _next_prompts(self, count: int) -> list[list[int]]:
        chosen = []
        while len(chosen) < count:
            order = self._prompt_order(self.prompt_epoch)
            take = order[self.prompt_position:self.prompt_position + count - len(chosen)]
            chosen += take
            self.prompt_position += len(take)
            if self.prompt_position >= len(order):
                self.prompt_epoch, self.prompt_position = self.prompt_epoch + 1, 0
        return [self.prompts[i][: self.args.max_prompt_length] for i in chosen]

    # A round --------------------------------------------------------------------------------------
    def _rollout_round(self) -> None:
        args, student = self.args, self.student()
        was_training = student.training
        student.eval()
        pieces = {key: [] for key in STORE_KEYS}
        prompts = self._next_prompts(self.per_process)
        chunk = args.rollout_chunk_size
        sampling = scoring = 0.0
        try:
            for first in range(0, len(prompts), chunk):
                generator = torch.Generator(device=next(student.parameters()).device)
                generator.manual_seed(args.seed_ppo * 1_000_003 + self.round * 10_007 + E.rank() * 101 + first)
                started = time.perf_counter()
                query, response = sample_mixed(
                    student, self.teacher, prompts[first:first + chunk], max_new_tokens=args.max_length - args.max_prompt_length,
                    alpha=args.teacher_mixed_alpha, eos_id=self.eos_id, pad_id=self.pad_id, vocab=self.vocab, generator=generator,
                )
                sampled = time.perf_counter()
                student_lp, mask = response_logprobs(student, query, response, self.pad_id, self.vocab)
                teacher_lp, _ = response_logprobs(self.teacher, query, response, self.pad_id, self.vocab)
                sampling, scoring = sampling + sampled - started, scoring + time.perf_counter() - sampled
                weights = minillm.importance_weights(student_lp, teacher_lp, args.teacher_mixed_alpha)
                rewards = minillm.token_rewards(teacher_lp, student_lp, mask, args.reward_scaling, args.cliprange_reward)
                for key, value in zip(STORE_KEYS, (query, response, mask, student_lp, rewards, weights)):
                    pieces[key] += list(value.cpu())
        finally:
            student.train(was_training)
        self.store = {
            "query": _pad_left(pieces["query"], self.pad_id),
            **{key: _pad_right(pieces[key], self.pad_id if key == "response" else 0) for key in STORE_KEYS[1:]},
        }
        mask = self.store["mask"].float()
        reward = minillm.sequence_reward(self.store["rewards"], mask, self.args.gamma, self.args.length_norm)
        self.round_stats = {"reward": reward.mean().item(), "response_tokens": mask.sum(-1).mean().item(), "sampling_s": sampling, "scoring_s": scoring}
        self.round += 1
        if self.log is not None:
            self.log(f"rollout round {self.round}: {len(prompts)} responses on this process, {self.round_stats['response_tokens']:.1f} tokens "
                     f"on average, mean reward {self.round_stats['reward']:.4f}; sampling {sampling:.2f} s, scoring {scoring:.2f} s")
        self.ppo_epoch, self.position, self.advantage_cache = 0, 0, {}
        self.order = self._epoch_order()

    def _epoch_order(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.args.seed_ppo * 7919 + self.round * 131 + self.ppo_epoch * 17 + E.rank())
        size = self.store["mask"].shape[0]
        usable = size - size % (self.args.batch_size * self.args.gradient_accumulation_steps)  # drop_last, per step
        return torch.randperm(size, generator=generator).tolist()[:usable]

    # Serving mini-batches -------------------------------------------------------------------------
    def __call__(self, rows: Sequence[dict] = (), progress: float = 0.0) -> dict[str, Tensor]:
        if self.store is None or self.ppo_epoch == self.args.ppo_epochs:
            self._rollout_round()
        step_size = self.args.batch_size * self.args.gradient_accumulation_steps
        group = self.position // step_size
        if group not in self.advantage_cache:
            self.advantage_cache = {group: self._advantages(self.order[group * step_size:(group + 1) * step_size])}
        index = self.order[self.position:self.position + self.args.batch_size]
        offset = self.position - group * step_size
        advantage = self.advantage_cache[group][offset:offset + self.args.batch_size]
        self.position += self.args.batch_size
        if self.position >= len(self.order):
            self.ppo_epoch, self.position = self.ppo_epoch + 1, 0
            if self.ppo_epoch < self.args.ppo_epochs:
                self.order = self._epoch_order()
        batch = {key: self.store[key][index] for key in STORE_KEYS}
        inputs = model_inputs(batch["query"], batch["response"], self.pad_id)
        return {**batch, **inputs, "advantages": advantage}

    def _advantages(self, index: list[int]) -> Tensor:
        """Whitened advantages of one optimizer step's rollouts (this process's; the statistics
        are all-reduced over the processes, as the reference's)."""
        return minillm.advantages(self.store["rewards"][index], self.store["mask"][index], self.args.gamma)

    def on_validation(self, valid_loss: float) -> str | None:
        return None

    def state_dict(self) -> dict:
        return {
            "round": self.round, "ppo_epoch": self.ppo_epoch, "position": self.position, "order": list(self.order),
            "prompt_epoch": self.prompt_epoch, "prompt_position": self.prompt_position,
            "store": None if self.store is None else {key: value.clone() for key, value in self.store.items()},
            "round_stats": dict(self.round_stats),
        }

    def load_state_dict(self, state: dict) -> None:
        self.round, self.ppo_epoch, self.position, self.order = state["round"], state["ppo_epoch"], state["position"], list(state["order"])
        self.prompt_epoch, self.prompt_position = state["prompt_epoch"], state["prompt_position"]
        self.store, self.round_stats, self.advantage_cache = state["store"], state["round_stats"], {}


class MiniLLMObjective:
    """The reference's MiniLLM loss on a rollout mini-batch (+ the LM batch); `validation` computes
    the validation loss (cross-entropy on the dev split, as for the other methods)."""

    divergence = None  # validation reports cross-entropy alone

    def __init__(self, student: nn.Module, teacher: nn.Module, vocab: int, args, validation, chunk_size: int | None = None):
        self.vocab, self.args, self.validation, self.chunk_size = vocab, args, validation, chunk_size
        self.student_split, self.teacher_split = split_head(student), split_head(teacher)
        if not (self.student_split.fused and self.teacher_split.fused):
            raise ValueError("--type minillm needs models whose LM head is accessible (get_output_embeddings)")
        # The LM term: (1 - kd_ratio) CE + kd_ratio forward KL on --lm-data-dir batches, the shared objective's fused loss.
        self.pretraining = Objective(student, teacher, "fkl", {}, args.kd_ratio, 1.0, vocab, chunk_size=chunk_size)

    def set_stage(self, temperature: float, kd_ratio: float) -> None:
        raise ValueError("--type minillm does not run a POCL curriculum")

    def __call__(self, batch: dict[str, Tensor], lm_batch: dict[str, Tensor] | None = None) -> FusedLossOutput:
        return self.validation(batch)

    def _hidden(self, split, batch: dict[str, Tensor]) -> Tensor:
        return split.body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"],
                          use_cache=False).last_hidden_state

    def forward_train(self, batch: dict[str, Tensor], lm_batch: dict[str, Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        args, vocab = self.args, self.vocab
        start, length = batch["query"].shape[1] - 1, batch["response"].shape[1]
        hidden = self._hidden(self.student_split, batch)[:, start:start + length]
        weight, bias = self.student_split.weight[:vocab], head_bias(self.student_split, vocab)
        chunk_size = self.chunk_size or default_chunk_size(hidden.device, vocab)
        mask = batch["mask"].float()
        logprobs = minillm.token_logprobs(hidden, weight, batch["response"], bias, chunk_size) * mask
        loss = minillm.clipped_policy_loss(logprobs, batch["old_logprobs"], batch["advantages"], mask, batch["weights"], args.cliprange)
        with torch.no_grad():  # the reference's logged reward: per response, discounted (length-normalised with --length-norm)
            reward = minillm.sequence_reward(batch["rewards"], mask, args.gamma, args.length_norm).mean()
        parts = {"pg": loss.detach(), "reward": reward}
        if args.single_step_reg:  # the per-token KL(q || p) over the vocabulary, never holding it in full
            with torch.no_grad():
                teacher_hidden = self._hidden(self.teacher_split, batch)[:, start:start + length]
            reg = fused_linear_divergence(
                "rkl", hidden, weight, student_bias=bias, teacher_hidden=teacher_hidden,
                teacher_weight=self.teacher_split.weight[:vocab], mask=mask.bool(), chunk_size=chunk_size,
            ).loss
            loss = loss + reg
            parts["reg"] = reg.detach()
        if lm_batch is not None and args.lm_coef > 0:
            pt = self.pretraining(lm_batch)
            loss = loss + args.lm_coef * pt.loss
            parts.update(pt=pt.loss.detach(), ce=pt.ce, kd=pt.kd)
        else:
            parts.update(ce=loss.new_zeros(()), kd=loss.new_zeros(()))
        return loss, parts
