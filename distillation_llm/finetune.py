"""SFT and knowledge distillation of causal LMs, driven by DeepSpeed.

    python -m distillation_llm.finetune --type ab --ab_alpha 0.2 --ab_beta 0.7 --model-path STUDENT \
        --teacher-model-path TEACHER --data-dir processed_data/dolly/full/gpt2 --save results/ab ...

Runs as one process (`python`), under `torchrun`, or under the `deepspeed` launcher. See
`distillation_llm/arguments.py` for every flag. Outputs in `--save`: args.json, log.txt,
<step>/ (Hugging Face model + tokenizer), best/ (the best validated model of the whole run, by the
selection metric: dev ROUGE-L with --eval-gen, else validation loss), checkpoints/ (resumable),
run.json (run id, world size, the SHA-256 of the data, models and tokenizer: --resume refuses others).

Preemption: on SIGTERM or SIGINT the run finishes its optimizer step, writes <step>/ and a resumable
checkpoint, and exits with status 75 (abkd.run.EXIT_STOPPED); `--resume` continues bit for bit.
The --lm-data-dir position is a function of the step (one global LM batch per step, a new order
per pass), so it resumes exactly too.

POCL (--curriculum pocl) runs its Baby Step stages as POCL's per-stage launchers do, in one
resumable command: each stage trains with a fresh AdamW and a learning-rate schedule (warm-up,
then --lr-decay-style down to --lr-min) over the stage's own --stage-epochs, starting from the
previous stage's last step, as POCL's published runs do (--stage-start best: from its best model
within that stage by the selection metric). Each stage's best is copied to best_stage<k>/
(k = 1..S), and best/ stays the best over all stages; --stage-dev-num gives each stage its own
number of dev examples (POCL: 1000 in the first, 500 after).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import hashlib
import json
import math
import os
import re
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from abkd import engine as E
from abkd.pocl import BabyStepScheduler, check_ranks_all
from abkd.run import Run, ignore_stop_signals, parser_defaults
from abkd.runlog import RunLog
from abkd.sampling import GlobalBatchSampler, batches, shard_indices
from abkd.schedules import build_scheduler, lr_multiplier
from distillation_llm.arguments import args_record, build_parser, parse_args, reference_notes, run_summary
from distillation_llm.checks import check_startup
from distillation_llm.data import InstructionCollator, LMCollator, load_processed, tokenizer_fingerprint
from distillation_llm.generation import GenerationSettings
from distillation_llm.methods import lookup
from distillation_llm.minillm import MiniLLMObjective, RolloutSource
from distillation_llm.models import ADAPTER_WEIGHTS, add_lora, check_shared_vocabulary, enable_gradient_checkpointing, load_causal_lm, load_lora, load_tokenizer, merge_lora, weights_fingerprint
from distillation_llm.objective import Objective
from distillation_llm.rank_difficulty import load_ranking
from distillation_llm.sources import AdaptiveThreshold, DatasetSource, StudentGeneratedSource, fresh_share
from distillation_llm.teacher_cache import TeacherCache

# DistiLLM/ABKD/POCL `utils.get_optimizer_params`: no weight decay on parameters whose name contains
# one of these (GPT-2's module names: OPT's and LLaMA's norm weights do decay there).
REFERENCE_NO_DECAY = ("bias", "ln_f.weight", "ln_1.weight", "ln_2.weight", "ln_cross_attn")


def param_groups(model: torch.nn.Module, weight_decay: float, exempt: str = "reference") -> list[dict]:
    """AdamW groups. `exempt` "reference": no weight decay on the parameters named in
    REFERENCE_NO_DECAY, as the references; "1d": none on biases and normalisation weights of any
    architecture (1-D parameters); "none": every parameter decays (MiniLLM's PPO trainer). A ZeRO-3-partitioned parameter (a POCL stage's new engine) keeps
    its full shape in `ds_shape`."""
    def exempted(name: str, p: torch.nn.Parameter) -> bool:
        if exempt == "none":
            return False
        if exempt == "1d":
            return len(getattr(p, "ds_shape", p.shape)) < 2
        return any(part in name for part in REFERENCE_NO_DECAY)

    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    decay = [p for name, p in trainable if not exempted(name, p)]
    no_decay = [p for name, p in trainable if exempted(name, p)]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]  # LoRA has no 1-D trainable parameters


def precision_label(ds_config: dict, args) -> str:
    """The training precision of a resolved DeepSpeed config, e.g. `fp16 (dynamic loss scaling from
    2^11)`, or `fp32 (fp16 asked: no CUDA here)` where half precision was asked on a CPU."""
    dtype = E.training_dtype(ds_config)
    if dtype == torch.float16:
        scaling = ds_config["fp16"]
        return "fp16 " + (f"(static loss scale {scaling['loss_scale']:g})" if scaling.get("loss_scale") else
                          f"(dynamic loss scaling from 2^{scaling.get('initial_scale_power', 16)})")
    if dtype == torch.bfloat16:
        return "bf16"
    file = json.loads(Path(args.deepspeed_config).read_text()) if args.deepspeed_config and Path(args.deepspeed_config).is_file() else {}
    asked = "fp16" if args.fp16 else next((key for key in ("fp16", "bf16") if file.get(key, {}).get("enabled") in (True, "auto")), None)
    return f"fp32 ({asked} asked: no CUDA here)" if asked else "fp32"


def to_device(batch: dict, device: torch.device) -> dict:
    return {key: value.to(device) for key, value in batch.items()}


def forever(loader: DataLoader, sampler: GlobalBatchSampler, state: dict) -> Iterator[dict]:
    """Micro-batches across epochs, resuming mid-epoch from `state`."""
    while True:
        sampler.set_epoch(state["epoch"], skip_steps=state["step_in_epoch"])
        yield from loader


def lm_micro_batches(loader: DataLoader, sampler: GlobalBatchSampler, step: int) -> Iterator[dict]:
    """The --lm-data-dir micro-batches from optimizer step `step` on. Each step takes one global
    batch, so the position is a function of the step alone: pass `step // steps_per_epoch` (whose
    permutation, seeded by the pass, differs from pass to pass), `step % steps_per_epoch` steps in."""
    epoch, skip = divmod(step, sampler.steps_per_epoch)
    while True:
        sampler.set_epoch(epoch, skip_steps=skip)
        yield from loader
        epoch, skip = epoch + 1, 0


class TrainingData:
    """Which training rows a run draws: the whole train split, or with POCL the current stage's
    easiest fraction of it (`select` re-targets the sampler when the stage changes). The rows of
    each micro-batch go through the batch source (distillation_llm/sources.py) to be collated."""

    def __init__(self, train_set, args, curriculum: BabyStepScheduler | None = None, valid_set=None):
        self.train_set, self.args, self.curriculum = train_set, args, curriculum
        self.valid_full = valid_set  # the whole valid split, from which --stage-dev-num takes each stage's
        if curriculum is not None:
            self.row_of_id = {example_id: row for row, example_id in enumerate(train_set["id"])}
            check_ranks_all(f"--ranking {args.ranking}", curriculum.ranked_ids, list(self.row_of_id))
        self.select()

    def _sampler(self, size: int) -> GlobalBatchSampler:
        return GlobalBatchSampler(size, self.args.batch_size, self.args.gradient_accumulation_steps, E.world_size(), E.rank(), self.args.seed)

    def select(self) -> None:
        examples = self.train_set
        if self.curriculum is not None:
            examples = self.train_set.select([self.row_of_id[i] for i in self.curriculum.active_ids()])
        self.sampler = self._sampler(len(examples))
        self.loader = DataLoader(examples, batch_sampler=self.sampler, collate_fn=list, num_workers=self.args.num_workers,
                                 worker_init_fn=ignore_stop_signals if self.args.num_workers else None)

    def stage_valid(self):
        """The current POCL stage's dev set: the first --stage-dev-num[stage] examples of the valid split."""
        count = self.args.stage_dev_num[min(self.curriculum.stage, self.curriculum.num_stages - 1)]
        return self.valid_full.select(range(min(count, len(self.valid_full))))

    def micro_batches(self, state: dict) -> Iterator[dict]:
        return forever(self.loader, self.sampler, state)

    def total_steps(self) -> int:
        if self.curriculum is None:
            return self.args.total_iters or self.args.epochs * self.sampler.steps_per_epoch
        planned = sum(self.stage_steps(stage) for stage in range(self.curriculum.num_stages))
        return min(planned, self.args.total_iters) if self.args.total_iters else planned

    def stage_steps(self, stage: int) -> int:
        """Optimizer steps of POCL stage `stage` run for all its --stage-epochs (its schedule's length)."""
        return self.curriculum.stage_epochs * self._sampler(self.curriculum.size(stage)).steps_per_epoch


