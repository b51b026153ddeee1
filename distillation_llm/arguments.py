"""Command line of `distillation_llm.finetune`.

Flag names follow the DistiLLM/ABKD/MiniLLM `finetune.py`, so existing launch scripts carry over.
Everything is validated at start-up; the resolved configuration is written to `<save>/args.json`.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

# --type -> divergence of abkd.losses (None: cross-entropy only).
TYPES: dict[str, str | None] = {
    "sft": None,
    "init": None,
    "kd": "fkl",
    "fkl": "fkl",
    "rkl": "rkl",
    "jsd": "jsd",
    "tvd": "tvd",
    "sfkl": "sfkl",
    "srkl": "srkl",
    "ab": "ab",
}
# Methods of the papers that change where batches come from; they arrive in later releases and
# must never silently train something else.
NOT_YET_SUPPORTED = ("seqkd", "imitkd", "gkd", "distillm", "adaptive-sfkl", "adaptive-srkl", "minillm", "pocl")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m distillation_llm.finetune",
        description="SFT and knowledge distillation of causal LMs with DeepSpeed (ABKD, DistiLLM baselines).",
    )
    model = parser.add_argument_group("models")
    model.add_argument("--model-path", required=True, help="local directory of the student checkpoint (Hugging Face format)")
    model.add_argument("--teacher-model-path", help="local directory of the teacher checkpoint; required by every KD --type")
    model.add_argument("--ckpt-name", help="student name used in logs (default: the --model-path directory name)")
    model.add_argument("--teacher-ckpt-name", help="teacher name used in logs (default: the --teacher-model-path directory name)")
    model.add_argument("--model-type", help="model family (gpt2, opt, llama, qwen2, ...); read from config.json when omitted")

    data = parser.add_argument_group("data")
    data.add_argument("--data-dir", required=True, help="processed instruction dataset from tools.process_data_dolly (train/valid splits)")
    data.add_argument("--lm-data-dir", help="processed pre-training blocks from tools.process_data_pretrain, for the extra LM loss")
    data.add_argument("--lm-coef", type=float, default=0.0, help="weight of the language-modelling loss on --lm-data-dir batches")
    data.add_argument("--dev-num", type=int, default=-1, help="use at most this many validation examples (-1: the whole valid split)")
    data.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes per rank")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--lr", type=float, default=5e-4, help="peak learning rate of AdamW")
    optim.add_argument("--batch-size", type=int, default=8, help="training micro-batch size per process")
    optim.add_argument("--eval-batch-size", type=int, default=16, help="validation batch size per process")
    optim.add_argument("--gradient-accumulation-steps", type=int, default=1, help="micro-batches accumulated per optimizer step")
    optim.add_argument("--warmup-iters", type=int, default=0, help="optimizer steps of linear learning-rate warm-up")
    optim.add_argument("--lr-decay-style", default="cosine", choices=("constant", "cosine", "linear"), help="learning-rate decay after warm-up")
    optim.add_argument("--lr-min", type=float, default=0.0, help="learning rate at the end of cosine/linear decay")
    optim.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay (not applied to biases and norms)")
    optim.add_argument("--clip-grad", type=float, default=1.0, help="gradient-norm clipping threshold (0 disables)")
    optim.add_argument("--epochs", type=int, default=None, help="training epochs (ignored when --total-iters is given)")
    optim.add_argument("--total-iters", type=int, default=None, help="total optimizer steps; overrides --epochs")
    optim.add_argument("--kd-ratio", type=float, default=0.5, help="loss = (1 - kd_ratio) * CE + kd_ratio * divergence")

    lengths = parser.add_argument_group("lengths")
    lengths.add_argument("--max-length", type=int, default=512, help="maximum prompt + response tokens of a training sequence")
    lengths.add_argument("--max-prompt-length", type=int, default=256, help="maximum prompt tokens (for generation during evaluation)")

    run = parser.add_argument_group("run control")
    run.add_argument("--do-train", action="store_true", help="train (otherwise only validate when --do-valid)")
    run.add_argument("--do-valid", action="store_true", help="compute the validation loss every --eval-interval steps and at epoch ends")
    run.add_argument("--eval-gen", action="store_true", help="also generate on the dev split and score ROUGE-L during validation; ROUGE-L then selects best/")
    run.add_argument("--save-interval", type=int, default=0, help="save a checkpoint every N optimizer steps (0: only at the end)")
    run.add_argument("--eval-interval", type=int, default=0, help="validate every N optimizer steps (0: only at epoch ends)")
    run.add_argument("--log-interval", type=int, default=10, help="log training metrics every N optimizer steps")
    run.add_argument("--save", required=True, help="output directory: args.json, log.txt, <step>/ models, best/, checkpoints/")
    run.add_argument("--seed", type=int, default=10, help="random seed for initialisation, data order and dropout")
    run.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in <save>/checkpoints")
    run.add_argument("--stop-after-iters", type=int, default=None, help="stop this invocation after N optimizer steps with a resumable checkpoint (for time-limited jobs)")
    run.add_argument("--keep-checkpoints", type=int, default=2, help="resumable DeepSpeed checkpoints to keep (models in <step>/ are all kept)")
    run.add_argument("--report-to", choices=("none", "tensorboard"), default="none", help="also log metrics to TensorBoard under <save>/tensorboard")

    ds = parser.add_argument_group("DeepSpeed")
    ds.add_argument("--deepspeed", action="store_true", help="accepted for compatibility: training always runs through DeepSpeed")
    ds.add_argument("--deepspeed_config", default=str(Path(__file__).resolve().parents[1] / "configs" / "deepspeed" / "ds_config.json"), help="DeepSpeed JSON configuration (ZeRO stage, precision)")
    ds.add_argument("--fp16", action="store_true", help="train in fp16 instead of the config's bf16 (CUDA only; ignored on CPU)")
    ds.add_argument("--teacher-model-fp16", action="store_true", help="run the teacher in fp16 on GPU (it stays fp32 on CPU)")
    ds.add_argument("--local_rank", type=int, default=-1, help="set by the deepspeed launcher; not needed otherwise")

    loss = parser.add_argument_group("loss")
    loss.add_argument("--type", required=True, help=f"training objective: {', '.join(TYPES)}")
    loss.add_argument("--ab_alpha", type=float, default=None, help="alpha of the alpha-beta divergence (required by --type ab)")
    loss.add_argument("--ab_beta", type=float, default=None, help="beta of the alpha-beta divergence (required by --type ab)")
    loss.add_argument("--skew-alpha", type=float, default=0.1, help="skew of sfkl/srkl: the teacher's share in the mixture")
    loss.add_argument("--jsd-lam", type=float, default=0.1, help="mixture weight lam of the jsd divergence")
    loss.add_argument("--kd-temperature", type=float, default=1.0, help="temperature of teacher and student distributions in the divergence")
    loss.add_argument("--chunk-size", type=int, default=None, help="rows per chunk of the fused LM-head loss (default: abkd.fused.DEFAULT_CHUNK_SIZE)")
    curriculum = parser.add_argument_group("POCL curriculum")
    curriculum.add_argument("--curriculum", choices=("none", "pocl"), default="none", help="pocl: train easy-to-hard in Baby Step stages from --ranking")
    curriculum.add_argument("--ranking", help="ranking.jsonl from `python -m distillation_llm.curriculum rank` (easy to hard)")
    curriculum.add_argument("--num-stages", type=int, default=4, help="curriculum stages S; stage s trains on the easiest (s+1)/S of the data")
    curriculum.add_argument("--stage-epochs", type=int, default=1, help="epochs per stage (with --stage-patience, the most a stage may take)")
    curriculum.add_argument("--stage-patience", type=int, default=None, help="advance a stage once the validation loss has not improved for this many evaluations")
    curriculum.add_argument("--kd-temperature-start", type=float, default=1.0, help="KD temperature of the first stage (rises linearly to --kd-temperature-end)")
    curriculum.add_argument("--kd-temperature-end", type=float, default=2.0, help="KD temperature of the last stage")
    curriculum.add_argument("--kd-ratio-start", type=float, default=0.7, help="kd-ratio of the first stage (rises linearly to --kd-ratio-end)")
    curriculum.add_argument("--kd-ratio-end", type=float, default=1.0, help="kd-ratio of the last stage")

    from distillation_llm.generation import GenerationSettings, add_generation_args

    add_generation_args(parser, GenerationSettings(do_sample=False, max_new_tokens=128))
    return parser


def divergence_params(args: argparse.Namespace) -> dict[str, float]:
    name = TYPES[args.type]
    if name == "ab":
        return {"alpha": args.ab_alpha, "beta": args.ab_beta}
    if name in ("sfkl", "srkl"):
        return {"lam": args.skew_alpha}
    if name == "jsd":
        return {"lam": args.jsd_lam}
    return {}


def validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    if args.type not in TYPES:
        later = " (not implemented in this release)" if args.type in NOT_YET_SUPPORTED else ""
        parser.error(f"--type {args.type}{later}: supported values are {', '.join(TYPES)}")
    args.divergence = TYPES[args.type]
    if args.divergence is not None and not args.teacher_model_path:
        parser.error(f"--type {args.type} distils from a teacher: give --teacher-model-path")
    if args.divergence is None and args.teacher_model_path:
        parser.error(f"--type {args.type} trains the student alone: drop --teacher-model-path")
    if args.type == "ab" and (args.ab_alpha is None or args.ab_beta is None):
        parser.error("--type ab needs both --ab_alpha and --ab_beta")
    if args.type != "ab" and (args.ab_alpha is not None or args.ab_beta is not None):
        parser.error(f"--ab_alpha/--ab_beta only apply to --type ab, not --type {args.type}")
    for flag, value in (("--ab_alpha", args.ab_alpha), ("--ab_beta", args.ab_beta)):
        if value is not None and not math.isfinite(value):
            parser.error(f"{flag} must be a finite number")
    if not 0.0 <= args.kd_ratio <= 1.0:
        parser.error(f"--kd-ratio must lie in [0, 1], got {args.kd_ratio}")
    if args.kd_temperature <= 0:
        parser.error(f"--kd-temperature must be positive, got {args.kd_temperature}")
    for flag in ("batch_size", "eval_batch_size", "gradient_accumulation_steps", "max_length", "max_prompt_length", "log_interval"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    if args.curriculum == "pocl":
        if not args.ranking:
            parser.error("--curriculum pocl needs --ranking (make one with `python -m distillation_llm.curriculum rank`)")
        if args.stage_patience is not None and not args.do_valid:
            parser.error("--stage-patience advances on validation loss: add --do-valid (and --eval-interval for checks within an epoch)")
        for flag in ("kd_ratio_start", "kd_ratio_end"):
            if not 0.0 <= getattr(args, flag) <= 1.0:
                parser.error(f"--{flag.replace('_', '-')} must lie in [0, 1]")
        if min(args.kd_temperature_start, args.kd_temperature_end) <= 0:
            parser.error("--kd-temperature-start/--kd-temperature-end must be positive")
    elif args.ranking:
        parser.error("--ranking is only used with --curriculum pocl")
    if args.do_train and args.total_iters is None and args.epochs is None and args.curriculum == "none":
        parser.error("give --epochs or --total-iters")
    if args.lm_data_dir and args.lm_coef <= 0:
        parser.error("--lm-data-dir needs a positive --lm-coef")
    for flag, path in (("--model-path", args.model_path), ("--teacher-model-path", args.teacher_model_path)):
        if path is not None and not (Path(path) / "config.json").is_file():
            parser.error(f"{flag} {path}: not a local model directory (no config.json); nothing is downloaded")
    if not (Path(args.data_dir) / "meta.json").is_file():
        parser.error(f"--data-dir {args.data_dir}: no processed dataset (missing meta.json); run tools.process_data_dolly first")
    args.ckpt_name = args.ckpt_name or Path(args.model_path).name
    if args.teacher_model_path:
        args.teacher_ckpt_name = args.teacher_ckpt_name or Path(args.teacher_model_path).name
    return args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    return validate(parser.parse_args(argv), parser)


def write_args(args: argparse.Namespace, path: Path) -> None:
    path.write_text(json.dumps(vars(args), indent=2, sort_keys=True, default=str) + "\n")
