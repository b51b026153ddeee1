"""The bash launchers under scripts/: syntax, house rules, and the command each one really runs.

Every training launcher is run with DRY_RUN=1, which makes scripts/launch.sh print the command instead of
starting it; the printed arguments then go through the real `distillation_llm.finetune` parser and its
start-up validation, with the model and data directories the command names created under a temporary
BASE_PATH. Nothing is trained here.
"""

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
LAUNCH = SCRIPTS / "launch.sh"
SWEEP = SCRIPTS / "gpt2" / "ab" / "sweep_ab.sh"
SWEPT = SCRIPTS / "gpt2" / "ab" / "train_0.1B_1.5B.sh"
ALL_SCRIPTS = sorted(path for path in SCRIPTS.rglob("*.sh") if path != LAUNCH)
FINETUNE = "distillation_llm.finetune"
GENERATE_SEQKD = "tools.generate_data_seqkd"
# The finetune launchers: scripts/<family>/<--type>/*.sh (tools/ and eval/ run other modules).
METHODS = ("sft", "init", "kd", "ab", "seqkd", "imitkd", "gkd", "distillm")
LAUNCHERS = [path for path in ALL_SCRIPTS if path.parent.name in METHODS and path != SWEEP]
# Families whose students (and 7B teachers) train LoRA adapters; the directory name is not the model type.
MODEL_TYPES = {"gpt2": "gpt2", "opt": "opt", "openllama2": "llama", "qwen": "qwen2"}
LORA_FAMILIES = ("openllama2", "qwen")
# Read by launch_module rather than by the launcher that declares them.
LAUNCH_VARIABLES = {"MASTER_PORT", "GPU_NUM", "NNODES", "NODE_RANK", "MASTER_ADDR", "HOSTFILE"}
# Inherited settings that would change what a script prints.
SCRIPT_ENV = {"DRY_RUN", "HOSTFILE", "NNODES", "NODE_RANK", "MASTER_ADDR", "AB_ALPHA", "AB_BETA"} | {
    f"{name}_{end}" for name in ("ALPHA", "BETA") for end in ("START", "END", "STEP")
}


def name(path: Path) -> str:
    return str(path.relative_to(SCRIPTS))


def run_script(script: Path, *args: str, env: dict | None = None, dry_run: bool = True) -> subprocess.CompletedProcess:
    full_env = {key: value for key, value in os.environ.items() if key not in SCRIPT_ENV}
    if dry_run:
        full_env["DRY_RUN"] = "1"
    full_env.update(env or {})
    return subprocess.run(["bash", str(script), *map(str, args)], env=full_env, capture_output=True, text=True, timeout=60)


def printed_commands(script: Path, base: Path, *args: str, env: dict | None = None) -> list[tuple[str, list[str]]]:
    """(module, arguments) of every `python -m` command a launcher prints under DRY_RUN=1, in order."""
    result = run_script(script, base, *args, env=env)
    assert result.returncode == 0, f"{name(script)} failed:\n{result.stderr}"
    commands = []
    for line in result.stdout.splitlines():
        words = shlex.split(line)
        assert words[:2] == ["python", "-m"] and len(words) > 2, f"{name(script)} printed {line!r}"
        commands.append((words[2], words[3:]))
    return commands


def dry_commands(script: Path, base: Path, *args: str, env: dict | None = None) -> list[list[str]]:
    """The finetune argument lists a launcher prints under DRY_RUN=1, one per command."""
    commands = printed_commands(script, base, *args, env=env)
    assert [module for module, _ in commands] == [FINETUNE] * len(commands), f"{name(script)} runs {commands}"
    return [argv for _, argv in commands]


def launcher_commands(script: Path, base: Path, *args: str, env: dict | None = None) -> tuple[list[str] | None, list[str]]:
    """(SeqKD generation arguments or None, finetune arguments) of a training launcher: seqkd launchers
    make their dataset first, every other launcher runs finetune alone."""
    commands = printed_commands(script, base, *args, env=env)
    if script.parent.name == "seqkd":
        assert [module for module, _ in commands] == [GENERATE_SEQKD, FINETUNE], f"{name(script)} runs {commands}"
        return commands[0][1], commands[1][1]
    assert [module for module, _ in commands] == [FINETUNE], f"{name(script)} runs {commands}"
    return None, commands[0][1]


