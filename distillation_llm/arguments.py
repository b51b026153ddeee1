"""Command line of `distillation_llm.finetune`.

Flag names follow the DistiLLM/ABKD/MiniLLM `finetune.py`, so existing launch scripts carry over.
Everything is validated at start-up; the resolved configuration is written to `<save>/args.json`.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from abkd.pocl import stage_value
from distillation_llm.methods import METHODS, STUDENT_SOURCES, check_ab_params, lookup


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m distillation_llm.finetune",
        description="SFT and knowledge distillation of causal LMs with DeepSpeed (ABKD, DistiLLM baselines).",
    )
    model = parser.add_argument_group("models")
    model.add_argument("--model-path", required=True, help="local directory of the student checkpoint (Hugging Face format)")
    model.add_argument("--teacher-model-path", help="local directory of the teacher checkpoint; required by every KD --type unless --teacher-cache gives its outputs")
    model.add_argument("--teacher-cache",
        help="distil from the teacher's top-K distributions cached by tools.cache_teacher_logits instead of running the teacher "
             "(replaces --teacher-model-path; the cache must be built for --data-dir, --max-length and the KD temperature(s))")
    model.add_argument("--ckpt-name", help="student name used in logs (default: the --model-path directory name)")
    model.add_argument("--teacher-ckpt-name", help="teacher name used in logs (default: the --teacher-model-path directory name)")
    model.add_argument("--model-type", help="model family (gpt2, opt, llama, qwen2, ...); read from config.json when omitted")
    model.add_argument("--gradient-checkpointing", action="store_true", help="recompute the student's layer activations in the backward pass (less memory, about a third more compute)")

    data = parser.add_argument_group("data")
    data.add_argument("--data-dir", required=True, help="processed instruction dataset from tools.process_data_dolly (train/valid splits)")
    data.add_argument("--lm-data-dir", help="processed pre-training blocks from tools.process_data_pretrain, for the extra LM loss")
    data.add_argument("--lm-coef", type=float, default=1.0, help="weight of the language-modelling loss on --lm-data-dir batches (the reference's default 1)")
    data.add_argument("--dev-num", type=int, default=-1, help="use at most this many validation examples (-1: the whole valid split)")
    data.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes per rank (they only read rows; student samples are generated in the training process)")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--lr", type=float, default=5e-4, help="peak learning rate of AdamW")
    optim.add_argument("--batch-size", type=int, default=8, help="training micro-batch size per process")
    optim.add_argument("--eval-batch-size", type=int, default=32,
        help="validation batch size per process (the references' default 32; the validation loss is a mean of batch means, as theirs, so it depends on it)")
    optim.add_argument("--gradient-accumulation-steps", type=int, default=1, help="micro-batches accumulated per optimizer step")
    optim.add_argument("--warmup-iters", type=int, default=0, help="optimizer steps of linear learning-rate warm-up")
    optim.add_argument("--lr-decay-style", default="cosine", choices=("constant", "cosine", "linear"), help="learning-rate decay after warm-up")
    optim.add_argument("--lr-min", type=float, default=1e-7, help="learning rate at the end of cosine/linear decay (the references' default 1e-7)")
    optim.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay (see --weight-decay-exempt)")
    optim.add_argument("--weight-decay-exempt", choices=("reference", "1d", "none"), default="reference",
        help="parameters without weight decay: reference = those named bias, ln_f/ln_1/ln_2 weights (the references' GPT-2 list, so OPT's "
             "and LLaMA's norm weights decay); 1d = every bias and normalisation weight of any architecture; none = every parameter decays "
             "(MiniLLM's trainer)")
    optim.add_argument("--adam-beta2", type=float, default=0.999, help="AdamW's beta2 (torch's 0.999; MiniLLM's PPO trainer uses 0.95)")
    optim.add_argument("--clip-grad", type=float, default=1.0, help="gradient-norm clipping threshold (0 disables)")
    optim.add_argument("--epochs", type=int, default=None, help="training epochs (ignored when --total-iters is given)")
    optim.add_argument("--total-iters", type=int, default=None, help="total optimizer steps; overrides --epochs")
    optim.add_argument("--kd-ratio", type=float, default=1.0,
        help="loss = (1 - kd_ratio) * CE + kd_ratio * divergence (default 1.0, what every reference launcher passes; the references' parser has none)")

    lengths = parser.add_argument_group("lengths")
    lengths.add_argument("--max-length", type=int, default=512, help="maximum prompt + response tokens of a training sequence")
    lengths.add_argument("--max-prompt-length", type=int, default=256, help="maximum prompt tokens (for generation during evaluation)")

    run = parser.add_argument_group("run control")
    run.add_argument("--do-train", action="store_true", help="train (otherwise only validate when --do-valid)")
    run.add_argument("--do-valid", action="store_true", help="compute the validation loss every --eval-interval steps and at epoch ends")
    run.add_argument("--eval-gen", action="store_true", help="also generate on the dev split and score ROUGE-L during validation; ROUGE-L then selects best/")
    run.add_argument("--save-interval", type=int, default=0, help="save a checkpoint every N optimizer steps (0: only at the end; -1: at every epoch end, as in the reference launchers)")
    run.add_argument("--eval-interval", type=int, default=0, help="validate every N optimizer steps as well as at epoch ends (0 or -1: only at epoch ends)")
    run.add_argument("--log-interval", type=int, default=10, help="log training metrics every N optimizer steps")
    run.add_argument("--save", required=True, help="output directory: args.json, log.txt, <step>/ models, best/, checkpoints/")
    run.add_argument("--seed", type=int, default=10, help="random seed for initialisation, data order and dropout")
    run.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in <save>/checkpoints")
    run.add_argument("--resume-with-changes", action="store_true", help="with --resume: accept a longer run or other eval/save/log intervals, logged in <save>/args_history.jsonl")
    run.add_argument("--stop-after-iters", type=int, default=None, help="stop this invocation after N optimizer steps with a resumable checkpoint (for time-limited jobs)")
    run.add_argument("--keep-checkpoints", type=int, default=2, help="resumable DeepSpeed checkpoints to keep (models in <step>/ are all kept)")
    run.add_argument("--report-to", choices=("none", "tensorboard"), default="none", help="also log metrics to TensorBoard under <save>/tensorboard")

    peft = parser.add_argument_group("parameter-efficient fine-tuning")
    peft.add_argument("--peft", choices=("none", "lora"), default="none", help="lora: train LoRA adapters of the student instead of all its weights")
    peft.add_argument("--peft-lora-r", type=int, default=8, help="LoRA rank")
    peft.add_argument("--peft-lora-alpha", type=float, default=32, help="LoRA scaling numerator (the update is scaled by alpha / r)")
    peft.add_argument("--peft-lora-dropout", type=float, default=0.1, help="dropout on the LoRA branch")
    peft.add_argument("--peft-path", help="continue training this saved LoRA adapter of the student (with --peft lora) instead of fresh adapters")
    peft.add_argument("--peft-name", help="name of the --peft-path adapter in logs (default: its directory name)")
    peft.add_argument("--teacher-peft-path", help="LoRA adapter of a fine-tuned teacher, merged into --teacher-model-path for inference")
    peft.add_argument("--teacher-peft-name", help="name of the --teacher-peft-path adapter in logs (default: its directory name)")

    ds = parser.add_argument_group("DeepSpeed")
    ds.add_argument("--deepspeed", action="store_true", help="accepted for compatibility: training always runs through DeepSpeed")
    ds.add_argument("--deepspeed_config", default=str(Path(__file__).resolve().parents[1] / "configs" / "deepspeed" / "ds_config.json"), help="DeepSpeed JSON configuration (ZeRO stage, precision)")
    ds.add_argument("--fp16", action="store_true", help="train in fp16 instead of the config's bf16 (CUDA only; ignored on CPU)")
    ds.add_argument("--teacher-model-fp16", action="store_true", help="run the teacher in fp16 on GPU (it stays fp32 on CPU)")
    ds.add_argument("--local_rank", type=int, default=-1, help="set by the deepspeed launcher; not needed otherwise")

    loss = parser.add_argument_group("loss")
    loss.add_argument("--type", required=True, help=f"training method (distillation_llm/methods.py): {', '.join(METHODS)}")
    loss.add_argument("--ab_alpha", type=float, default=None,
        help="alpha of the alpha-beta divergence (required by --type ab); safe in about [-1, 2], refused where float32 makes the loss 0 (distillation_llm/methods.py)")
    loss.add_argument("--ab_beta", type=float, default=None,
        help="beta of the alpha-beta divergence (required by --type ab); safe in about [-1, 2], refused where float32 makes the loss 0 (distillation_llm/methods.py)")
    loss.add_argument("--skew-alpha", type=float, default=0.1, help="sfkl/srkl: skew lam, the share of the first argument in the mixture (the teacher's in sfkl, the student's in srkl)")
    loss.add_argument("--jsd-lam", type=float, default=0.1, help="mixture weight lam of the jsd divergence")
    loss.add_argument("--kd-temperature", "--temperature-kld", type=float, default=1.0, help="temperature of teacher and student distributions in the divergence (--temperature-kld: POCL's spelling)")
    loss.add_argument("--chunk-size", type=int, default=None, help="rows per chunk of the fused LM-head loss (default: abkd.fused.default_chunk_size: 512 on CPU, up to 2048 on CUDA)")
    sgo = parser.add_argument_group("student-generated outputs (imitkd, gkd, distillm)")
    sgo.add_argument("--student-gen", action=argparse.BooleanOptionalAction, default=None,
        help="DistiLLM's switch for student-generated batches: on by default for the sampling types; --no-student-gen trains them on the dataset only, as the reference did without --student-gen")
    sgo.add_argument("--gen-top-p", type=float, default=1.0, help="nucleus top-p of the student's samples during training (--top-p is for --eval-gen)")
    sgo.add_argument("--mixed-alpha", type=float, default=0.5, help="GKD lambda: probability that a batch uses the student's own samples")
    sgo.add_argument("--gkd-beta", type=float, default=0.1, help="beta of GKD's generalised JSD: the teacher's weight in the mixture (0.1: DistiLLM's mixed-jsd, lambda 0.9)")
    sgo.add_argument("--init-threshold", type=float, default=0.0, help="DistiLLM: initial probability of student-generated batches")
    sgo.add_argument("--loss-eps", type=float, default=0.1, help="DistiLLM: raise the threshold by 0.1 when the validation loss worsens by more than this")
    sgo.add_argument("--capacity", type=int, default=1000,
        help="generated examples buffered per process: DistiLLM replays from it once full; gkd/imitkd train on random batches of it (0: on fresh samples)")
    sgo.add_argument("--replay-ratio", choices=("constant", "increasing", "decreasing"), default="decreasing",
        help="DistiLLM: share of student-generated batches freshly generated rather than replayed (constant 0.5, or rising/falling linearly over training)")

    rl = parser.add_argument_group("MiniLLM (--type minillm; DistiLLM's train_minillm.py flags)")
    rl.add_argument("--num-rollouts", type=int, default=256, help="prompts rolled out per round, over all processes (the reference's default)")
    rl.add_argument("--rollout-chunk-size", type=int, default=16,
        help="prompts sampled together in a round (the reference's --chunk-size, renamed here: --chunk-size is the fused loss's)")
    rl.add_argument("--ppo-epochs", type=int, default=4, help="passes over a round's rollouts before the next round (the MiniLLM launchers' 4)")
    rl.add_argument("--teacher-mixed-alpha", type=float, default=None, help="sample each token from (1 - alpha) student + alpha teacher (the launchers' 0.2)")
    rl.add_argument("--reward-scaling", type=float, default=None, help="divide the token rewards by this (the launchers' 0.5)")
    rl.add_argument("--cliprange-reward", type=float, default=1.0, help="clip the token rewards to [-c, c] (0: no clipping; the launchers pass 100)")
    rl.add_argument("--cliprange", type=float, default=0.2, help="PPO's clipping range of the importance-weighted ratio")
    rl.add_argument("--gamma", type=float, default=0.95, help="discount of the reward-to-go (the reference's default)")
    rl.add_argument("--length-norm", action="store_true", help="log each response's reward divided by its length (the reference's --length-norm: logging only)")
    rl.add_argument("--single-step-reg", action="store_true", help="add the per-token KL(student || teacher) over the vocabulary on the rollouts")
    rl.add_argument("--seed-ppo", type=int, default=42, help="seed of the rollouts: prompt order, sampling, mini-batch order")
    rl.add_argument("--seed-lm", type=int, default=None, help="seed of the --lm-data-dir order (default --seed)")

    curriculum = parser.add_argument_group("POCL curriculum")
    curriculum.add_argument("--curriculum", choices=("none", "pocl"), default="none", help="pocl: train easy-to-hard in Baby Step stages from --ranking")
    curriculum.add_argument("--ranking", help="ranking.jsonl from `python -m distillation_llm.rank_difficulty rank` (easy to hard)")
    curriculum.add_argument("--num-stages", type=int, default=4, help="curriculum stages S; stage s trains on the easiest (s+1)/S of the data")
    curriculum.add_argument("--stage-epochs", type=int, default=8, help="epochs per stage, POCL's 8 (with --stage-patience, the most a stage may take)")
    curriculum.add_argument("--stage-start", choices=("last", "best"), default="last",
        help="where each stage after the first starts: the previous stage's last step (POCL's published runs) or its best validated model")
    curriculum.add_argument("--stage-dev-num", type=_int_list, default=None, metavar="N,N,...",
        help="validation examples per stage, one number per stage (POCL: 1000,500,500,500); default --dev-num in every stage")
    curriculum.add_argument("--stage-patience", type=int, default=None, help="advance a stage once the validation loss has not improved for this many evaluations")
    curriculum.add_argument("--kd-temperature-start", type=float, default=1.0, help="KD temperature of the first stage (rises linearly to --kd-temperature-end)")
    curriculum.add_argument("--kd-temperature-end", type=float, default=2.0, help="KD temperature of the last stage")
    curriculum.add_argument("--kd-ratio-start", type=float, default=0.7, help="kd-ratio of the first stage (rises linearly to --kd-ratio-end)")
    curriculum.add_argument("--kd-ratio-end", type=float, default=1.0, help="kd-ratio of the last stage")

    from distillation_llm.generation import GenerationSettings, add_generation_args

    # --eval-gen decodes as every reference training script: pure sampling at temperature 1, up to
    # --max-length minus the (padded) prompt length new tokens, no n-gram ban (their finetune.py evaluate()).
    group = add_generation_args(parser, GenerationSettings(do_sample=True, top_k=0, top_p=1.0, temperature=1.0))
    for action in group._group_actions:
        if action.dest == "max_new_tokens":
            action.default, action.help = None, "--eval-gen: generate at most this many tokens (default --max-length minus --max-prompt-length, as the references)"

    reference = parser.add_argument_group("reference launchers", "flags of the DistiLLM/ABKD/POCL launchers with nothing to do here; each is logged at start-up with what it did there")
    reference.add_argument("--base-path", help="the reference's project root, from which it built default paths; here every path is given in full")
    reference.add_argument("--n-gpu", type=int, help="the reference's process count, used only in its output-directory names; here the launcher sets the world size")
    reference.add_argument("--mid-log-num", type=int, help="the reference's extra loss logs within one gradient accumulation (-1 off); here metrics are logged per optimizer step (--log-interval)")
    reference.add_argument("--seed-order", type=int, help="declared by the reference but never read; the data order here follows --seed")
    reference.add_argument("--gen-num-beams", type=int,
        help="declared by the reference but never read by its student sampler; student samples are drawn one per prompt (--num-beams is for --eval-gen)")
    reference.add_argument("--model-parallel", action="store_true", help="the reference's Megatron model parallelism (NotImplementedError in its Hugging Face path); shard models with ZeRO-3 instead")
    reference.add_argument("--model-parallel-size", type=int, help="the reference's model-parallel degree; see --model-parallel")
    reference.add_argument("--stage", type=int, help="POCL's stage index of a one-stage-per-run launcher (on a pre-split data dir); --curriculum pocl runs all stages in one run")
    return parser


REFERENCE_NOTES = {
    "base_path": "--base-path {value}: the reference built its default paths from it; here every path is given in full, so it is not used",
    "n_gpu": "--n-gpu {value}: the reference used it only in its output-directory names; this run has {world_size} process(es), set by the launcher",
    "mid_log_num": "--mid-log-num {value}: the reference logged losses within a gradient accumulation; here metrics are logged every --log-interval optimizer steps",
    "seed_order": "--seed-order {value}: declared but never read by the reference; the data order follows --seed {seed}",
    "gen_num_beams": "--gen-num-beams {value}: declared but never read by the reference's student sampler; student samples are drawn one per prompt",
    "model_parallel": "--model-parallel: the reference raised NotImplementedError for it; models here are data-parallel, sharded by ZeRO-3 when the DeepSpeed config asks",
    "model_parallel_size": "--model-parallel-size {value}: see --model-parallel; not used",
    "stage": "--stage {value}: POCL ran one curriculum stage per launcher; this run trains --data-dir as given, and --curriculum pocl runs all stages in one run",
}


def reference_notes(args: argparse.Namespace, world_size: int) -> list[str]:
    """One log line for each reference-only flag that was given (distillation_llm.finetune logs them)."""
    notes = [
        note.format(value=getattr(args, dest), world_size=world_size, seed=args.seed)
        for dest, note in REFERENCE_NOTES.items()
        if getattr(args, dest) not in (None, False)
    ]
    method = lookup(args.type)
    if args.student_gen and not method.samples_student:
        notes.append(f"--student-gen: --type {args.type} trains on the dataset (as in the reference, which sampled only for its mixed-*/adaptive-* types)")
    return notes


def divergence_params(args: argparse.Namespace) -> dict[str, float]:
    return lookup(args.type).params(args)


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Defaults that depend on other flags (validate applies them; the launcher tests too)."""
    if args.max_new_tokens is None:
        args.max_new_tokens = args.max_length - args.max_prompt_length
    return args


def validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    try:
        method = lookup(args.type)
    except ValueError as error:
        parser.error(str(error))
    if method.needs_teacher and not args.teacher_model_path and not args.teacher_cache:
        parser.error(f"--type {args.type} distils from a teacher: give --teacher-model-path (or a --teacher-cache of its outputs)")
    if not method.needs_teacher and (args.teacher_model_path or args.teacher_cache):
        parser.error(f"--type {args.type} trains the student alone: drop {'--teacher-cache' if args.teacher_cache else '--teacher-model-path'}")
    if args.teacher_cache:
        check_teacher_cache_flags(args, parser, method)
    if method.divergence == "ab" and (args.ab_alpha is None or args.ab_beta is None):
        parser.error("--type ab needs both --ab_alpha and --ab_beta")
    if method.divergence != "ab" and (args.ab_alpha is not None or args.ab_beta is not None):
        parser.error(f"--ab_alpha/--ab_beta only apply to --type ab, not --type {args.type}")
    for action in parser._actions:  # nan and inf pass every range check below
        value = getattr(args, action.dest, None)
        if action.type is float and value is not None and not math.isfinite(value):
            parser.error(f"{action.option_strings[0]} must be a finite number, got {value}")
    if method.divergence == "ab":
        try:
            check_ab_params(args.ab_alpha, args.ab_beta)  # its warning is logged at start-up (distillation_llm.checks)
        except ValueError as error:
            parser.error(str(error))
    if method.source_kind(args.student_gen) == "adaptive" and not args.do_valid:
        parser.error(f"--type {args.type} adapts its threshold to the validation loss: add --do-valid")
    if method.source == "rollout":
        if args.teacher_cache:
            parser.error(f"--type {args.type} scores the student's own samples with the teacher: give --teacher-model-path, not --teacher-cache")
        if args.curriculum != "none" or args.student_gen is False:
            parser.error(f"--type {args.type} trains on its rollouts: drop {'--curriculum' if args.curriculum != 'none' else '--no-student-gen'}")
        if args.teacher_mixed_alpha is not None and not 0.0 <= args.teacher_mixed_alpha <= 1.0:
            parser.error(f"--teacher-mixed-alpha must lie in [0, 1], got {args.teacher_mixed_alpha}")
        for flag in ("num_rollouts", "rollout_chunk_size", "ppo_epochs"):
            if getattr(args, flag) < 1:
                parser.error(f"--{flag.replace('_', '-')} must be at least 1")
        if args.reward_scaling is not None and args.reward_scaling <= 0:
            parser.error(f"--reward-scaling must be positive, got {args.reward_scaling}")
    if not 0.0 <= args.adam_beta2 < 1.0:
        parser.error(f"--adam-beta2 must lie in [0, 1), got {args.adam_beta2}")
    if not 0.0 < args.gen_top_p <= 1.0:
        parser.error(f"--gen-top-p must lie in (0, 1], got {args.gen_top_p}")
    for flag in ("mixed_alpha", "gkd_beta", "init_threshold"):
        if not 0.0 <= getattr(args, flag) <= 1.0:
            parser.error(f"--{flag.replace('_', '-')} must lie in [0, 1]")
    samples_student = method.source_kind(args.student_gen) in STUDENT_SOURCES
    if samples_student and args.max_length <= args.max_prompt_length:
        parser.error(f"--type {args.type} samples up to --max-length - --max-prompt-length new tokens: need --max-length ({args.max_length}) > --max-prompt-length ({args.max_prompt_length})")
    if not 0.0 <= args.kd_ratio <= 1.0:
        parser.error(f"--kd-ratio must lie in [0, 1], got {args.kd_ratio}")
    if args.kd_temperature <= 0:
        parser.error(f"--kd-temperature must be positive, got {args.kd_temperature}")
    for flag in ("save_interval", "eval_interval"):
        if getattr(args, flag) < -1:
            parser.error(f"--{flag.replace('_', '-')} must be a step count, 0, or -1 (every epoch), got {getattr(args, flag)}")
    for flag in ("batch_size", "eval_batch_size", "gradient_accumulation_steps", "max_length", "max_prompt_length", "log_interval"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    if args.curriculum == "pocl":
        if not args.ranking:
            parser.error("--curriculum pocl needs --ranking (make one with `python -m distillation_llm.rank_difficulty rank`)")
        if args.stage_patience is not None and not args.do_valid:
            parser.error("--stage-patience advances on validation loss: add --do-valid (and --eval-interval for checks within an epoch)")
        for flag in ("kd_ratio_start", "kd_ratio_end"):
            if not 0.0 <= getattr(args, flag) <= 1.0:
                parser.error(f"--{flag.replace('_', '-')} must lie in [0, 1]")
        if min(args.kd_temperature_start, args.kd_temperature_end) <= 0:
            parser.error("--kd-temperature-start/--kd-temperature-end must be positive")
        if args.stage_dev_num is not None and (len(args.stage_dev_num) != args.num_stages or min(args.stage_dev_num) < 1):
            parser.error(f"--stage-dev-num {','.join(map(str, args.stage_dev_num))}: give one positive count per stage ({args.num_stages} stages)")
    elif args.ranking or args.stage_dev_num is not None:
        parser.error(f"{'--ranking' if args.ranking else '--stage-dev-num'} is only used with --curriculum pocl")
    resolve_defaults(args)
    if args.eval_gen and args.max_new_tokens < 1:
        parser.error(f"--eval-gen generates --max-new-tokens {args.max_new_tokens} (--max-length {args.max_length} minus --max-prompt-length "
                     f"{args.max_prompt_length}): give --max-new-tokens or a longer --max-length")
    if args.do_train and args.total_iters is None and args.epochs is None and args.curriculum == "none":
        parser.error("give --epochs or --total-iters")
    for flag in ("epochs", "total_iters", "stop_after_iters"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} {getattr(args, flag)} plans no training step: give at least 1")
    save = Path(args.save)
    blocking = next((path for path in (save, *save.parents) if path.exists() and not path.is_dir()), None)
    if blocking is not None:
        where = "is a file" if blocking == save else f"lies under {blocking}, which is a file"
        parser.error(f"--save {save} {where}; give a directory for the run's outputs")
    if args.lm_data_dir and args.lm_coef <= 0:
        parser.error("--lm-data-dir needs a positive --lm-coef")
    for flag, path in (("--model-path", args.model_path), ("--teacher-model-path", args.teacher_model_path)):
        if path is not None and not (Path(path) / "config.json").is_file():
            parser.error(f"{flag} {path}: not a local model directory (no config.json); nothing is downloaded")
    if not (Path(args.data_dir) / "meta.json").is_file():
        parser.error(f"--data-dir {args.data_dir}: no processed dataset (missing meta.json); run tools.process_data_dolly first")
    if args.teacher_peft_path and not (Path(args.teacher_peft_path) / "adapter_config.json").is_file():
        parser.error(f"--teacher-peft-path {args.teacher_peft_path}: no LoRA adapter here (missing adapter_config.json)")
    if args.peft_path and args.peft != "lora":
        parser.error("--peft-path loads a LoRA adapter of the student: add --peft lora")
    if args.peft_path and not (Path(args.peft_path) / "adapter_config.json").is_file():
        parser.error(f"--peft-path {args.peft_path}: no LoRA adapter here (missing adapter_config.json)")
    if args.peft_name and not args.peft_path:
        parser.error("--peft-name names the --peft-path adapter: give --peft-path")
    if args.teacher_peft_name and not args.teacher_peft_path:
        parser.error("--teacher-peft-name names the --teacher-peft-path adapter: give --teacher-peft-path")
    if args.teacher_peft_path and not args.teacher_model_path:
        parser.error("--teacher-peft-path needs --teacher-model-path (the base model it adapts)")
    args.ckpt_name = args.ckpt_name or Path(args.model_path).name
    if args.teacher_model_path:
        args.teacher_ckpt_name = args.teacher_ckpt_name or Path(args.teacher_model_path).name
    if args.teacher_cache:
        args.teacher_ckpt_name = args.teacher_ckpt_name or f"cache {Path(args.teacher_cache).name}"
    if args.peft_path:
        args.peft_name = args.peft_name or Path(args.peft_path).name
    if args.teacher_peft_path:
        args.teacher_peft_name = args.teacher_peft_name or Path(args.teacher_peft_path).name
    return args


def check_teacher_cache_flags(args: argparse.Namespace, parser: argparse.ArgumentParser, method) -> None:
    """--teacher-cache replaces the teacher, and holds its outputs on the dataset's responses only."""
    if args.teacher_model_path or args.teacher_peft_path:
        parser.error("--teacher-cache replaces the teacher: drop --teacher-model-path/--teacher-peft-path (the cache records which teacher made it)")
    if method.source_kind(args.student_gen) in STUDENT_SOURCES:
        parser.error(
            f"--teacher-cache: --type {args.type} trains on the student's own samples, generated during training, and the teacher must "
            "score each new sample; a cache holds its outputs on the dataset's responses only. Give --teacher-model-path "
            "(or --no-student-gen to train on the dataset alone)"
        )
    if not (Path(args.teacher_cache) / "meta.json").is_file():
        parser.error(f"--teacher-cache {args.teacher_cache}: no complete teacher cache (missing meta.json); build it with tools.cache_teacher_logits")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    return validate(parser.parse_args(argv), parser)


def args_record(args: argparse.Namespace) -> dict:
    """What args.json holds: the parsed flags, under "method" what --type resolved to in
    distillation_llm/methods.py, and with --teacher-cache under "teacher_cache_meta" the cache's identity."""
    method = lookup(args.type)
    resolved = {"divergence": method.divergence, "params": method.params(args), "source": method.source_kind(args.student_gen), "selection": method.selection}
    record = {**vars(args), "method": resolved}
    if args.teacher_cache:  # which cache, not only where: --resume refuses a different one at the same path
        from distillation_llm.teacher_cache import identity, read_meta

        record["teacher_cache_meta"] = identity(read_meta(args.teacher_cache))
    return record


def loss_formula(method, args: argparse.Namespace, kd_ratio: float, temperature: float) -> str:
    """The loss with its factors, e.g. `0.3 * CE + 0.7 * tfkl * T^2 (T = 1.33)`."""
    if method.divergence is None:
        return "CE" + (f" + {args.lm_coef:g} * LM" if args.lm_data_dir else "")
    params = ", ".join(f"{key}={value:g}" for key, value in method.params(args).items())
    divergence = f"{args.type}({params})" if params else args.type
    scale = " * T^2" if method.temperature_squared else ""
    text = f"{1 - kd_ratio:g} * CE + {kd_ratio:g} * {divergence}{scale} (T = {temperature:.3g})"
    return text + (f" + {args.lm_coef:g} * LM" if args.lm_data_dir else "")


def run_summary(args: argparse.Namespace, world_size: int, precision: str) -> list[str]:
    """What a run trains, in the words of a launcher's log (printed at start-up): global batch,
    precision, the loss with its factors (per POCL stage), the dev decoding and where each stage starts."""
    method = lookup(args.type)
    lines = [
        f"global batch {world_size * args.batch_size * args.gradient_accumulation_steps} = {world_size} process(es) x batch {args.batch_size} "
        f"x accumulation {args.gradient_accumulation_steps}; precision {precision}",
    ]
    if method.source == "rollout":
        mix = f", each token from {1 - args.teacher_mixed_alpha:g} student + {args.teacher_mixed_alpha:g} teacher" if args.teacher_mixed_alpha else ""
        scaling = f" / {args.reward_scaling:g}" if args.reward_scaling else ""
        clip = f" clipped to +-{args.cliprange_reward:g}" if args.cliprange_reward else ""
        reg = " + KL(student || teacher) per token (single-step)" if args.single_step_reg else ""
        lm = f" + {args.lm_coef:g} * ({1 - args.kd_ratio:g} * CE + {args.kd_ratio:g} * fkl) on LM data" if args.lm_data_dir else ""
        lines.append(f"loss PPO-clipped ({args.cliprange:g}) policy gradient, rewards (log p - log q){scaling}{clip}, gamma {args.gamma:g}{reg}{lm}; "
                     f"rounds of {args.num_rollouts} rollouts{mix}, {args.ppo_epochs} PPO epochs each")
    elif args.curriculum == "pocl":
        for stage in range(args.num_stages):
            ratio = stage_value(args.kd_ratio_start, args.kd_ratio_end, stage, args.num_stages)
            temperature = stage_value(args.kd_temperature_start, args.kd_temperature_end, stage, args.num_stages)
            start = "--model-path" if stage == 0 else f"stage {stage}'s {'last step' if args.stage_start == 'last' else 'best model'}"
            dev = f", {args.stage_dev_num[stage]} dev examples" if args.stage_dev_num else ""
            lines.append(f"POCL stage {stage + 1}/{args.num_stages}: loss {loss_formula(method, args, ratio, temperature)}; "
                         f"{args.stage_epochs} epochs from {start}{dev}")
    else:
        lines.append(f"loss {loss_formula(method, args, args.kd_ratio, args.kd_temperature)}")
    if args.eval_gen:
        decoding = (f"sampling at temperature {args.temperature:g}, top-k {args.top_k or 'off'}, top-p {args.top_p:g}" if args.do_sample
                    else "greedy" if args.num_beams == 1 else f"beam search ({args.num_beams} beams)")
        ban = f", no repeated {args.no_repeat_ngram_size}-grams" if args.no_repeat_ngram_size else ""
        lines.append(f"dev decoding (--eval-gen, selects best/): {decoding}, up to {args.max_new_tokens} new tokens{ban}")
    return lines