class Engines:
    """The DeepSpeed engine of the student: one for the run, or with POCL one per stage. A stage
    starts a fresh AdamW and learning-rate schedule, as POCL's one-launcher-per-stage runs do;
    with ZeRO the optimizer holds the fp32 master weights, so the stage's engine is built anew on
    the student (after its selected weights are loaded) and the previous one is released."""

    def __init__(self, student: torch.nn.Module, args, ds_config: dict):
        self.student, self.args, self.ds_config = student, args, ds_config
        self.engine = None

    def schedule(self, total: int) -> Callable[[int], float]:
        args = self.args
        return functools.partial(lr_multiplier, warmup=args.warmup_iters, total=total, style=args.lr_decay_style, min_ratio=args.lr_min / args.lr)

    def build(self, schedule_steps: int):
        """A new engine: fresh AdamW, the learning-rate schedule over `schedule_steps` steps."""
        if self.engine is not None:
            if callable(getattr(self.engine, "destroy", None)):
                self.engine.destroy()
            self.engine = None
            gc.collect()
        args = self.args
        source = f"--deepspeed_config {args.deepspeed_config}"
        optimizer = E.adamw(param_groups(self.student, args.weight_decay, args.weight_decay_exempt), args.lr, self.ds_config, source,
                            betas=(0.9, args.adam_beta2))  # DeepSpeed's CPU Adam with ZeRO-Offload
        scheduler = build_scheduler(optimizer, warmup=args.warmup_iters, total=schedule_steps, style=args.lr_decay_style, min_ratio=args.lr_min / args.lr)
        self.engine = E.initialize(self.student, optimizer, scheduler, self.ds_config, source)
        return self.engine

    def set_schedule_steps(self, schedule_steps: int) -> None:
        """Re-target the schedule of a resumed engine (whose step count the checkpoint restored) to
        the length of the stage it resumes in."""
        scheduler = self.engine.lr_scheduler
        scheduler.lr_lambdas = [self.schedule(schedule_steps) for _ in scheduler.lr_lambdas]