def seqkd_generation_args(argv: list[str]):
    from tools.generate_data_seqkd import build_parser as seqkd_parser

    return seqkd_parser().parse_args(argv)


def finetune_args(argv: list[str], base: Path):
    """Parse and validate `argv` as finetune does at start-up, creating the inputs it names under `base`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for path in (args.model_path, args.teacher_model_path, args.data_dir):
        if path is not None:
            assert Path(path).resolve().is_relative_to(base), f"{path} lies outside BASE_PATH {base}"
    for path in (args.model_path, args.teacher_model_path):
        if path is not None:
            Path(path).mkdir(parents=True, exist_ok=True)
            (Path(path) / "config.json").write_text('{"model_type": "%s"}\n' % args.model_type)
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.data_dir) / "meta.json").write_text("{}\n")
    if args.teacher_peft_path is not None:
        assert Path(args.teacher_peft_path).resolve().is_relative_to(base), f"{args.teacher_peft_path} lies outside BASE_PATH {base}"
        Path(args.teacher_peft_path).mkdir(parents=True, exist_ok=True)
        (Path(args.teacher_peft_path) / "adapter_config.json").write_text('{"peft_type": "LORA"}\n')
    try:
        return validate(args, parser)
    except SystemExit:
        pytest.fail(f"finetune rejects {shlex.join(argv)} (its message is in the captured stderr)")


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory) -> tuple[Path, dict, dict]:
    """Every launcher's validated finetune arguments and, for seqkd, its parsed data-generation arguments,
    all dry-run against one BASE_PATH (how the runs chain)."""
    base = tmp_path_factory.mktemp("base").resolve()
    runs = {}
    generations = {}
    for script in LAUNCHERS:
        generation, argv = launcher_commands(script, base)
        runs[script] = finetune_args(argv, base)
        if generation is not None:
            generations[script] = seqkd_generation_args(generation)
    return base, runs, generations


@pytest.mark.parametrize("script", ALL_SCRIPTS, ids=name)
def test_house_rules(script):
    text = script.read_text()
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    assert text.startswith("#!/usr/bin/env bash\n")
    assert script.stat().st_mode & stat.S_IXUSR, "not executable"
    assert "set -euo pipefail" in text
    assert "CUDA_VISIBLE_DEVICES" not in text
    assert "PYTHONPATH" not in text
    sources_launch = 'launch.sh"' in text
    for variable in re.findall(r"^([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE):
        used = re.search(r"\$\{?%s\b" % variable, text)
        assert used or (sources_launch and variable in LAUNCH_VARIABLES), f"{variable} is declared but never used"


@pytest.mark.parametrize("script", LAUNCHERS, ids=name)
def test_launcher_runs_a_valid_finetune_command(script, tmp_path):
    base = tmp_path.resolve()
    generation, argv = launcher_commands(script, base)
    assert list(base.iterdir()) == [], "DRY_RUN must not create anything"
    args = finetune_args(argv, base)

    family, method = script.relative_to(SCRIPTS).parts[:2]
    full_data = base / "processed_data" / "dolly" / "full" / family
    assert args.type == method
    assert args.model_type == MODEL_TYPES[family]
    assert Path(args.save).is_relative_to(base / "results" / family / "train" / method)
    assert args.do_train and args.do_valid
    assert args.epochs and args.total_iters is None
    assert Path(args.deepspeed_config).is_file() and Path(args.deepspeed_config).is_relative_to(REPO / "configs" / "deepspeed")
    if method == "seqkd":
        # It trains on exactly the dataset its first command makes from the family's data, with the prompts
        # cut as in training and whole teacher answers fitting into --max-length.
        made = seqkd_generation_args(generation)
        teacher = Path(made.model_path)
        assert Path(args.data_dir) == Path(made.processed_data_dir) == base / "processed_data" / "dolly" / "seqkd" / teacher.parent.name
        assert Path(made.data_dir) == full_data and teacher.is_relative_to(base / "results" / family / "train" / "sft")
        assert not made.overwrite, "the launcher must reuse a dataset made with its settings"
        assert made.max_prompt_length == args.max_prompt_length
        assert args.max_prompt_length + made.max_new_tokens <= args.max_length
    else:
        assert generation is None
        assert Path(args.data_dir) == full_data
    if method in ("sft", "init", "seqkd"):
        assert args.teacher_model_path is None
    else:
        assert args.teacher_model_path is not None
        assert args.teacher_model_fp16 == (family == "opt")
    if method in ("sft", "init"):
        assert Path(args.model_path).parent == base / "checkpoints"
    if family in LORA_FAMILIES:
        assert args.peft == "lora"
        assert (args.peft_lora_r, args.peft_lora_alpha, args.peft_lora_dropout) == (16, 32, 0.1)
        assert (args.teacher_peft_path is None) == (args.teacher_model_path is None), "the 7B teachers are LoRA-tuned"
    else:
        assert args.peft == "none" and args.teacher_peft_path is None
    if method == "ab":
        assert args.ab_alpha is not None and args.ab_beta is not None
        assert args.kd_ratio == 1.0
        assert Path(args.save).name == f"a{args.ab_alpha:g}_b{args.ab_beta:g}"
    else:
        assert args.ab_alpha is None and args.ab_beta is None
    if method == "kd":
        assert args.kd_ratio == 0.5
    if method in ("imitkd", "gkd", "distillm"):
        assert args.kd_ratio == 1.0 and args.num_workers == 0
        if family == "gpt2":  # DistiLLM's published GPT-2 recipe
            assert (args.lr, args.epochs) == (5e-4, 20)
        if family == "opt":  # the learning rate of the OPT KD/AB launchers
            assert args.lr == 5e-5
    if method == "gkd":
        assert (args.mixed_alpha, args.gkd_beta) == (0.5, 0.5)
    if method == "distillm":
        assert (args.skew_alpha, args.init_threshold, args.loss_eps, args.capacity, args.replay_ratio) == (0.1, 0.0, 0.1, 1000, "constant")
        assert args.eval_interval > 0, "the threshold adapts at validations: they must come within epochs"
    else:
        assert args.eval_interval == 0


@pytest.mark.parametrize("script", sorted(SCRIPTS.glob("*/distillm/*.sh")), ids=name)
def test_distillm_validates_about_ten_times_an_epoch_on_any_number_of_gpus(script, tmp_path):
    """The validations that move DistiLLM's threshold come about every tenth of Dolly's ~14k training examples."""
    base = tmp_path.resolve()
    for gpus, nodes in ((1, 1), (8, 1), (8, 2)):
        _, argv = launcher_commands(script, base, "2012", str(gpus), env={"NNODES": str(nodes)})
        args = finetune_args(argv, base)
        examples = args.eval_interval * args.batch_size * args.gradient_accumulation_steps * gpus * nodes
        assert 1200 <= examples <= 1600, f"{gpus} GPUs x {nodes} nodes: {examples} examples between validations"


GPT2_STUDENTS = (("base", "0.1B"), ("medium", "0.3B"), ("large", "0.7B"))
OPT_STUDENTS = ("0.1B", "0.3B", "1.3B")
STUDENT_GENERATED = ("seqkd", "imitkd", "gkd", "distillm")
# Distillation launcher -> (teacher SFT launcher, student init launcher) whose <save>/best it must read
# (for seqkd, the teacher is read by the data-generation step).
CHAIN = {
    **{f"gpt2/{kd}": ("gpt2/sft/sft_xlarge.sh", f"gpt2/init/init_{size}.sh")
       for size, params in GPT2_STUDENTS
       for kd in (f"kd/kd_{size}.sh", f"ab/train_{params}_1.5B.sh", *(f"{m}/{m}_{size}.sh" for m in STUDENT_GENERATED))},
    **{f"opt/{kd}": ("opt/sft/sft_2.7B.sh", f"opt/init/init_{params}.sh")
       for params in OPT_STUDENTS
       for kd in (f"kd/kd_{params}.sh", f"ab/train_{params}_2.7B.sh", *(f"{m}/{m}_{params}.sh" for m in STUDENT_GENERATED))},
}  # fmt: skip
# LoRA distillation launcher -> (teacher LoRA SFT launcher, student SFT launcher): the teacher is the base
# checkpoint of that SFT run with its adapter (<save>/best) merged in; the student starts from the
# pretrained checkpoint its SFT baseline tunes.
LORA_CHAIN = {
    **{f"openllama2/{m}/{m}_3B.sh": ("openllama2/sft/sft_7B.sh", "openllama2/sft/sft_3B.sh") for m in ("kd", "ab", "distillm")},
    **{f"qwen/{m}/{m}_{size}.sh": ("qwen/sft/sft_7B.sh", f"qwen/sft/sft_{size}.sh")
       for m in ("kd", "ab", "distillm") for size in ("0.5B", "1.5B")},
}  # fmt: skip


def test_runs_chain_teacher_sft_and_student_init_into_kd(dry_runs):
    """Each distillation run starts from its student's init run and distils the family teacher's SFT run (both <save>/best)."""
    _, runs, generations = dry_runs
    saved_by = {Path(args.save): name(script) for script, args in runs.items()}
    # GPT-2: 4 sft, 3 init, 3 each of kd, ab, seqkd, imitkd, gkd, distillm; OPT: 1 sft, 3 init, 3 each of the same six;
    # OpenLLaMA: 2 sft, 1 each of kd, ab, distillm; Qwen: 3 sft, 2 each of kd, ab, distillm
    assert len(runs) == 25 + 22 + 5 + 9
    assert len(saved_by) == len(runs), "two launchers write to the same --save"
    assert sorted([*CHAIN, *LORA_CHAIN]) == sorted(name(script) for script in runs if script.parent.name not in ("sft", "init"))
    for script, (teacher_run, student_run) in CHAIN.items():
        args = runs[SCRIPTS / script]
        teacher = generations[SCRIPTS / script].model_path if args.type == "seqkd" else args.teacher_model_path
        assert Path(teacher) == Path(runs[SCRIPTS / teacher_run].save) / "best", script
        assert Path(args.model_path) == Path(runs[SCRIPTS / student_run].save) / "best", script
    for script, (teacher_run, student_run) in LORA_CHAIN.items():
        args, teacher_sft = runs[SCRIPTS / script], runs[SCRIPTS / teacher_run]
        assert teacher_sft.peft == "lora" and Path(teacher_sft.save).name.endswith("-lora"), teacher_run
        assert Path(args.teacher_model_path) == Path(teacher_sft.model_path), script
        assert Path(args.teacher_peft_path) == Path(teacher_sft.save) / "best", script
        assert Path(args.model_path) == Path(runs[SCRIPTS / student_run].model_path), script


def test_seqkd_launchers_of_a_family_make_one_dataset(dry_runs):
    """The generation settings are part of the dataset's fingerprint, so the launchers of one family must
    agree on all of them: otherwise each would refuse the dataset the others made."""
    _, _, generations = dry_runs
    by_family: dict[str, list[dict]] = {}
    for script, made in generations.items():
        by_family.setdefault(script.relative_to(SCRIPTS).parts[0], []).append(vars(made))
    assert {family: len(settings) for family, settings in by_family.items()} == {"gpt2": 3, "opt": 3}
    for family, settings in by_family.items():
        assert all(made == settings[0] for made in settings), family


SEQKD_TOOLS = SCRIPTS / "gpt2" / "tools"


def test_generate_data_seqkd_is_the_seqkd_launchers_first_step(tmp_path):
    ((module, argv),) = printed_commands(SEQKD_TOOLS / "generate_data_seqkd.sh", tmp_path)
    generation, _ = launcher_commands(SCRIPTS / "gpt2" / "seqkd" / "seqkd_base.sh", tmp_path)
    assert module == GENERATE_SEQKD
    assert vars(seqkd_generation_args(argv)) == vars(seqkd_generation_args(generation))


def test_process_pseudo_data_seqkd_remakes_the_dataset_with_other_decoding(tmp_path):
    from distillation_llm.generation import settings_from_args

    ((module, argv),) = printed_commands(SEQKD_TOOLS / "process_pseudo_data_seqkd.sh", tmp_path)
    generation, _ = launcher_commands(SCRIPTS / "gpt2" / "seqkd" / "seqkd_base.sh", tmp_path)
    remade, made = seqkd_generation_args(argv), seqkd_generation_args(generation)
    assert module == GENERATE_SEQKD
    assert remade.overwrite, "it replaces the dataset the launchers made"
    for setting in ("model_path", "data_dir", "processed_data_dir", "max_prompt_length"):
        assert getattr(remade, setting) == getattr(made, setting), setting
    assert settings_from_args(remade, remade.seed) != settings_from_args(made, made.seed)


def test_ab_alpha_beta_come_from_the_environment(tmp_path):
    base = tmp_path.resolve()
    (argv,) = dry_commands(SWEPT, base, env={"AB_ALPHA": "0.35", "AB_BETA": "0.9"})
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
    commands = dry_commands(SWEEP, base, "2012", "1", *args, env=env)
    assert len(commands) == 4
    parsed = [finetune_args(argv, base) for argv in commands]
    assert {(a.ab_alpha, a.ab_beta) for a in parsed} == {(0.1, 0.5), (0.1, 0.6), (0.2, 0.5), (0.2, 0.6)}
    assert len({a.save for a in parsed}) == 4
    # The sweep and a single run share one command: only alpha, beta and the output directory differ.
    for argv, a in zip(commands, parsed):
        single = dry_commands(SWEPT, base, "2012", "1", env={"AB_ALPHA": f"{a.ab_alpha:g}", "AB_BETA": f"{a.ab_beta:g}"})
        assert single == [argv]


def test_sweep_grid_includes_float_end_points(tmp_path):
    commands = dry_commands(SWEEP, tmp_path, "2012", "1", "0.1", "0.3", "0.1", "0.7", "0.7", "0.05")
    alphas = [argv[argv.index("--ab_alpha") + 1] for argv in commands]
    assert alphas == ["0.1", "0.2", "0.3"]


@pytest.mark.parametrize(
    "grid", [("0.1", "0.5", "0"), ("0.5", "0.1", "0.1"), ("a", "0.5", "0.1"), ("0.1", "0.5", "-0.1")], ids=["zero-step", "reversed", "text", "negative-step"]
)
def test_sweep_rejects_a_bad_grid(tmp_path, grid):
    result = run_script(SWEEP, tmp_path, "2012", "1", *grid, "0.5", "0.6", "0.1")
    assert result.returncode != 0
    assert result.stdout == ""
    assert "bad grid" in result.stderr


def fake_launchers(tmp_path: Path) -> dict:
    """`torchrun` and `deepspeed` on PATH that record their argument vectors instead of starting anything."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("torchrun", "deepspeed"):
        fake = bin_dir / tool
        fake.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" {tool} "$@" > "{tmp_path}/argv"\n')
        fake.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def recorded_argv(tmp_path: Path) -> list[str]:
    return (tmp_path / "argv").read_text().splitlines()


