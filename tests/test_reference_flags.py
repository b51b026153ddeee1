"""Every flag the DistiLLM, ABKD and POCL launchers pass to `finetune.py` is accepted by ours and
does what it documents: a parsed value, a registry row, or a start-up log line saying what the flag
did in the reference and why nothing is needed here."""

import pytest
import torch
from safetensors.torch import load_file

from distillation_llm import arguments, finetune
from distillation_llm.methods import lookup

# Flags of the launchers (`OPTS+=` lines, launcher-only torchrun flags left out), by source.
REFERENCE_FLAGS = {
    "DistiLLM (github.com/jongwooko/distillm) scripts/gpt2/{distillm,gkd,imitkd,init,kd,seqkd,sft}/*.sh": [
        "--base-path", "--batch-size", "--capacity", "--ckpt-name", "--clip-grad", "--data-dir", "--deepspeed", "--deepspeed_config",
        "--dev-num", "--do-sample", "--do-train", "--do-valid", "--epochs", "--eval-batch-size", "--eval-gen", "--eval-interval",
        "--gen-num-beams", "--gen-top-p", "--gradient-accumulation-steps", "--gradient-checkpointing", "--init-threshold", "--kd-ratio",
        "--lm-data-dir", "--log-interval", "--loss-eps", "--lr", "--lr-decay-style", "--max-length", "--max-prompt-length",
        "--mid-log-num", "--mixed-alpha", "--model-path", "--n-gpu", "--num-workers", "--save", "--save-interval", "--seed",
        "--seed-order", "--student-gen", "--teacher-ckpt-name", "--teacher-model-fp16", "--teacher-model-path", "--temperature",
        "--top-k", "--top-p", "--type", "--warmup-iters", "--weight-decay",
    ],
    "ABKD (github.com/ghwang-s/abkd) distillation_llm/scripts/gpt2/*/*.sh: the DistiLLM flags and": ["--ab_alpha", "--ab_beta"],
    "POCL (github.com/liuliuyuan6/POCL) scripts/gpt2/{gkd,kd,pocl,seqkd,sft}/**/*.sh: the DistiLLM flags and": [
        "--num-stages", "--skew-alpha", "--stage", "--temperature-kld",
    ],
    "DistiLLM/ABKD scripts/openllama2/*/*_teacher_lora.sh": [
        "--model-type", "--peft", "--peft-name", "--peft-path", "--teacher-peft-name", "--teacher-peft-path",
    ],
    "DistiLLM/ABKD/POCL arguments.py (commented out in the launchers)": ["--model-parallel", "--model-parallel-size"],
}
ALL_FLAGS = sorted({flag for flags in REFERENCE_FLAGS.values() for flag in flags})


@pytest.fixture(scope="module")
def paths(tmp_path_factory, tiny_tokenizer_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir):
    from conftest import write_instruction_jsonl

    from distillation_llm.models import add_lora, load_causal_lm
    from tools import process_data_dolly

    root = tmp_path_factory.mktemp("reference-flags")
    write_instruction_jsonl(root / "raw" / "raw.jsonl", 16, seed=3)
    process_data_dolly.main([
        "--data-dir", str(root / "raw"), "--processed-data-dir", str(root / "data"), "--model-path", str(tiny_tokenizer_dir),
        "--max-prompt-length", "48", "--max-length", "64", "--dev-num", "4",
    ])
    adapter = add_lora(load_causal_lm(tiny_gpt2_dir), r=4, alpha=8, dropout=0.1)
    with torch.no_grad():
        for name, parameter in adapter.named_parameters():
            if "lora_B" in name:
                parameter.uniform_(-0.1, 0.1)  # a fresh adapter has B = 0; this one must be told apart
    adapter.save_pretrained(root / "adapter-714")
    return {"data": root / "data", "student": tiny_gpt2_dir, "teacher": tiny_gpt2_teacher_dir, "adapter": root / "adapter-714", "root": root}


def _parse(paths, *extra):
    base = [
        "--model-path", paths["student"], "--teacher-model-path", paths["teacher"], "--data-dir", paths["data"],
        "--save", paths["root"] / "save", "--type", "kd", "--total-iters", "1", "--max-length", "64", "--max-prompt-length", "48",
    ]
    return arguments.parse_args([str(x) for x in (*base, *extra)])