def load_saved_weights(module: torch.nn.Module, directory: Path) -> None:
    """Load the model `save_model` wrote to `directory` into `module` (the full model, or the LoRA
    adapters of a PEFT student), on every rank."""
    from safetensors.torch import load_file

    context = contextlib.nullcontext()
    if hasattr(next(module.parameters()), "ds_id"):  # ZeRO-3: every rank loads the same file
        import deepspeed

        context = deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=0)
    with context, torch.no_grad():
        if (directory / ADAPTER_WEIGHTS[0]).is_file():
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(module, load_file(directory / ADAPTER_WEIGHTS[0]))
            return
        if (directory / "model.safetensors.index.json").is_file():
            from transformers.modeling_utils import load_sharded_checkpoint

            load_sharded_checkpoint(module, directory, strict=False)
            return
        missing, unexpected = module.load_state_dict(load_file(directory / "model.safetensors"), strict=False)
        tied = {name for name, _ in module.named_parameters(remove_duplicate=False)} - {name for name, _ in module.named_parameters()}
        if unexpected or set(missing) - tied:
            raise ValueError(f"{directory} does not hold this student's weights (missing {sorted(set(missing) - tied)[:5]}, unexpected {unexpected[:5]})")


def save_model(engine, tokenizer, directory: Path) -> None:
    """Hugging Face `save_pretrained` (safetensors) written under a temporary name, then renamed."""
    context = torch.no_grad()
    if engine.zero_optimization_stage() == 3:
        import deepspeed

        context = deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None)
    with context:
        if E.is_main_process():
            staging = directory.with_name(f".{directory.name}.tmp")
            shutil.rmtree(staging, ignore_errors=True)
            engine.module.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
            shutil.rmtree(directory, ignore_errors=True)
            os.replace(staging, directory)
    E.barrier()


@torch.no_grad()
@E.preserved_rng()
def validate(engine, objective: Objective, valid_set, collate, tokenizer, args, device) -> dict[str, float]:
    """Validation CE (and divergence) of the student over the whole dev split, as DistiLLM's
    `evaluate` computes it: the mean over batches of each batch's token mean (so a short batch
    weighs as much as a full one). The student is back in train mode afterwards, and the training
    random streams are untouched (generation reseeds torch), so validating does not change the
    training trajectory."""
    engine.module.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # sum of batch means (ce, kd), batches
    for index in batches(shard_indices(len(valid_set), E.world_size(), E.rank()), args.eval_batch_size):
        batch = to_device(collate([valid_set[i] for i in index]), device)
        out = objective(batch)
        totals += torch.stack([out.ce.double(), out.kd.double(), totals.new_ones(())])
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(totals)
    engine.module.train()
    count = max(totals[2].item(), 1.0)
    metrics = {"valid_loss": totals[0].item() / count}
    if objective.divergence is not None:
        metrics["valid_kd"] = totals[1].item() / count
    if args.eval_gen:
        metrics.update(generation_metrics(engine.module, tokenizer, valid_set, args, device))
    return metrics


def generation_metrics(model, tokenizer, valid_set, args, device) -> dict[str, float]:
    """ROUGE-L / exact match of generations on this rank's shard of the dev split, averaged over ranks."""
    from distillation_llm.evaluate import evaluate_model
    from distillation_llm.generation import settings_from_args

    shard = shard_indices(len(valid_set), E.world_size(), E.rank())
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # rougeL sum, exact sum, length sum, n
    if shard:
        examples = [(valid_set[i]["prompt"], valid_set[i]["references"]) for i in shard]
        scores, _ = evaluate_model(
            model, tokenizer, examples, settings_from_args(args, args.seed), args.eval_batch_size, args.max_prompt_length,
            backend="hf", progress=False,
        )
        totals += torch.tensor([scores[k] * scores["n"] for k in ("rougeL", "exact_match", "length")] + [scores["n"]], dtype=torch.float64, device=device)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(totals)
    n = max(totals[3].item(), 1.0)
    return {"rougeL": totals[0].item() / n, "exact_match": totals[1].item() / n, "gen_length": totals[2].item() / n}