def test_launch_uses_torchrun_with_the_distributed_settings(tmp_path):
    script = SCRIPTS / "gpt2" / "sft" / "sft_base.sh"
    (finetune,) = dry_commands(script, tmp_path / "base", "29600", "4")
    env = fake_launchers(tmp_path) | {"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.7"}
    result = run_script(script, tmp_path / "base", "29600", "4", env=env, dry_run=False)
    assert result.returncode == 0, result.stderr
    assert recorded_argv(tmp_path) == [
        "torchrun", "--nnodes", "2", "--node_rank", "1", "--nproc_per_node", "4", "--master_addr", "10.0.0.7",
        "--master_port", "29600", "-m", "distillation_llm.finetune", *finetune,
    ]  # fmt: skip


def test_launch_uses_the_deepspeed_launcher_with_a_hostfile(tmp_path):
    script = SCRIPTS / "opt" / "kd" / "kd_1.3B.sh"
    (finetune,) = dry_commands(script, tmp_path / "base")
    env = fake_launchers(tmp_path) | {"HOSTFILE": str(tmp_path / "hosts"), "NNODES": "2", "MASTER_ADDR": "node0"}
    result = run_script(script, tmp_path / "base", env=env, dry_run=False)
    assert result.returncode == 0, result.stderr
    assert recorded_argv(tmp_path) == [
        "deepspeed", "--hostfile", str(tmp_path / "hosts"), "--num_nodes", "2", "--num_gpus", "1", "--master_addr", "node0",
        "--master_port", "2012", "--module", "distillation_llm.finetune", *finetune,
    ]  # fmt: skip