def _notes(args):
    return "\n".join(arguments.reference_notes(args, world_size=1))


# flag -> (arguments that exercise it, check of its documented effect on (args, notes)).
EFFECTS = {
    "--base-path": (["--base-path", "/home/distillm"], lambda a, n: "--base-path /home/distillm: the reference built its default paths" in n),
    "--batch-size": (["--batch-size", "3"], lambda a, n: a.batch_size == 3),
    "--capacity": (["--capacity", "123"], lambda a, n: a.capacity == 123),
    "--ckpt-name": (["--ckpt-name", "gpt2-base"], lambda a, n: a.ckpt_name == "gpt2-base"),
    "--clip-grad": (["--clip-grad", "0.5"], lambda a, n: a.clip_grad == 0.5),
    "--data-dir": ([], lambda a, n: a.data_dir.endswith("data")),
    "--deepspeed": (["--deepspeed"], lambda a, n: a.deepspeed is True),
    "--deepspeed_config": (["--deepspeed_config", "configs/deepspeed/ds_config_zero2.json"], lambda a, n: a.deepspeed_config.endswith("zero2.json")),
    "--dev-num": (["--dev-num", "3"], lambda a, n: a.dev_num == 3),
    "--do-sample": (["--do-sample"], lambda a, n: a.do_sample is True),
    "--do-train": (["--do-train"], lambda a, n: a.do_train is True),
    "--do-valid": (["--do-valid"], lambda a, n: a.do_valid is True),
    "--epochs": (["--epochs", "20"], lambda a, n: a.epochs == 20),
    "--eval-batch-size": (["--eval-batch-size", "64"], lambda a, n: a.eval_batch_size == 64),
    "--eval-gen": (["--eval-gen"], lambda a, n: a.eval_gen is True),
    "--eval-interval": (["--eval-interval", "-1"], lambda a, n: a.eval_interval == -1),  # every epoch end
    "--gen-num-beams": (["--gen-num-beams", "1"], lambda a, n: "--gen-num-beams 1: declared but never read" in n),
    "--gen-top-p": (["--gen-top-p", "0.8"], lambda a, n: a.gen_top_p == 0.8),
    "--gradient-accumulation-steps": (["--gradient-accumulation-steps", "2"], lambda a, n: a.gradient_accumulation_steps == 2),
    "--gradient-checkpointing": (["--gradient-checkpointing"], lambda a, n: a.gradient_checkpointing is True),
    "--init-threshold": (["--init-threshold", "0.3"], lambda a, n: a.init_threshold == 0.3),
    "--kd-ratio": (["--kd-ratio", "0.8"], lambda a, n: a.kd_ratio == 0.8),
    "--lm-data-dir": (["--lm-data-dir", "lm"], lambda a, n: a.lm_data_dir == "lm" and a.lm_coef == 1.0),  # the reference's lm-coef 1
    "--log-interval": (["--log-interval", "4"], lambda a, n: a.log_interval == 4),
    "--loss-eps": (["--loss-eps", "0.2"], lambda a, n: a.loss_eps == 0.2),
    "--lr": (["--lr", "0.0005"], lambda a, n: a.lr == 5e-4),
    "--lr-decay-style": (["--lr-decay-style", "linear"], lambda a, n: a.lr_decay_style == "linear"),
    "--max-length": ([], lambda a, n: a.max_length == 64),
    "--max-prompt-length": ([], lambda a, n: a.max_prompt_length == 48),
    "--mid-log-num": (["--mid-log-num", "-1"], lambda a, n: "--mid-log-num -1: the reference logged losses within a gradient accumulation" in n),
    "--mixed-alpha": (["--mixed-alpha", "0.8"], lambda a, n: a.mixed_alpha == 0.8),
    "--model-path": ([], lambda a, n: a.ckpt_name == a.model_path.rstrip("/").split("/")[-1]),  # names the student in logs
    "--n-gpu": (["--n-gpu", "4"], lambda a, n: "--n-gpu 4: the reference used it only in its output-directory names; this run has 1 process" in n),
    "--num-workers": (["--num-workers", "4"], lambda a, n: a.num_workers == 4),
    "--save": ([], lambda a, n: a.save.endswith("save")),
    "--save-interval": (["--save-interval", "-1"], lambda a, n: a.save_interval == -1),  # every epoch end
    "--seed": (["--seed", "10"], lambda a, n: a.seed == 10),
    "--seed-order": (["--seed-order", "42"], lambda a, n: "--seed-order 42: declared but never read by the reference; the data order follows --seed" in n),
    "--student-gen": (
        ["--type", "adaptive-sfkl", "--do-valid", "--student-gen"],
        lambda a, n: a.student_gen is True and lookup(a.type).source_kind(a.student_gen) == "adaptive",
    ),
    "--teacher-ckpt-name": (["--teacher-ckpt-name", "xlarge-sft"], lambda a, n: a.teacher_ckpt_name == "xlarge-sft"),
    "--teacher-model-fp16": (["--teacher-model-fp16"], lambda a, n: a.teacher_model_fp16 is True),
    "--teacher-model-path": ([], lambda a, n: a.teacher_model_path is not None and lookup(a.type).needs_teacher),
    "--temperature": (["--temperature", "0.7"], lambda a, n: a.temperature == 0.7),
    "--top-k": (["--top-k", "0"], lambda a, n: a.top_k == 0),
    "--top-p": (["--top-p", "0.9"], lambda a, n: a.top_p == 0.9),
    "--type": (["--type", "srkl"], lambda a, n: lookup(a.type).divergence == "srkl"),
    "--warmup-iters": (["--warmup-iters", "5"], lambda a, n: a.warmup_iters == 5),
    "--weight-decay": (["--weight-decay", "0.01"], lambda a, n: a.weight_decay == 0.01),
    "--ab_alpha": (["--type", "ab", "--ab_alpha", "0.2", "--ab_beta", "0.7"], lambda a, n: lookup(a.type).params(a)["alpha"] == 0.2),
    "--ab_beta": (["--type", "ab", "--ab_alpha", "0.2", "--ab_beta", "0.7"], lambda a, n: lookup(a.type).params(a)["beta"] == 0.7),
    "--num-stages": (["--num-stages", "3"], lambda a, n: a.num_stages == 3),
    "--skew-alpha": (["--type", "srkl", "--skew-alpha", "0.12"], lambda a, n: lookup(a.type).params(a) == {"lam": 0.12}),
    "--stage": (["--stage", "1"], lambda a, n: "--stage 1: POCL ran one curriculum stage per launcher" in n),
    "--temperature-kld": (
        ["--type", "tfkl", "--temperature-kld", "1.33"],
        lambda a, n: a.kd_temperature == 1.33 and "* fkl() * T^2, kd_ratio 1, KD temperature 1.33" in lookup(a.type).describe(a),
    ),
    "--model-type": (["--model-type", "gpt2"], lambda a, n: a.model_type == "gpt2"),
    "--peft": (["--peft", "lora"], lambda a, n: a.peft == "lora"),
    "--peft-name": (["--peft", "lora", "--peft-path", "ADAPTER", "--peft-name", "714"], lambda a, n: a.peft_name == "714"),
    "--peft-path": (["--peft", "lora", "--peft-path", "ADAPTER"], lambda a, n: a.peft_name == "adapter-714"),  # named after its directory
    "--teacher-peft-name": (["--teacher-peft-path", "ADAPTER", "--teacher-peft-name", "sft_7B"], lambda a, n: a.teacher_peft_name == "sft_7B"),
    "--teacher-peft-path": (["--teacher-peft-path", "ADAPTER"], lambda a, n: a.teacher_peft_path.endswith("adapter-714")),
    "--model-parallel": (["--model-parallel"], lambda a, n: "--model-parallel: the reference raised NotImplementedError" in n),
    "--model-parallel-size": (["--model-parallel-size", "2"], lambda a, n: "--model-parallel-size 2: see --model-parallel" in n),
}


