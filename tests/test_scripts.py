"""The bash launchers under scripts/: house rules, the commands they print, and the settings they choose.

Every launcher (found by glob, so a new one is covered) is run with DRY_RUN=1, which makes it print its
`python -m MODULE ...` commands instead of running them; each command must parse with MODULE's real argparse
parser (finetune's also through its start-up validation, with the directories it names created under a
temporary BASE_PATH). A table then pins the key hyper-parameters of every experiment, so that a change of
a family's defaults shows up here. Nothing is trained.
"""

import fnmatch
import json
import os
import re
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

from distillation_llm.arguments import build_parser, validate

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
# Sourced by the launchers, not run: the shared launcher, the LLM command builder and each family's defaults.
LIBRARIES = sorted([SCRIPTS / "launch.sh", SCRIPTS / "llm.sh", *SCRIPTS.glob("*/defaults.sh")])
# Not launchers of a training module: the end-to-end demo (tests/test_demo.py) and the download helpers.
OTHER = [SCRIPTS / name for name in ("demo.sh", "fetch_pretrained_teachers.sh", "download_cifar100.sh")]
ALL_SCRIPTS = sorted(SCRIPTS.rglob("*.sh"))
LAUNCHERS = [path for path in ALL_SCRIPTS if path not in LIBRARIES and path not in OTHER]
LLM_METHODS = ("sft", "init", "kd", "ab", "seqkd", "imitkd", "gkd", "distillm")
FINETUNE = "distillation_llm.finetune"
GENERATE_SEQKD = "tools.generate_data_seqkd"
TRAINING = [path for path in LAUNCHERS if path.parent.name in LLM_METHODS and path.name != "sweep_ab.sh"]
SWEEP = SCRIPTS / "gpt2" / "ab" / "sweep_ab.sh"
SWEPT = SCRIPTS / "gpt2" / "ab" / "train_0.1B_1.5B.sh"
MODEL_TYPES = {"gpt2": "gpt2", "opt": "opt", "openllama2": "llama", "qwen": "qwen2"}
LORA_FAMILIES = ("openllama2", "qwen")
# Read by launch_module rather than by the launcher that declares them.
LAUNCH_VARIABLES = {"MASTER_PORT", "GPU_NUM", "NNODES", "NODE_RANK", "MASTER_ADDR", "HOSTFILE"}
# Inherited settings that would change what a script prints.
SCRIPT_ENV = {"DRY_RUN", "HOSTFILE", "NNODES", "NODE_RANK", "MASTER_ADDR", "AB_ALPHA", "AB_BETA", "DISTILL", "TEACHER_CKPT", "ADD_WEIGHT", "DIVERGENCES",
              "JSD_LAM", "SKEW_ALPHA", "TEACHER_CACHE", "CACHE_TOP_K", "NPROC", "PRECISION", "CUDA_VISIBLE_DEVICES"} | {
    f"{name}_{end}" for name in ("ALPHA", "BETA") for end in ("START", "END", "STEP")
}


def name(path: Path) -> str:
    return str(path.relative_to(SCRIPTS))


def default_args(script: Path, base: Path) -> tuple[str, ...]:
    """The arguments a launcher is dry-run with: its usage's required ones, BASE_PATH for the LLM launchers."""
    if script.parent.name == "cifar":
        if script.name == "train_ab.sh":
            return ("1.0", "1.1", "0.7", "0.9", "resnet56", "resnet20", "2", "0.5")
        if script.name == "train_ls.sh":
            return ("1.0", "1.0", "0.9", "1.0", "resnet32x4", "resnet8x4", "1")
        return ("resnet32x4", "resnet8x4", "1", *(("8", "0.2") if script.name == "train_wttm.sh" else ()))
    if script.parent.name == "clip":
        return ("dtd", str(base / "coop"), "1")
    if script.name.startswith("eval_main_"):
        return (str(base), str(base / "model"))
    return (str(base),)


def run_script(script: Path, *args, env: dict | None = None, dry_run: bool = True) -> subprocess.CompletedProcess:
    full_env = {key: value for key, value in os.environ.items() if key not in SCRIPT_ENV}
    if dry_run:
        full_env["DRY_RUN"] = "1"
    full_env.update(env or {})
    return subprocess.run(["bash", str(script), *map(str, args)], env=full_env, capture_output=True, text=True, timeout=60)


def printed_commands(script: Path, *args, env: dict | None = None) -> list[tuple[str, list[str]]]:
    """(module, arguments) of every `python -m` command a launcher prints under DRY_RUN=1, in order."""
    result = run_script(script, *args, env=env)
    assert result.returncode == 0, f"{name(script)} failed:\n{result.stderr}"
    commands = []
    for line in result.stdout.splitlines():
        words = shlex.split(line)
        assert words[:2] == ["python", "-m"] and len(words) > 2, f"{name(script)} printed {line!r}"
        commands.append((words[2], words[3:]))
    assert commands, f"{name(script)} printed no command"
    return commands


def finetune_commands(script: Path, *args, env: dict | None = None) -> list[list[str]]:
    commands = printed_commands(script, *args, env=env)
    assert {module for module, _ in commands} == {FINETUNE}, f"{name(script)} runs {commands}"
    return [argv for _, argv in commands]