def selection(metrics: dict[str, float], args) -> tuple[str, float]:
    """The checkpoint-selection metric as (name, value to minimise): with --eval-gen the method's
    rule (ROUGE-L, or validation loss for --type init as in MiniLLM), else validation loss."""
    if args.eval_gen and lookup(args.type).selection == "rougeL":
        return "rougeL", -metrics["rougeL"]
    return "valid_loss", metrics["valid_loss"]


def copy_model(save_dir: Path, step: int, name: str, record: dict, barrier: bool = True) -> None:
    """Copy the model saved at `step` to `<save>/<name>/` (atomically), with `record` as <name>.json
    (collective unless `barrier` is False)."""
    if E.is_main_process():
        staging = save_dir / f".{name}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(save_dir / str(step), staging)
        (staging / f"{name}.json").write_text(json.dumps({"step": step, **record}, indent=2))
        shutil.rmtree(save_dir / name, ignore_errors=True)
        os.replace(staging, save_dir / name)
    if barrier:
        E.barrier()


def check_finite_loss(step: int, sums: dict[str, float]) -> None:
    """Stop (FloatingPointError naming the step and the loss parts) on a NaN or infinite training
    loss, before anything of the step is saved: training on would only spread NaN to the weights."""
    if not math.isfinite(sums["loss"]):
        parts = ", ".join(f"{key} {value:.4g}" for key, value in sums.items())
        raise FloatingPointError(
            f"training loss is {sums['loss']} at step {step} ({parts}): stopping; the last saved checkpoint holds finite weights "
            "(lower --lr, or check the data and the teacher)"
        )


def record_best(save_dir: Path, step: int, metrics: dict, state: dict, args, log: RunLog) -> None:
    """Copy the model saved at `step` to best/ if it is the best so far by the selection metric;
    with POCL also remember the best of the current stage (`stage_best_*`)."""
    metric, value = selection(metrics, args)
    if not math.isfinite(value):  # NaN compares False with everything: it must never be kept as a best
        log.info(f"warning: validation {metric} is {metrics[metric]} at step {step}: not a candidate for best/ (or the stage's best)")
        return
    if "stage_best_step" in state and (state["stage_best_metric"] is None or value < state["stage_best_metric"]):
        state["stage_best_metric"], state["stage_best_step"], state["stage_best_record"] = value, step, {"metric": metric, **metrics}
    if state["best_metric"] is not None and value >= state["best_metric"]:
        return
    state["best_metric"], state["best_step"] = value, step
    copy_model(save_dir, step, "best", metrics)
    log.info(f"new best {metric} {metrics[metric]:.4f} at step {step}: copied to {save_dir / 'best'}")


def end_stage(save_dir: Path, stage: int, state: dict, log: RunLog) -> int:
    """The finished POCL stage's selected step, as POCL selects a launcher's output: its best
    validated model by the selection metric (copied to best_stage<stage+1>/), or without validation
    its last step. Recorded in `state["stage_selected"]`; the stage-best tracking is reset."""
    step, record = state["stage_best_step"], state["stage_best_record"]
    if step is None:
        step, record = state["step"], {"metric": None}
        log.info(f"stage {stage + 1}: no validated model (no validation, or none finite), continuing from its last step {step}")
    else:
        copy_model(save_dir, step, f"best_stage{stage + 1}", record)
        log.info(f"stage {stage + 1}: selected step {step} by {record['metric']} {record[record['metric']]:.4f}: copied to {save_dir / f'best_stage{stage + 1}'}")
    state["stage_selected"].append({"stage": stage + 1, "step": step, **record})
    state["stage_best_metric"], state["stage_best_step"], state["stage_best_record"] = None, None, None
    return step