# The flags the parser rejected before issue #13.
ONCE_REJECTED = [
    "--base-path", "--n-gpu", "--mid-log-num", "--student-gen", "--gradient-checkpointing", "--gen-num-beams", "--gen-top-p", "--seed-order",
    "--model-parallel", "--model-parallel-size", "--peft-name", "--peft-path", "--teacher-peft-name", "--stage", "--temperature-kld",
]


def test_every_reference_flag_has_a_documented_effect():
    assert set(ONCE_REJECTED) <= set(ALL_FLAGS)
    assert sorted(EFFECTS) == ALL_FLAGS
    parser = arguments.build_parser()
    for flag in ALL_FLAGS:
        action = parser._option_string_actions[flag]
        assert action.help and len(action.help) > 20, flag


@pytest.mark.parametrize("flag", ALL_FLAGS)
def test_reference_flag_is_accepted_with_its_effect(paths, flag):
    extra, effect = EFFECTS[flag]
    extra = [str(paths["adapter"]) if token == "ADAPTER" else token for token in extra]
    args = _parse(paths, *extra)
    assert effect(args, _notes(args)), f"{flag} {extra}"


def test_flags_without_a_use_here_are_silent_when_absent(paths):
    assert _notes(_parse(paths)) == ""


def test_student_gen_is_a_noop_for_dataset_types_and_off_switch_for_sampling_types(paths):
    args = _parse(paths, "--type", "ab", "--ab_alpha", "0.2", "--ab_beta", "0.7", "--student-gen")  # ABKD's ab launchers
    assert lookup(args.type).source_kind(args.student_gen) == "dataset"
    assert "--student-gen: --type ab trains on the dataset" in _notes(args)
    args = _parse(paths, "--type", "distillm", "--no-student-gen")  # the reference without --student-gen
    assert lookup(args.type).source_kind(args.student_gen) == "dataset"