# DeepSpeed config per trained model (the student; a teacher is a frozen copy on every GPU).
ZERO_CONFIGS = {
    **dict.fromkeys(("gpt2-base", "gpt2-medium", "gpt2-large", "opt-0.1B", "opt-0.3B"), "ds_config.json"),
    **dict.fromkeys(("gpt2-xlarge", "opt-1.3B", "opt-2.7B", "openllama2-3B", "qwen2.5-0.5B", "qwen2.5-1.5B"), "ds_config_zero2.json"),
    **dict.fromkeys(("openllama2-7B", "qwen2.5-7B"), "ds_config_zero3.json"),
}


def test_zero_stage_follows_the_trained_model(dry_runs):
    """ZeRO-1 for the small GPT-2/OPT models; ZeRO-2 (gradients and optimizer states partitioned) for the
    1.3B+ ones and the OpenLLaMA/Qwen LoRA students; ZeRO-3 (parameters too) for the 7B LoRA SFT runs."""
    _, runs, _ = dry_runs
    for script, args in runs.items():
        path = Path(args.model_path)
        model = path.parts[-2] if path.name == "best" else path.name
        assert Path(args.deepspeed_config).name == ZERO_CONFIGS[model], name(script)


POCL_SCRIPTS = sorted(SCRIPTS.glob("*/pocl/*.sh"))