def finetune_args(argv: list[str], base: Path):
    """Parse and validate `argv` as finetune does at start-up, creating the inputs it names under `base`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for path in (args.model_path, args.teacher_model_path, args.data_dir, args.teacher_peft_path):
        if path is not None:
            assert Path(path).resolve().is_relative_to(base), f"{path} lies outside BASE_PATH {base}"
    for path in (args.model_path, args.teacher_model_path):
        if path is not None:
            Path(path).mkdir(parents=True, exist_ok=True)
            (Path(path) / "config.json").write_text(json.dumps({"model_type": args.model_type}) + "\n")
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.data_dir) / "meta.json").write_text("{}\n")
    if args.teacher_peft_path is not None:
        Path(args.teacher_peft_path).mkdir(parents=True, exist_ok=True)
        (Path(args.teacher_peft_path) / "adapter_config.json").write_text('{"peft_type": "LORA"}\n')
    try:
        return validate(args, parser)
    except SystemExit:
        pytest.fail(f"finetune rejects {shlex.join(argv)} (its message is in the captured stderr)")


def parse(module: str, argv: list[str], base: Path):
    """`argv` through MODULE's own command-line parser (and finetune's validation)."""
    if module == FINETUNE:
        return finetune_args(argv, base)
    if module == "base_to_new_classification.summarize":
        assert len(argv) == 1 and not argv[0].startswith("-"), argv  # its one positional: the results directory
        return None
    if module == "standard_classification.train_student":
        from standard_classification.train_student import parse_args
    elif module == "standard_classification.train_teacher":
        from standard_classification.train_teacher import parse_args
    elif module == "base_to_new_classification.train":
        from base_to_new_classification.train import parse_args
    elif module == "base_to_new_classification.train_teacher":
        from base_to_new_classification.train_teacher import parse_args
    elif module == "distillation_llm.evaluate":
        from distillation_llm.evaluate import parse_args
    elif module == "distillation_llm.rank_difficulty":
        from distillation_llm.rank_difficulty import build_parser as curriculum_parser

        return curriculum_parser().parse_args(argv)
    elif module == "standard_classification.rank_difficulty":
        from standard_classification.rank_difficulty import parse_args
    elif module == "base_to_new_classification.rank_difficulty":
        from base_to_new_classification.rank_difficulty import parse_args
    elif module.startswith("tools."):
        import importlib

        return importlib.import_module(module).build_parser().parse_args(argv)
    else:
        pytest.fail(f"no parser known for {module}")
    try:
        return parse_args(argv)
    except SystemExit:
        pytest.fail(f"{module} rejects {shlex.join(argv)}")


def flag_value(argv: list[str], flag: str) -> str | None:
    """The value a command gives `flag` (the last one), "" for a bare switch, None when absent."""
    value = None
    for i, word in enumerate(argv):
        if word == flag:
            value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else ""
    return value


# ---------------------------------------------------------------------------------------------------
# Every script.
# ---------------------------------------------------------------------------------------------------


def sourced_text(script: Path) -> str:
    """The script and every file it sources (recursively), where its variables may be read."""
    text = script.read_text()
    for relative in re.findall(r'source "\$\(dirname "\$\{BASH_SOURCE\[0\]\}"\)/([^"]+)"', text):
        text += sourced_text((script.parent / relative).resolve())
    return text


@pytest.mark.parametrize("script", ALL_SCRIPTS, ids=name)
def test_house_rules(script):
    text = script.read_text()
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    assert text.startswith("#!/usr/bin/env bash\n")
    assert not re.search(r"CUDA_VISIBLE_DEVICES=['\"]?[0-9]", text) and "PYTHONPATH" not in text, "a device is chosen by the user, not hard-coded"
    if script in LIBRARIES:
        assert not script.stat().st_mode & stat.S_IXUSR, "a sourced file is not run on its own"
        return
    assert script.stat().st_mode & stat.S_IXUSR, "not executable"
    assert "set -euo pipefail" in text
    everything = sourced_text(script)
    for variable in re.findall(r"^([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE):
        assert re.search(r"\$\{?" + re.escape(variable) + r"\b", everything) or variable in LAUNCH_VARIABLES, f"{variable} is declared but never used"


def test_launchers_are_thin():
    """An experiment is its differences from the defaults; the shared logic lives in the sourced files."""
    for script in TRAINING:
        assert len(script.read_text().splitlines()) <= 25, name(script)
    assert sum(len(path.read_text().splitlines()) for path in ALL_SCRIPTS) < 1900  # 88 launchers and their shared files
    assert not list((REPO / "standard_classification").glob("*.sh")) and not list((REPO / "base_to_new_classification").rglob("*.sh"))


def test_one_grid_function():
    defining = [name(path) for path in ALL_SCRIPTS if re.search(r"^\s*grid\(\)", path.read_text(), flags=re.MULTILINE)]
    assert defining == ["launch.sh"]


@pytest.mark.parametrize("script", LAUNCHERS, ids=name)
def test_dry_run_prints_commands_their_parsers_accept(script, tmp_path):
    base = tmp_path.resolve()
    args = default_args(script, base)
    extra = ("--type", "ab") if script.parent.name == "pocl" else ()
    commands = printed_commands(script, *args, *extra)
    assert list(base.iterdir()) == [], "DRY_RUN must not create anything"
    for module, argv in commands:
        parse(module, argv, base)


# ---------------------------------------------------------------------------------------------------
# Key settings of every LLM experiment. Launchers with a reference script (every GPT-2 one, OPT's except ab and
# pocl 0.1B) are checked value by value in tests/test_reference_llm_launchers.py; the others
# against KEY_SETTINGS: pattern -> (--type, --lr, --batch-size, --gradient-accumulation-steps, --epochs,
# --kd-ratio), the first matching row applies.
# ---------------------------------------------------------------------------------------------------

REFERENCE = json.loads((REPO / "tests" / "data" / "reference_llm_launchers.json").read_text())["launchers"]
KEY_SETTINGS = [
    # OPT ab: DistiLLM's OPT kd settings, global batch 32 (4 processes x 8), here 1 process x 8 x accumulation 4
    *((f"opt/{m}/*_1.3B_2.7B.sh", (m, 5e-5, 8, 4, 10, 1.0)) for m in ("ab",)),
    *((f"opt/{m}/*", (m, 5e-5, 8, 4, 20, 1.0)) for m in ("ab",)),
    *((f"{f}/sft/*", ("sft", 1e-4, 4, 4, 10, None)) for f in LORA_FAMILIES),
    *((f"{f}/{m}/*", (m, 1e-4, 4, 4, 10, 1.0)) for f in LORA_FAMILIES for m in ("kd", "ab", "distillm")),
]  # fmt: skip


def key_settings(script: Path) -> tuple:
    for pattern, settings in KEY_SETTINGS:
        if fnmatch.fnmatch(name(script), pattern):
            return settings
    pytest.fail(f"{name(script)} has no row in KEY_SETTINGS")


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory) -> tuple[Path, dict, dict]:
    """Every training launcher's validated finetune arguments and, for seqkd, its parsed data-generation
    arguments, all dry-run against one BASE_PATH (how the runs chain)."""
    from tools.generate_data_seqkd import build_parser as seqkd_parser

    base = tmp_path_factory.mktemp("base").resolve()
    runs, generations = {}, {}
    for script in TRAINING:
        commands = printed_commands(script, base)
        if script.parent.name == "seqkd":
            assert [module for module, _ in commands] == [GENERATE_SEQKD, FINETUNE], name(script)
            generations[script] = seqkd_parser().parse_args(commands[0][1])
        else:
            assert [module for module, _ in commands] == [FINETUNE], name(script)
        runs[script] = finetune_args(commands[-1][1], base)
    return base, runs, generations


def test_every_gpt2_launcher_has_a_reference_row():
    gpt2 = {name(path) for path in [*TRAINING, *SCRIPTS.glob("gpt2/pocl/*.sh")] if path.parts[-3] == "gpt2"}
    assert gpt2 <= set(REFERENCE), sorted(gpt2 - set(REFERENCE))
    assert set(REFERENCE) <= {name(path) for path in LAUNCHERS}, "a row names no launcher"


def test_key_settings_of_every_experiment(dry_runs):
    _, runs, _ = dry_runs
    for script, args in runs.items():
        if name(script) in REFERENCE:
            continue
        kd_ratio = None if args.type in ("sft", "init", "seqkd") else args.kd_ratio
        assert (args.type, args.lr, args.batch_size, args.gradient_accumulation_steps, args.epochs, kd_ratio) == key_settings(script), name(script)


def test_method_and_family_settings(dry_runs):
    base, runs, generations = dry_runs
    for script, args in runs.items():
        family, method = script.relative_to(SCRIPTS).parts[:2]
        # DistiLLM's OPT seqkd trains --type kd (forward KL from the teacher) on the SeqKD data; ABKD's GPT-2 seqkd CE on it
        expected = {"distillm": (method, "adaptive-sfkl"), "seqkd": ("kd",) if family == "opt" else (method,)}.get(method, (method,))
        assert args.type in expected, name(script)
        assert args.model_type == MODEL_TYPES[family], name(script)
        assert Path(args.save).is_relative_to(base / "results" / family / "train" / method)
        assert args.do_train and args.do_valid and args.total_iters is None
        assert Path(args.deepspeed_config).is_file() and Path(args.deepspeed_config).is_relative_to(REPO / "configs" / "deepspeed")
        if method == "seqkd":
            made = generations[script]
            assert Path(args.data_dir) == Path(made.processed_data_dir) == base / "processed_data/dolly/seqkd" / Path(made.model_path).parent.name
            assert Path(made.data_dir) == base / "processed_data/dolly/full" / family and not made.overwrite
            assert args.max_prompt_length == made.max_prompt_length and args.max_prompt_length + made.max_new_tokens <= args.max_length
        else:
            assert Path(args.data_dir) == base / "processed_data/dolly/full" / family
        no_teacher = ("sft", "init") if family == "opt" else ("sft", "init", "seqkd")  # DistiLLM's OPT seqkd distils on the SeqKD data
        assert (args.teacher_model_path is None) == (method in no_teacher), name(script)
        if args.teacher_model_path is not None:
            assert args.teacher_model_fp16
        if family in LORA_FAMILIES:
            assert (args.peft, args.peft_lora_r, args.peft_lora_alpha, args.peft_lora_dropout) == ("lora", 16, 32, 0.1)
            assert (args.teacher_peft_path is None) == (args.teacher_model_path is None), "the 7B teachers are LoRA-tuned"
        else:
            assert args.peft == "none" and args.teacher_peft_path is None
        if method == "ab":
            assert (args.ab_alpha, args.ab_beta) == (0.2, 0.7) and Path(args.save).name == "a0.2_b0.7"
        else:
            assert args.ab_alpha is None and args.ab_beta is None
        if method == "gkd":
            assert (args.mixed_alpha, args.gkd_beta) == (0.5, 0.1)
        if method == "distillm":
            assert (args.skew_alpha, args.init_threshold, args.loss_eps, args.capacity, args.replay_ratio) == (0.1, 0.0, 0.1, 1000, "decreasing")
        assert args.eval_gen and args.eval_interval == -1, "best/ by dev ROUGE-L, validated once an epoch (as the references)"
        assert args.num_workers == 0 or method not in ("imitkd", "gkd", "distillm")


def test_lm_loss_data_is_checked_before_launching(tmp_path):
    """The LM term's OpenWebText blocks are not shipped: without them a launcher says how to make them and stops
    (a dry run still prints its command); with them it launches."""
    script, base, env = SCRIPTS / "gpt2/ab/train_0.1B_1.5B.sh", tmp_path / "base", fake_launchers(tmp_path)
    result = run_script(script, base, env=env, dry_run=False)
    assert result.returncode != 0 and not (tmp_path / "argv").exists()
    assert "python -m tools.process_data_pretrain" in result.stderr and "--max-length 512" in result.stderr
    lm_data = base / "processed_data/openwebtext/gpt2/512"
    lm_data.mkdir(parents=True)
    (lm_data / "meta.json").write_text("{}\n")
    result = run_script(script, base, env=env, dry_run=False)
    assert result.returncode == 0, result.stderr
    (finetune,) = finetune_commands(script, base)
    assert recorded_argv(tmp_path)[-len(finetune) :] == finetune


# DeepSpeed config per trained model (the student; a teacher is a frozen copy on every GPU).
ZERO_CONFIGS = {
    **dict.fromkeys(("gpt2-base", "gpt2-medium", "gpt2-large", "opt-0.1B", "opt-0.3B"), "ds_config.json"),
    **dict.fromkeys(("gpt2-xlarge", "opt-1.3B", "opt-2.7B", "openllama2-3B", "qwen2.5-0.5B", "qwen2.5-1.5B"), "ds_config_zero2.json"),
    **dict.fromkeys(("openllama2-7B", "qwen2.5-7B"), "ds_config_zero3.json"),
}


def test_zero_stage_follows_the_trained_model(dry_runs):
    _, runs, _ = dry_runs
    for script, args in runs.items():
        path = Path(args.model_path)
        model = path.parts[-2] if path.name == "best" else path.name
        assert Path(args.deepspeed_config).name == ZERO_CONFIGS[model], name(script)


TEACHER_SFT = {"gpt2": "gpt2/sft/sft_xlarge.sh", "opt": "opt/sft/sft_2.7B.sh", "qwen": "qwen/sft/sft_7B.sh", "openllama2": "openllama2/sft/sft_7B.sh"}


def test_runs_chain_teacher_sft_and_student_init_into_kd(dry_runs):
    """Each distillation run starts from its student's init run (LoRA: from the checkpoint its SFT baseline
    tunes) and distils the family teacher's SFT run (LoRA: the base model with that run's adapter)."""
    base, runs, generations = dry_runs
    # GPT-2: 4 sft, 3 init, 3 each of kd, ab, seqkd, imitkd, gkd, distillm; OPT: 1 sft, 3 init, 3 each of the
    # same six; OpenLLaMA: 2 sft, 1 each of kd, ab, distillm; Qwen: 3 sft, 2 each of kd, ab, distillm
    assert len(runs) == 25 + 22 + 5 + 9
    assert len({args.save for args in runs.values()}) == len(runs), "two launchers write to the same --save"
    for script, args in runs.items():
        family, method = script.relative_to(SCRIPTS).parts[:2]
        if method in ("sft", "init"):
            continue
        teacher_sft = runs[SCRIPTS / TEACHER_SFT[family]]
        if family in LORA_FAMILIES:
            assert teacher_sft.peft == "lora" and Path(teacher_sft.save).name.endswith("-lora")
            assert Path(args.teacher_model_path) == Path(teacher_sft.model_path), name(script)
            assert Path(args.teacher_peft_path) == Path(teacher_sft.save) / "best", name(script)
            baselines = [a for s, a in runs.items() if s.parent == SCRIPTS / family / "sft" and a.model_path == args.model_path]
            assert len(baselines) == 1, f"{name(script)}: its student has no SFT baseline"
        else:
            teacher = generations[script].model_path if method == "seqkd" else args.teacher_model_path
            assert Path(teacher) == Path(teacher_sft.save) / "best", name(script)
            if family == "opt" and method in ("kd", "seqkd"):  # DistiLLM's OPT kd/seqkd start from the pretrained student
                assert Path(args.model_path).parent == base / "checkpoints", name(script)
                continue
            inits = [Path(a.save) / "best" for s, a in runs.items() if s.parent == SCRIPTS / family / "init"]
            assert Path(args.model_path) in inits, f"{name(script)}: its student is no init run's <save>/best"


def test_seqkd_launchers_and_tool_of_a_family_make_one_dataset(dry_runs, tmp_path):
    """The generation settings are the dataset's fingerprint: the launchers of a family (and the standalone
    tool) must agree on them, or each would refuse the dataset the others made."""
    from tools.generate_data_seqkd import build_parser as seqkd_parser

    base, _, generations = dry_runs
    by_family: dict[str, list[dict]] = {}
    for script, made in generations.items():
        by_family.setdefault(script.relative_to(SCRIPTS).parts[0], []).append(vars(made))
    assert {family: len(settings) for family, settings in by_family.items()} == {"gpt2": 3, "opt": 3}
    for family, settings in by_family.items():
        assert all(made == settings[0] for made in settings), family
    ((module, argv),) = printed_commands(SCRIPTS / "gpt2/tools/generate_data_seqkd.sh", base)
    assert module == GENERATE_SEQKD and vars(seqkd_parser().parse_args(argv)) == by_family["gpt2"][0]


def test_process_pseudo_data_seqkd_remakes_the_dataset_with_other_decoding(dry_runs):
    from distillation_llm.generation import settings_from_args
    from tools.generate_data_seqkd import build_parser as seqkd_parser

    base, _, generations = dry_runs
    ((module, argv),) = printed_commands(SCRIPTS / "gpt2/tools/process_pseudo_data_seqkd.sh", base)
    remade, made = seqkd_parser().parse_args(argv), generations[SCRIPTS / "gpt2/seqkd/seqkd_base.sh"]
    assert module == GENERATE_SEQKD and remade.overwrite
    for setting in ("model_path", "data_dir", "processed_data_dir", "max_prompt_length"):
        assert getattr(remade, setting) == getattr(made, setting), setting
    assert settings_from_args(remade, remade.seed) != settings_from_args(made, made.seed)


# ---------------------------------------------------------------------------------------------------
# Sweeps and the shared grid.
# ---------------------------------------------------------------------------------------------------


def test_ab_alpha_beta_come_from_the_environment(tmp_path):
    base = tmp_path.resolve()
    (argv,) = finetune_commands(SWEPT, base, env={"AB_ALPHA": "0.35", "AB_BETA": "0.9"})
    args = finetune_args(argv, base)
    assert (args.ab_alpha, args.ab_beta) == (0.35, 0.9)
    assert Path(args.save) == base / "results/gpt2/train/ab/0.1B_1.5B/a0.35_b0.9"


@pytest.mark.parametrize(
    "args, env",
    [
        (("0.1", "0.2", "0.1", "0.5", "0.6", "0.1"), {}),
        ((), {"ALPHA_START": "0.1", "ALPHA_END": "0.2", "ALPHA_STEP": "0.1", "BETA_START": "0.5", "BETA_END": "0.6", "BETA_STEP": "0.1"}),
    ],
    ids=["positional", "environment"],
)
def test_sweep_runs_the_train_script_once_per_grid_point(tmp_path, args, env):
    base = tmp_path.resolve()
    commands = finetune_commands(SWEEP, base, "2012", "1", *args, env=env)
    parsed = [finetune_args(argv, base) for argv in commands]
    assert {(a.ab_alpha, a.ab_beta) for a in parsed} == {(0.1, 0.5), (0.1, 0.6), (0.2, 0.5), (0.2, 0.6)} and len(parsed) == 4
    for argv, a in zip(commands, parsed):
        single = finetune_commands(SWEPT, base, "2012", "1", env={"AB_ALPHA": f"{a.ab_alpha:g}", "AB_BETA": f"{a.ab_beta:g}"})
        assert single == [argv], "the sweep and a single run differ only in alpha, beta and the output directory"


def test_grid_includes_float_end_points(tmp_path):
    commands = finetune_commands(SWEEP, tmp_path, "2012", "1", "0.1", "0.3", "0.1", "0.7", "0.7", "0.05")
    assert [flag_value(argv, "--ab_alpha") for argv in commands] == ["0.1", "0.2", "0.3"]


@pytest.mark.parametrize(
    "grid", [("0.1", "0.5", "0"), ("0.5", "0.1", "0.1"), ("a", "0.5", "0.1"), ("0.1", "0.5", "-0.1")], ids=["zero-step", "reversed", "text", "negative-step"]
)
def test_sweeps_reject_a_bad_grid(tmp_path, grid):
    for script, args in (
        (SWEEP, (tmp_path, "2012", "1", *grid, "0.5", "0.6", "0.1")),
        (SCRIPTS / "clip/train_ab.sh", ("dtd", tmp_path, "1", grid[0], grid[1], "0.5", "0.6")),
        (SCRIPTS / "cifar/train_ab.sh", (grid[0], grid[1], "0.7", "0.9", "resnet56", "resnet20", "1", "0.9")),
    ):
        env = {"ALPHA_STEP": grid[2]} if script.parent.name == "clip" else {}
        if script.parent.name != "cifar" or grid[2] == "0.1":  # the CIFAR sweep's step is fixed
            result = run_script(script, *args, env=env)
            assert result.returncode != 0 and result.stdout == "" and "bad grid" in result.stderr, name(script)


def test_cifar_ab_sweeps_alpha_plus_beta_and_alpha():
    commands = printed_commands(SCRIPTS / "cifar/train_ab.sh", "1.0", "1.1", "0.7", "0.9", "resnet56", "resnet20", "2", "0.5")
    pairs = sorted((float(flag_value(argv, "--ab_alpha")), round(float(flag_value(argv, "--ab_beta")), 6)) for _, argv in commands)
    assert pairs == [(0.7, 0.3), (0.7, 0.4), (0.8, 0.2), (0.8, 0.3), (0.9, 0.1), (0.9, 0.2)]
    assert all(flag_value(argv, "--distill") == "ab" and flag_value(argv, "--kd-weight") == "0.5" for _, argv in commands)


# Key settings of the CIFAR and CLIP launchers, as printed (flag -> value) by their default dry runs.
# CIFAR rows: ABKD standard_classification/train_{kd,ls,ab}.sh (-r = --ce-weight, -b = --kd-weight, --kd_T)
# and mdistiller's CFG.DKD for train_dkd.sh (its per-pair NCKD weight is resolved by train_student and
# checked in tests/test_cifar_training.py). CLIP rows: ABKD base_to_new_classification/scripts/promptkd/
# base2new_train_{kd,dkd,ab}.sh with configs/trainers/PromptKD/vit_b16_c2_ep20_batch8_4+4ctx.yaml.
CLASSIFICATION_SETTINGS = {
    "cifar/train_kd.sh": {"--distill": "kd", "--kd_T": "4", "--ce-weight": "1", "--kd-weight": "2", "--path_t": "save/models/resnet32x4_vanilla/ckpt_epoch_240.pth"},
    "cifar/train_dkd.sh": {"--distill": "dkd", "--kd_T": "4", "--dkd_alpha": "1", "--dkd_warmup": "20", "--ce-weight": "1", "--kd-weight": "1"},
    "cifar/train_ls.sh": {"--distill": "abls", "--kd_T": "2", "--ce-weight": "0.1", "--kd-weight": "9"},
    "cifar/train_ab.sh": {"--distill": "ab", "--kd_T": "4", "--ce-weight": "1", "--kd-weight": "0.5"},
    # ABKD train_ttm.sh "bash train_ttm.sh 1.1 1.1 0.5 1.6 wrn_40_2 wrn_40_1 0 76 0.1": --ttm_l 0.1, -r 1 -b 76 -a 0
    "cifar/train_ttm.sh": {"--distill": "ttm", "--ttm_l": "0.1", "--ce-weight": "1", "--kd-weight": "76"},
    "cifar/train_wttm.sh": {"--distill": "wttm", "--ttm_l": "0.2", "--ce-weight": "1", "--kd-weight": "8"},
    # ABKD train_student.py defaults --dist_beta 1 --dist_gamma 1 --dist_tau 4, -r 1
    "cifar/train_dist.sh": {"--distill": "dist", "--dist_beta": "1", "--dist_gamma": "1", "--dist_tau": "4", "--ce-weight": "1", "--kd-weight": "1"},
    # RepDistiller run_cifar_distill.sh "--distill crd -a 0 -b 0.8" with its defaults (nce_k 16384, nce_t 0.07, nce_m 0.5, feat_dim 128)
    "cifar/train_crd.sh": {"--distill": "crd", "--nce_k": "16384", "--nce_t": "0.07", "--nce_m": "0.5", "--feat_dim": "128", "--mode": "exact",
                           "--ce-weight": "1", "--kd-weight": "0.8", "--add-weight": "0"},
    # ABKD train_student.py defaults --lambda_corr 2.0 --lambda_mutual 1.0 --alpha_it 1.50, -r 1
    "cifar/train_itrd.sh": {"--distill": "itrd", "--lambda_corr": "2", "--lambda_mutual": "1", "--alpha_it": "1.5", "--ce-weight": "1", "--kd-weight": "1"},
    "cifar/train_divergences.sh": {"--kd_T": "4", "--ce-weight": "1", "--kd-weight": "2", "--jsd-lam": "0.1", "--skew-alpha": "0.1"},
    "clip/train_kd.sh": {"--distill": "kd", "--kd-weight": "200.0", "--temperature": "1.0", "--epochs": "20", "--lr": "0.0001", "--batch-size": "8"},
    "clip/train_dkd.sh": {"--distill": "dkd", "--dkd-alpha": "1.0", "--dkd-warmup": "1", "--kd-weight": "100.0", "--lr": "0.0001"},
    "clip/train_ab.sh": {"--distill": "ab", "--ab_alpha": "0.5", "--ab_beta": "0.5", "--kd-weight": "100.0", "--lr": "0.0001"},
    # ABKD base2new_train_ttm.sh: KD_WEIGHT=1000.0, LR=0.005, TEMPERATURE 1.0; train.py --ttm_l default 0.1
    "clip/train_ttm.sh": {"--distill": "ttm", "--ttm_l": "0.1", "--kd-weight": "1000.0", "--lr": "0.005", "--temperature": "1.0"},
    "clip/train_dist.sh": {"--distill": "dist", "--dist_tau": "1.0", "--dist_beta": "1.0", "--dist_gamma": "1.0", "--kd-weight": "1.0", "--lr": "0.0001"},
    "clip/train_divergences.sh": {"--kd-weight": "200.0", "--lr": "0.0001", "--temperature": "1.0"},
    # POCL (abkd/curriculum.py): train_kd.sh's KD in 4 stages, from a ranking by the run's initialised student.
    "cifar/train_pocl.sh": {"--distill": "kd", "--kd_T": "4", "--ce-weight": "1", "--kd-weight": "2", "--curriculum": "pocl", "--num-stages": "4"},
    "clip/train_pocl.sh": {"--distill": "kd", "--kd-weight": "200.0", "--temperature": "1.0", "--epochs": "20", "--curriculum": "pocl", "--num-stages": "4"},
}  # fmt: skip
RANKING_MODULES = ("standard_classification.rank_difficulty", "base_to_new_classification.rank_difficulty")


@pytest.mark.parametrize("script", sorted(SCRIPTS.glob("cifar/*.sh")) + sorted(SCRIPTS.glob("clip/*.sh")), ids=name)
def test_classification_launchers(script, tmp_path):
    if script in LIBRARIES:
        return
    assert name(script) in CLASSIFICATION_SETTINGS, f"{name(script)} has no row in CLASSIFICATION_SETTINGS"
    commands = printed_commands(script, *default_args(script, tmp_path))
    training = [argv for module, argv in commands if module != "base_to_new_classification.summarize" and module not in RANKING_MODULES]
    for argv in training:
        for flag, value in CLASSIFICATION_SETTINGS[name(script)].items():
            assert flag_value(argv, flag) == value, (flag, argv)
    if script.name == "train_pocl.sh":  # each run is preceded by its ranking: its seed, teacher and end temperature
        for (rank_module, rank_argv), (train_module, train_argv) in zip(commands[0::2], commands[1::2]):
            assert rank_module in RANKING_MODULES and train_module not in RANKING_MODULES
            ranked, run = parse(rank_module, rank_argv, tmp_path), parse(train_module, train_argv, tmp_path)
            assert (ranked.ranking, ranked.seed, ranked.teacher_ckpt) == (run.ranking, run.seed, run.teacher_ckpt)
            assert ranked.kd_temperature == run.kd_temperature_end
    if script.parent.name == "clip":  # seeds 1-3 per setting, each in its own directory, then the summary
        assert commands[-1][0] == "base_to_new_classification.summarize"
        seeds = sorted(flag_value(argv, "--seed") for argv in training)
        assert seeds == sorted(["1", "2", "3"] * (len(training) // 3)) and len(training) % 3 == 0
        assert len({flag_value(argv, "--save") for argv in training}) == len(training) and all("--resume" in argv for argv in training)


def test_cifar_ls_runs_abkd_alpha_beta_sweep_or_plain_ls():
    """ABKD's train_ls.sh sweeps (alpha, beta) of D_AB between z-scored logits (its distiller_zoo/ls.py: our abls);
    DISTILL=ls is the plain LS of Sun et al. (KL), one run with the same weights and temperature."""
    script = SCRIPTS / "cifar/train_ls.sh"
    commands = printed_commands(script, "1.0", "1.0", "0.8", "1.0", "resnet32x4", "resnet8x4", "2")
    assert [(flag_value(argv, "--distill"), flag_value(argv, "--ab_alpha"), flag_value(argv, "--ab_beta")) for _, argv in commands] == [
        ("abls", "0.8", "0.2"), ("abls", "0.9", "0.1"), ("abls", "1", "0")]
    ((_, argv),) = printed_commands(script, "resnet32x4", "resnet8x4", "2", "4", env={"DISTILL": "ls"})
    assert flag_value(argv, "--distill") == "ls" and flag_value(argv, "--ab_alpha") is None and flag_value(argv, "--kd-weight") == "4"
    assert flag_value(argv, "--kd_T") == "2" and flag_value(argv, "--ce-weight") == "0.1"
    for args, env in (((("resnet32x4", "resnet8x4", "2")), {}), (("1.0", "1.0", "0.8", "1.0", "resnet32x4", "resnet8x4", "2"), {"DISTILL": "ls"})):
        result = run_script(script, *args, env=env)
        assert result.returncode == 2 and "usage:" in result.stderr and result.stdout == ""


@pytest.mark.parametrize("script", ["cifar/train_kd.sh", "clip/train_kd.sh"])
def test_classification_launchers_train_in_fp32_unless_bf16_is_asked_for(script, tmp_path):
    """fp32 as RepDistiller, ABKD and ABKD's PromptKD config (PREC fp32); PRECISION=bf16 is the autocast opt-in."""
    args = default_args(SCRIPTS / script, tmp_path)
    for env, precision in (({}, "fp32"), ({"PRECISION": "bf16"}, "bf16")):
        commands = printed_commands(SCRIPTS / script, *args, env=env)
        training = [argv for module, argv in commands if module in ("standard_classification.train_student", "base_to_new_classification.train")]
        assert training and all(parse(module, argv, tmp_path).precision == precision for module, argv in commands if argv in training)