@pytest.mark.parametrize("name, divergence", [("tfkl", "fkl"), ("trkl", "rkl"), ("tjsd", "jsd"), ("ttvd", "tvd"), ("tsfkl", "sfkl"), ("tsrkl", "srkl")])
def test_pocl_types_map_to_the_tempered_divergence(paths, name, divergence):
    args = _parse(paths, "--type", name, "--temperature-kld", "1.67", "--kd-ratio", "0.9")
    line = lookup(args.type).describe(args)
    assert f"--type {name}: POCL tempered" in line and f"0.9 * {divergence}(" not in line
    assert f"kd_ratio * {divergence}(" in line and "kd_ratio 0.9, KD temperature 1.67" in line and f"reproduces POCL --type {name}" in line
    ranking = paths["root"] / "ranking.jsonl"
    ranking.write_text("")
    args = _parse(paths, "--type", name, "--curriculum", "pocl", "--ranking", ranking, "--num-stages", "3")
    assert "(0.7 -> 1 over 3 POCL stages), KD temperature 1 -> 2" in lookup(args.type).describe(args)


def test_peft_path_loads_the_saved_adapter_trainable(paths):
    args = _parse(paths, "--peft", "lora", "--peft-path", paths["adapter"])
    student = finetune.load_student(args, torch.device("cpu"))
    saved = load_file(paths["adapter"] / "adapter_model.safetensors")
    loaded = {name: p for name, p in student.named_parameters() if "lora_" in name}
    assert len(loaded) == len(saved) and all(p.requires_grad for p in loaded.values())
    assert not any(p.requires_grad for name, p in student.named_parameters() if "lora_" not in name)
    for name, tensor in saved.items():
        match = [p for key, p in loaded.items() if key.replace(".default", "") == name]
        assert len(match) == 1, name
        torch.testing.assert_close(match[0].detach(), tensor)


def test_peft_flags_need_their_partners(paths, capsys):
    for extra, message in (
        (["--peft-path", paths["adapter"]], "--peft-path loads a LoRA adapter of the student: add --peft lora"),
        (["--peft", "lora", "--peft-path", paths["root"]], "no LoRA adapter here (missing adapter_config.json)"),
        (["--peft-name", "714"], "--peft-name names the --peft-path adapter: give --peft-path"),
        (["--teacher-peft-name", "sft"], "--teacher-peft-name names the --teacher-peft-path adapter"),
        (["--save-interval", "-2"], "--save-interval must be a step count, 0, or -1"),
        (["--gen-top-p", "0"], "--gen-top-p must lie in (0, 1]"),
    ):
        with pytest.raises(SystemExit):
            _parse(paths, *extra)
        assert message in capsys.readouterr().err