def build_source(args, collate, student, tokenizer, teacher=None, vocab=None, prompts=None):
    """The batch source of --type (distillation_llm/methods.py): the dataset as it is,
    student-generated outputs with a constant or DistiLLM's adaptive probability, or MiniLLM's
    rollouts (from `prompts`, scored by `teacher` over the first `vocab` tokens)."""
    method = lookup(args.type)
    kind = method.source_kind(args.student_gen)
    if kind == "rollout":
        return RolloutSource(args, prompts, lambda: student, teacher, tokenizer, vocab)
    if kind == "seqkd" and "seqkd" not in load_processed(args.data_dir)[1]:
        E.print_rank0(f"warning: --type seqkd but --data-dir {args.data_dir} was not made by tools.generate_data_seqkd")
    if kind in ("dataset", "seqkd"):
        return DatasetSource(collate)
    settings = GenerationSettings(
        do_sample=True, top_k=0, top_p=args.gen_top_p, temperature=1.0, max_new_tokens=args.max_length - args.max_prompt_length,
        seed=args.seed + 1000 * E.rank(),
    )
    common = dict(max_prompt_length=args.max_prompt_length, capacity=args.capacity, seed=args.seed + E.rank())
    if kind == "student":
        return StudentGeneratedSource(collate, student, tokenizer, settings, threshold=method.student_probability(args), **common)
    return StudentGeneratedSource(
        collate, student, tokenizer, settings, threshold=AdaptiveThreshold(args.init_threshold, args.loss_eps),
        fresh=lambda progress: fresh_share(args.replay_ratio, progress), **common,
    )


def apply_stage(curriculum: BabyStepScheduler, objective: Objective, data: TrainingData, log: RunLog) -> None:
    objective.set_stage(temperature=curriculum.temperature(), kd_ratio=curriculum.kd_ratio())
    data.select()
    log.info(f"curriculum {curriculum.describe()}")


def load_student(args, device: torch.device) -> torch.nn.Module:
    """The student in train mode: --model-path, with fresh LoRA adapters (--peft lora) or the saved
    ones of --peft-path, and activation checkpointing with --gradient-checkpointing."""
    student = load_causal_lm(args.model_path, device=device)
    if args.peft_path:
        student = load_lora(student, args.peft_path)
    elif args.peft == "lora":
        student = add_lora(student, args.peft_lora_r, args.peft_lora_alpha, args.peft_lora_dropout)
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(student)
    return student.train()  # from_pretrained returns eval mode: dropout and checkpointing would be off


def train(run: Run, engines: Engines, objective: Objective, data: TrainingData, source, lm_batches, valid_set, collate, tokenizer, total_steps: int) -> None:
    """Optimizer steps from `run.state` to the stop point, with validation, the curriculum's stage
    changes (each stage from the previous one's selected model, with a new engine) and model files
    and resumable checkpoints at --save-interval."""
    args, state, log, device, save_dir = run.args, run.state, run.log, run.device, run.save_dir
    engine = engines.engine

    def save_due(step: int, epoch_end: bool, stop_at: int) -> bool:
        return (args.save_interval > 0 and step % args.save_interval == 0) or (args.save_interval == -1 and epoch_end) or step == stop_at
    curriculum = data.curriculum
    if curriculum is not None and args.stage_dev_num:
        valid_set = data.stage_valid()
    stop_at = run.stop_point(data.sampler.steps_per_epoch, total_steps)
    micro_batches = data.micro_batches(state)
    bar = tqdm(total=total_steps, initial=state["step"], desc="train", disable=not E.is_main_process(), dynamic_ncols=True)
    engine.module.train()  # dropout on from the first step, resumed or not
    while state["step"] < stop_at:
        started, sums, tokens = time.perf_counter(), defaultdict(float), 0
        for micro in range(args.gradient_accumulation_steps):
            # Loading (a DataLoader draws a seed when iterated) and the student's samples
            # (generation reseeds torch) leave the random streams alone, and the dropout masks
            # are drawn from a seed of (step, global micro-batch): the same for any layout of
            # processes and accumulation, and after --resume.
            with E.preserved_rng():
                batch = to_device(source(next(micro_batches), progress=(state["step"] + 1) / total_steps), device)
                lm_batch = to_device(next(lm_batches), device) if lm_batches else None
            E.seed_micro_batch(args.seed, state["step"], micro * E.world_size() + E.rank())
            loss, parts = objective.forward_train(batch, lm_batch)
            engine.backward(loss)
            engine.step()
            for key, value in {"loss": loss, **parts}.items():
                sums[key] += value.item() / args.gradient_accumulation_steps
            tokens += int(batch["attention_mask"].sum()) * E.world_size()
        check_finite_loss(state["step"] + 1, sums)
        state["step"] += 1
        state["step_in_epoch"] += 1
        epoch_end = state["step_in_epoch"] == data.sampler.steps_per_epoch
        if epoch_end:
            state["epoch"] += 1
            state["step_in_epoch"] = 0
        next_stage = curriculum is not None and epoch_end and curriculum.on_epoch_end()
        elapsed = time.perf_counter() - started
        bar.update(1)
        bar.set_postfix(loss=f"{sums['loss']:.4f}", lr=f"{engine.get_lr()[0]:.2e}")
        step = state["step"]
        if step % args.log_interval == 0 or step == stop_at:
            log.metrics(step, {**sums, "lr": engine.get_lr()[0], "tokens_per_s": tokens / elapsed, "s_per_step": elapsed, "epoch": state["epoch"]})
        at_epoch_end = epoch_end and source.validates_at_epoch_ends  # MiniLLM's rollouts have no data epochs: --eval-interval only
        if args.do_valid and (at_epoch_end or (args.eval_interval > 0 and step % args.eval_interval == 0) or step == total_steps):
            metrics = validate(engine, objective, valid_set, collate, tokenizer, args, device)
            log.metrics(step, metrics, prefix="valid")
            save_model(engine, tokenizer, save_dir / str(step))
            next_stage = (curriculum is not None and curriculum.on_validation(metrics["valid_loss"])) or next_stage
            if message := source.on_validation(metrics["valid_loss"]):
                log.info(message)
            record_best(save_dir, step, metrics, state, args, log)
        if next_stage:
            if not epoch_end:  # converged mid-epoch: the new stage starts a fresh epoch
                state["epoch"] += 1
                state["step_in_epoch"] = 0
            if save_due(step, epoch_end, stop_at) and not (save_dir / str(step)).is_dir():
                save_model(engine, tokenizer, save_dir / str(step))  # the model as trained, before the next stage's
            selected = end_stage(save_dir, curriculum.stage - 1, state, log)
            if args.stage_start == "last":  # POCL's published runs: each stage from the previous one's last step
                selected = step
            if curriculum.finished:
                stop_at = step
                log.info(f"curriculum finished after {curriculum.num_stages} stages at step {step}")
            else:
                if selected != step:
                    load_saved_weights(engine.module, save_dir / str(selected))
                del engine
                engine = engines.build(data.stage_steps(curriculum.stage))
                apply_stage(curriculum, objective, data, log)
                origin = "the previous stage's last step" if selected == step else "the previous stage's best"
                log.info(f"stage {curriculum.stage + 1} starts from step {selected}'s model ({origin}, --stage-start {args.stage_start}) with a fresh AdamW and a {args.lr_decay_style} "
                         f"learning-rate schedule over its {data.stage_steps(curriculum.stage)} steps")
                micro_batches = data.micro_batches(state)
                if args.stage_dev_num:
                    valid_set = data.stage_valid()
                    log.info(f"stage {curriculum.stage + 1} validates on {len(valid_set)} examples (--stage-dev-num)")
        stopping = step < stop_at and run.stop_requested()  # SIGTERM/SIGINT on any rank (collective)
        if save_due(step, epoch_end, stop_at) or stopping:
            if not (save_dir / str(step)).is_dir():
                save_model(engine, tokenizer, save_dir / str(step))
            state["curriculum"] = curriculum.state_dict() if curriculum is not None else None
            run.save(engine, f"step{step}", rank_state={"source": source.state_dict()})
            log.info(f"saved model {save_dir / str(step)} and resumable checkpoint step{step}")
        if stopping:
            bar.close()
            run.exit_stopped(f"step{step}", total_steps)
    bar.close()
    if state["step"] < total_steps and not (curriculum is not None and curriculum.finished):
        log.info(f"stopped after step {state['step']} of {total_steps} (--stop-after-iters); continue with --resume")