@pytest.mark.parametrize("script", POCL_SCRIPTS, ids=name)
@pytest.mark.parametrize("divergence", ["fkl", "srkl", "ab"])
def test_pocl_launcher_ranks_then_trains_the_curriculum(script, divergence, tmp_path):
    from distillation_llm.curriculum import build_parser as rank_parser

    result = run_script(script, tmp_path, "--type", divergence)
    assert result.returncode == 0, result.stderr
    rank_line, train_line = result.stdout.splitlines()
    rank_words, train_words = shlex.split(rank_line), shlex.split(train_line)
    assert rank_words[:4] == ["python", "-m", "distillation_llm.curriculum", "rank"]
    rank_args = rank_parser().parse_args(rank_words[3:])
    assert train_words[:3] == ["python", "-m", "distillation_llm.finetune"]
    args = finetune_args(train_words[3:], tmp_path)
    assert args.type == divergence and args.curriculum == "pocl"
    # The run trains from the ranking that the ranking step writes, made by its own student.
    assert args.ranking == rank_args.ranking and args.model_path == rank_args.model_path and args.data_dir == rank_args.data_dir
    assert (args.num_stages, args.kd_temperature_start, args.kd_temperature_end, args.kd_ratio_start, args.kd_ratio_end) == (4, 1.0, 2.0, 0.7, 1.0)
    assert (args.ab_alpha is not None) == (divergence == "ab")


def test_pocl_launcher_rejects_other_types(tmp_path):
    result = run_script(POCL_SCRIPTS[0], tmp_path, "--type", "sft")
    assert result.returncode != 0 and "--type sft is not a POCL divergence" in result.stderr