# Whole command lines of reference launchers (values as written there; paths, sizes made tiny).
LAUNCHERS = {
    "DistiLLM scripts/gpt2/distillm/train_0.1B_1.5B.sh": (
        "--base-path BASE --ckpt-name gpt2-base --teacher-ckpt-name gpt2-xlarge --teacher-model-fp16 --n-gpu 16 --lm-data-dir LM "
        "--num-workers 4 --dev-num 1000 --lr 0.0005 --batch-size 8 --eval-batch-size 64 --gradient-accumulation-steps 1 --warmup-iters 0 "
        "--lr-decay-style cosine --weight-decay 1e-2 --clip-grad 1.0 --epochs 20 --kd-ratio 1.0 --do-train --do-valid --eval-gen "
        "--save-interval -1 --eval-interval -1 --log-interval 4 --mid-log-num -1 --seed 10 --deepspeed --type adaptive-sfkl --do-sample "
        "--top-k 0 --top-p 1.0 --temperature 1.0 --student-gen --gen-num-beams 1 --gen-top-p 1.0 --init-threshold 0.0 --loss-eps 0.1 --capacity 1000",
        "adaptive",
    ),
    "ABKD distillation_llm/scripts/gpt2/ab/train_0.1B_1.5B.sh": (
        "--base-path BASE --ckpt-name gpt2-base --teacher-ckpt-name gpt2-xlarge --teacher-model-fp16 --n-gpu 4 --lm-data-dir LM "
        "--num-workers 4 --dev-num 1000 --lr 0.0005 --batch-size 8 --eval-batch-size 64 --gradient-accumulation-steps 1 --warmup-iters 0 "
        "--lr-decay-style cosine --weight-decay 1e-2 --clip-grad 1.0 --epochs 20 --kd-ratio 1.0 --do-train --do-valid --eval-gen "
        "--save-interval -1 --eval-interval -1 --log-interval 4 --mid-log-num -1 --seed 10 --deepspeed --type ab --do-sample --top-k 0 "
        "--top-p 1.0 --temperature 1.0 --student-gen --gen-num-beams 1 --gen-top-p 1.0 --init-threshold 0.0 --loss-eps 0.1 --capacity 1000 "
        "--ab_alpha 0.2 --ab_beta 0.7",
        "dataset",
    ),
    "POCL scripts/gpt2/pocl/train_0.1B_1.5B/t1.sh": (
        "--base-path BASE --ckpt-name base_pocl_fkl/t0/352 --teacher-ckpt-name xlarge-sft --teacher-model-fp16 --n-gpu 4 --num-workers 4 "
        "--dev-num 500 --lr 0.0001 --batch-size 16 --eval-batch-size 64 --gradient-accumulation-steps 1 --warmup-iters 0 --lr-decay-style cosine "
        "--weight-decay 1e-2 --clip-grad 1.0 --epochs 8 --kd-ratio 0.8 --stage 1 --num-stages 3 --do-train --do-valid --eval-gen "
        "--save-interval -1 --eval-interval -1 --log-interval 4 --mid-log-num -1 --seed 10 --deepspeed --type tfkl --do-sample --top-k 0 "
        "--top-p 1.0 --temperature 1.0 --gen-num-beams 1 --gen-top-p 1.0 --init-threshold 0.0 --loss-eps 0.1 --capacity 1000 "
        "--skew-alpha 0.1 --mixed-alpha 0.8 --temperature-kld 1.33",
        "dataset",
    ),
}


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_reference_launcher_command_lines_parse(paths, launcher):
    line, source = LAUNCHERS[launcher]
    args = _parse(paths, *line.replace("BASE", str(paths["root"])).replace("LM", str(paths["root"] / "lm")).split())
    assert lookup(args.type).source_kind(args.student_gen) == source
    assert args.save_interval == -1 and args.eval_interval == -1 and args.num_workers == 4
    notes = _notes(args)
    assert "--base-path" in notes and "--n-gpu" in notes and "--mid-log-num -1" in notes


def test_save_interval_minus_one_saves_at_every_epoch_end(paths):
    save = paths["root"] / "per-epoch"
    finetune.main([str(x) for x in (
        "--model-path", paths["student"], "--data-dir", paths["data"], "--save", save, "--type", "sft", "--epochs", "2",
        "--max-length", "64", "--max-prompt-length", "48", "--batch-size", "4", "--do-train", "--save-interval", "-1", "--eval-interval", "-1",
    )])
    log = (save / "log.txt").read_text()
    per_epoch = int(log.split(" per epoch")[0].rsplit("(", 1)[1])
    assert per_epoch > 1
    saved = sorted(int(path.name) for path in save.iterdir() if path.name.isdigit())
    assert saved == [per_epoch, 2 * per_epoch]