def split_fingerprint(directory: Path) -> str | None:
    """SHA-256 over the Arrow files of one split of a processed dataset (None if it has none)."""
    files = sorted(directory.glob("*.arrow")) if directory.is_dir() else []
    if not files:
        return None
    return hashlib.sha256(json.dumps({p.name: E.file_sha256(p) for p in files}, sort_keys=True).encode()).hexdigest()


def content_fingerprints(args) -> dict[str, str]:
    """What the run reads, by content (recorded at start and compared by --resume, abkd.run): the
    processed splits, the student's starting weights and tokenizer, the teacher's weights (unless
    a --teacher-cache stands in for it: args.json records the cache's identity) and the adapters."""
    prints: dict[str, str] = {}
    for flag, directory, splits in (("--data-dir", args.data_dir, ("train", "valid")), ("--lm-data-dir", args.lm_data_dir, ("train",))):
        for split in splits if directory else ():
            if digest := split_fingerprint(Path(directory) / split):
                prints[f"{flag} {split} split"] = digest
    if Path(args.model_path).is_dir():  # a missing folder is reported by the loaders, flag and all
        prints["--model-path tokenizer"] = tokenizer_fingerprint(load_tokenizer(args.model_path))
    models = [("--model-path", args.model_path), ("--peft-path", args.peft_path)]
    if lookup(args.type).needs_teacher and not args.teacher_cache:
        models += [("--teacher-model-path", args.teacher_model_path), ("--teacher-peft-path", args.teacher_peft_path)]
    for flag, path in models:
        if path and Path(path).is_dir():
            prints[f"{flag} weights"] = weights_fingerprint(path)["sha256"]
    return prints