def test_clip_launchers_default_to_the_published_teacher(tmp_path):
    """PromptKD (and ABKD) read the PromptSRC teacher from teacher_model/<Dassl dataset name>/VLPromptLearner/
    model-best.pth.tar (trainers/promptkd.py): the launchers default to that file, stop in one line naming it
    when it is missing, and run another teacher (ours from train_teacher) given as TEACHER_CKPT."""
    script = SCRIPTS / "clip/train_kd.sh"
    published = REPO / "teacher_model/DescribableTextures/VLPromptLearner/model-best.pth.tar"
    commands = printed_commands(script, "dtd", tmp_path, "1")
    assert {flag_value(argv, "--teacher-ckpt") for module, argv in commands if module == "base_to_new_classification.train"} == {str(published)}
    env = fake_launchers(tmp_path)
    (tmp_path / "bin/python").write_text("#!/usr/bin/env bash\n")  # the summary step
    (tmp_path / "bin/python").chmod(0o755)
    if not published.exists():
        result = run_script(script, "dtd", tmp_path, "1", env=env, dry_run=False)
        assert result.returncode == 1 and not (tmp_path / "argv").exists()
        assert result.stderr.splitlines() == [f"train_kd.sh: no teacher at {published}: put PromptKD's published PromptSRC teacher for dtd there, "
                                              "or set TEACHER_CKPT"]
    own = tmp_path / "teacher_prompts.pt"
    own.write_bytes(b"")
    result = run_script(script, "dtd", tmp_path, "1", env=env | {"TEACHER_CKPT": str(own)}, dry_run=False)
    assert result.returncode == 0, result.stderr
    assert flag_value(recorded_argv(tmp_path), "--teacher-ckpt") == str(own)