def remove_abandoned_models(save_dir: Path, state: dict, log: RunLog) -> None:
    """Model folders a resumed (or restarted) run would not have written by its step: <k>/ past it,
    and best/ or best_stage<k>/ chosen after it, left by a run that went further and was killed.
    best/ is restored from the step the checkpoint names as best, if that folder is still there."""
    if not E.is_main_process():
        E.barrier()
        return
    step, removed = state["step"], []
    for folder in save_dir.iterdir():
        stage = re.fullmatch(r"best_stage(\d+)", folder.name)
        if (folder.name.isdigit() and int(folder.name) > step) or (stage and int(stage[1]) > len(state.get("stage_selected") or [])):
            shutil.rmtree(folder)
            removed.append(folder.name)
    best = save_dir / "best" / "best.json"
    if best.is_file() and json.loads(best.read_text())["step"] != state.get("best_step"):
        shutil.rmtree(best.parent)
        removed.append("best")
        if state.get("best_step") is not None and (save_dir / str(state["best_step"])).is_dir():
            copy_model(save_dir, state["best_step"], "best", {"restored": "on resume"}, barrier=False)
            removed[-1] = f"best (restored from {state['best_step']}/)"
    if removed:
        log.info(f"removed the model folders of steps after {step}, left by an earlier invocation: {', '.join(sorted(removed))}")
    E.barrier()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run = Run.start(args, record=args_record(args), defaults=parser_defaults(build_parser()), fingerprints=lambda: content_fingerprints(args))
    device, log = run.device, run.log

    ds_config = E.load_deepspeed_config(
        args.deepspeed_config, micro_batch_size=args.batch_size, gradient_accumulation_steps=args.gradient_accumulation_steps,
        clip_grad=args.clip_grad, half_precision="fp16" if args.fp16 else None,
    )
    dtype = E.training_dtype(ds_config)
    zero_stage = E.zero_stage(ds_config)
    log.info(f"world size {E.world_size()} on {device.type}; training dtype {dtype}; ZeRO stage {zero_stage}")
    method = lookup(args.type)
    log.info(method.describe(args))
    for line in run_summary(args, E.world_size(), precision_label(ds_config, args)):
        log.info(f"what runs: {line}")
    for note in reference_notes(args, E.world_size()):
        log.info(note)
    tokenizer = load_tokenizer(args.model_path)
    check_startup(args, tokenizer, warn=log.info)
    student = load_student(args, device)
    if args.model_type and args.model_type != student.config.model_type:
        raise ValueError(f"--model-type {args.model_type} does not match {args.model_path}/config.json (model_type '{student.config.model_type}')")
    vocab = student.get_output_embeddings().weight.shape[0] if student.get_output_embeddings() is not None else len(tokenizer)
    teacher, cache = None, None
    if args.teacher_cache:  # the teacher's outputs come from the cache: it is never loaded
        cache = TeacherCache.open(args.teacher_cache)
        if vocab < cache.vocab_size:
            raise ValueError(f"--teacher-cache {args.teacher_cache} covers {cache.vocab_size} tokens, but the student's head has only {vocab} rows")
        vocab = cache.vocab_size
        log.info(f"teacher: cached top {cache.top_k} of {cache.vocab_size} tokens from {args.teacher_cache} (teacher {cache.meta['teacher']['path']}, "
                 f"temperatures {', '.join(f'{t:g}' for t in cache.temperatures)}, {cache.dtype}); the teacher is not loaded")
    elif method.needs_teacher:
        teacher_dtype = torch.float16 if args.teacher_model_fp16 and device.type == "cuda" else dtype
        teacher = load_causal_lm(args.teacher_model_path, dtype=teacher_dtype, device=device, flag="--teacher-model-path")
        if args.teacher_peft_path:
            teacher = merge_lora(teacher, args.teacher_peft_path)
            log.info(f"merged the teacher's LoRA adapter {args.teacher_peft_path} ({args.teacher_peft_name})")
        teacher.eval().requires_grad_(False)
        teacher_vocab = teacher.get_output_embeddings().weight.shape[0] if teacher.get_output_embeddings() is not None else len(tokenizer)
        vocab = check_shared_vocabulary(tokenizer, load_tokenizer(args.teacher_model_path, "--teacher-model-path"), vocab, teacher_vocab)
        log.info(f"teacher {args.teacher_ckpt_name} ({sum(p.numel() for p in teacher.parameters()) / 1e6:.1f}M params, {teacher_dtype})")
    if args.peft_path:
        log.info(f"student LoRA adapter {args.peft_name} loaded from {args.peft_path}")
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    log.info(f"student {args.ckpt_name} ({student.config.model_type}, {sum(p.numel() for p in student.parameters()) / 1e6:.1f}M params, {trainable / 1e6:.2f}M trainable); type {args.type}")

    data, meta = load_processed(args.data_dir, tokenizer)
    if "train" not in data:
        raise ValueError(f"--data-dir {args.data_dir} has no train split (splits: {list(data)})")
    train_set = data["train"]
    valid_set = data["valid"] if "valid" in data else None
    if args.do_valid and valid_set is None:
        raise ValueError(f"--do-valid: --data-dir {args.data_dir} has no valid split (process it with --dev-num > 0)")
    valid_full = valid_set
    if valid_set is not None and args.stage_dev_num:  # POCL's per-stage dev sets: the first N of the split
        valid_set = valid_set.select(range(min(max(args.stage_dev_num), len(valid_set))))
    elif valid_set is not None and args.dev_num >= 0:
        valid_set = valid_set.select(range(min(args.dev_num, len(valid_set))))
    collate = InstructionCollator(tokenizer.pad_token_id, args.max_length)
    if cache is not None:  # every batch carries its examples' cached teacher rows
        cache.check_covers(train_set["id"], "train")
        if args.do_valid:
            cache.check_covers(valid_set["id"], "valid")
        collate = cache.collator(collate)
    curriculum = None
    if args.curriculum == "pocl":
        curriculum = BabyStepScheduler(
            load_ranking(args.ranking, args.data_dir, meta), args.num_stages, args.stage_epochs, args.stage_patience,
            temperature=(args.kd_temperature_start, args.kd_temperature_end), kd_ratio=(args.kd_ratio_start, args.kd_ratio_end),
        )
    data = TrainingData(train_set, args, curriculum, valid_full)
    if data.sampler.dropped:
        log.info(f"{data.sampler.dropped} of {len(data.loader.dataset)} training examples do not fill a global batch and are left out of each epoch")
    lm_loader = None
    if args.lm_data_dir:
        lm_data, _ = load_processed(args.lm_data_dir, tokenizer, flag="--lm-data-dir")
        lm_seed = args.seed_lm if args.seed_lm is not None else args.seed
        lm_sampler = GlobalBatchSampler(len(lm_data["train"]), args.batch_size, args.gradient_accumulation_steps, E.world_size(), E.rank(), lm_seed)
        lm_loader = DataLoader(lm_data["train"], batch_sampler=lm_sampler, collate_fn=LMCollator())

    total_steps = data.total_steps()
    engines = Engines(student, args, ds_config)
    engines.build(total_steps if curriculum is None else data.stage_steps(0))
    if method.source == "rollout":
        if zero_stage == 3:
            raise ValueError(f"--type minillm does not run under ZeRO-3 (--deepspeed_config {args.deepspeed_config}): use ZeRO-1 or 2")
        validation = Objective(student, None, None, {}, 0.0, 1.0, vocab, chunk_size=args.chunk_size)  # dev loss: cross-entropy
        objective = MiniLLMObjective(student, teacher, vocab, args, validation, args.chunk_size)
    else:
        objective = Objective(
            student, teacher, method.divergence, method.params(args), args.kd_ratio, args.kd_temperature, vocab,
            lm_coef=args.lm_coef, temperature_squared=method.temperature_squared, partitioned_parameters=zero_stage == 3, chunk_size=args.chunk_size,
            teacher_cache=cache,
        )

    source = build_source(args, collate, student, tokenizer, teacher=teacher, vocab=vocab, prompts=train_set["prompt_ids"] if method.source == "rollout" else None)
    if isinstance(source, RolloutSource):
        source.log = log.info
    run.state.update(best_metric=None, best_step=None, curriculum=None)
    if curriculum is not None:
        run.state.update(stage_best_metric=None, stage_best_step=None, stage_best_record=None, stage_selected=[])
    rank_state = run.resume(engines.engine)
    if "source" in rank_state:
        source.load_state_dict(rank_state["source"])
    if curriculum is not None:
        if run.state["curriculum"] is not None:
            curriculum.load_state_dict(run.state["curriculum"])
            engines.set_schedule_steps(data.stage_steps(min(curriculum.stage, curriculum.num_stages - 1)))
        apply_stage(curriculum, objective, data, log)
    lm_batches = lm_micro_batches(lm_loader, lm_sampler, run.state["step"]) if lm_loader is not None else None
    if args.do_train:
        remove_abandoned_models(run.save_dir, run.state, log)

    if args.do_train and source.needs_initial_validation:  # DistiLLM's step-0 reference loss
        metrics = validate(engines.engine, objective, valid_set, collate, tokenizer, argparse.Namespace(**{**vars(args), "eval_gen": False}), device)
        log.metrics(0, metrics, prefix="valid")
        log.info(source.on_validation(metrics["valid_loss"]))
    if args.do_train:
        log.info(f"training {total_steps} steps ({data.sampler.steps_per_epoch} per epoch, global batch {data.sampler.global_batch})")
        train(run, engines, objective, data, source, lm_batches, valid_set, collate, tokenizer, total_steps)
    elif args.do_valid:
        log.metrics(run.state["step"], validate(engines.engine, objective, valid_set, collate, tokenizer, args, device), prefix="valid")
    run.close()


if __name__ == "__main__":
    main()