# ---------------------------------------------------------------------------------------------------
# The real launch (torchrun or the deepspeed launcher), with fakes on PATH.
# ---------------------------------------------------------------------------------------------------


def fake_launchers(tmp_path: Path) -> dict:
    """`torchrun` and `deepspeed` on PATH that record their argument vectors (and CUDA_VISIBLE_DEVICES) instead of
    starting anything."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("torchrun", "deepspeed"):
        fake = bin_dir / tool
        fake.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" {tool} "$@" > "{tmp_path}/argv"\necho "${{CUDA_VISIBLE_DEVICES-}}" > "{tmp_path}/devices"\n')
        fake.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def recorded_argv(tmp_path: Path) -> list[str]:
    return (tmp_path / "argv").read_text().splitlines()


def test_launch_uses_torchrun_with_the_distributed_settings(tmp_path):
    script = SCRIPTS / "gpt2" / "sft" / "sft_base.sh"
    (finetune,) = finetune_commands(script, tmp_path / "base", "29600", "2", env={"NNODES": "2"})
    env = fake_launchers(tmp_path) | {"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.7"}
    result = run_script(script, tmp_path / "base", "29600", "2", env=env, dry_run=False)
    assert result.returncode == 0, result.stderr
    assert recorded_argv(tmp_path) == [
        "torchrun", "--nnodes", "2", "--node_rank", "1", "--nproc_per_node", "2", "--master_addr", "10.0.0.7",
        "--master_port", "29600", "-m", FINETUNE, *finetune,
    ]  # fmt: skip


def test_launch_uses_the_deepspeed_launcher_with_a_hostfile(tmp_path):
    script = SCRIPTS / "opt" / "kd" / "kd_1.3B.sh"
    (finetune,) = finetune_commands(script, tmp_path / "base", env={"NNODES": "2"})
    (tmp_path / "base/processed_data/openwebtext/opt/512").mkdir(parents=True)
    (tmp_path / "base/processed_data/openwebtext/opt/512/meta.json").write_text("{}\n")
    env = fake_launchers(tmp_path) | {"HOSTFILE": str(tmp_path / "hosts"), "NNODES": "2", "MASTER_ADDR": "node0"}
    result = run_script(script, tmp_path / "base", env=env, dry_run=False)
    assert result.returncode == 0, result.stderr
    assert recorded_argv(tmp_path) == [
        "deepspeed", "--hostfile", str(tmp_path / "hosts"), "--num_nodes", "2", "--num_gpus", "1", "--master_addr", "node0",
        "--master_port", "2012", "--module", FINETUNE, *finetune,
    ]  # fmt: skip


@pytest.mark.parametrize("gpu, env, nproc", [("2", {}, "1"), ("0,1", {}, "2"), ("3", {"NPROC": "2"}, "2")])
def test_cifar_launch_uses_its_gpu_argument_as_the_device(gpu, env, nproc, tmp_path):
    """GPU is ABKD's gpu_id (`CUDA_VISIBLE_DEVICES=$gpu_id`): the device(s) the run sees; one process per id
    unless NPROC says otherwise."""
    script = SCRIPTS / "cifar" / "train_kd.sh"
    ((module, argv),) = printed_commands(script, "resnet32x4", "resnet8x4", gpu)
    result = run_script(script, "resnet32x4", "resnet8x4", gpu, env=fake_launchers(tmp_path) | env, dry_run=False)
    assert result.returncode == 0, result.stderr
    assert recorded_argv(tmp_path) == ["torchrun", "--standalone", "--nproc_per_node", nproc, "-m", module, *argv]
    assert (tmp_path / "devices").read_text().strip() == gpu


def test_cifar_launch_refuses_a_gpu_that_is_not_a_device_id(tmp_path):
    result = run_script(SCRIPTS / "cifar" / "train_kd.sh", "resnet32x4", "resnet8x4", "gpu1", env=fake_launchers(tmp_path), dry_run=False)
    assert result.returncode == 2 and "GPU must be CUDA device ids" in result.stderr and not (tmp_path / "argv").exists()


# ---------------------------------------------------------------------------------------------------
# POCL.
# ---------------------------------------------------------------------------------------------------

POCL_SCRIPTS = sorted(SCRIPTS.glob("*/pocl/*.sh"))


@pytest.mark.parametrize("script", POCL_SCRIPTS, ids=name)
@pytest.mark.parametrize("divergence", ["tfkl", "tjsd", "fkl", "srkl", "ab", "jsd"])
def test_pocl_launcher_ranks_then_trains_the_curriculum(script, divergence, tmp_path):
    from distillation_llm.rank_difficulty import build_parser as rank_parser

    (rank_module, rank_argv), (train_module, train_argv) = printed_commands(script, tmp_path, "--type", divergence)
    assert (rank_module, rank_argv[0], train_module) == ("distillation_llm.rank_difficulty", "rank", FINETUNE)
    rank_args = rank_parser().parse_args(rank_argv)
    args = finetune_args(train_argv, tmp_path)
    assert args.type == divergence and args.curriculum == "pocl"
    # The run trains from the ranking that the ranking step writes, made by its own student.
    assert args.ranking == rank_args.ranking and args.model_path == rank_args.model_path and args.data_dir == rank_args.data_dir
    assert (args.num_stages, args.kd_temperature_start, args.kd_temperature_end, args.kd_ratio_start, args.kd_ratio_end) == (4, 1.0, 2.0, 0.7, 1.0)
    assert (args.ab_alpha is not None) == (divergence == "ab")
    assert (args.lr, args.batch_size, args.stage_epochs, args.lr_min) == (1e-4, 16, 8, 1e-7), "POCL's t0-t3 scripts"
    assert args.jsd_lam == (0.9 if divergence in ("jsd", "tjsd") else 0.1), "POCL's JSD mixes 0.9 of the student"
    assert args.stage_start == "last" and args.save_interval == -1
    # POCL ranks with the pretrained student (not the SFT init), sampling at temperature 0.01, 256 new tokens,
    # with its generation default of no repeated 6-gram (POCL arguments.py --no-repeat-ngram-size 6).
    assert Path(rank_args.model_path).parent.name == "checkpoints"
    temperature = 0.1 if script.parts[-3] == "opt" else 0.01  # POCL's OPT ranking samples at 0.1 (its generate_data_dolly.sh)
    assert (rank_args.do_sample, rank_args.temperature, rank_args.top_k, rank_args.top_p, rank_args.max_new_tokens) == (True, temperature, 0, 1.0, 256)
    assert rank_args.no_repeat_ngram_size == 6


@pytest.mark.parametrize(("script", "default"), [("gpt2/pocl/train_0.1B_1.5B.sh", "tfkl"), ("opt/pocl/train_0.3B_2.7B.sh", "tjsd")])
def test_a_pocl_launcher_without_type_runs_pocl_s_published_loss(script, default, tmp_path):
    """POCL's GPT-2 run is tfkl, its OPT run tjsd: both multiply the divergence by T^2."""
    from distillation_llm.methods import lookup

    (_, train_argv) = printed_commands(SCRIPTS / script, tmp_path)[-1]
    args = finetune_args(train_argv, tmp_path)
    assert args.type == default and lookup(args.type).temperature_squared


def test_only_pocl_launchers_take_a_type(tmp_path):
    result = run_script(POCL_SCRIPTS[0], tmp_path, "--type", "sft")
    assert result.returncode != 0 and "--type sft is not a POCL divergence" in result.stderr
    result = run_script(SCRIPTS / "gpt2/kd/kd_base.sh", tmp_path, "--type", "ab")
    assert result.returncode != 0 and "only the pocl launchers take --type" in result.stderr
