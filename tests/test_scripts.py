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
# The finetune launchers: scripts/<family>/<--type>/*.sh (tools/ and eval/ run other modules).
LAUNCHERS = [path for path in ALL_SCRIPTS if path.parent.name in ("sft", "init", "kd", "ab") and path != SWEEP]
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


def dry_commands(script: Path, base: Path, *args: str, env: dict | None = None) -> list[list[str]]:
    """The finetune argument lists a launcher prints under DRY_RUN=1, one per command."""
    result = run_script(script, base, *args, env=env)
    assert result.returncode == 0, f"{name(script)} failed:\n{result.stderr}"
    commands = []
    for line in result.stdout.splitlines():
        words = shlex.split(line)
        assert words[:3] == ["python", "-m", "distillation_llm.finetune"], f"{name(script)} printed {line!r}"
        commands.append(words[3:])
    return commands


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
    try:
        return validate(args, parser)
    except SystemExit:
        pytest.fail(f"finetune rejects {shlex.join(argv)} (its message is in the captured stderr)")


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory) -> tuple[Path, dict]:
    """Every launcher's validated arguments, all dry-run against one BASE_PATH (how the runs chain)."""
    base = tmp_path_factory.mktemp("base").resolve()
    runs = {}
    for script in LAUNCHERS:
        (argv,) = dry_commands(script, base)
        runs[script] = finetune_args(argv, base)
    return base, runs


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
    commands = dry_commands(script, base)
    assert len(commands) == 1
    assert list(base.iterdir()) == [], "DRY_RUN must not create anything"
    args = finetune_args(commands[0], base)

    family, method = script.relative_to(SCRIPTS).parts[:2]
    assert args.type == method
    assert args.model_type == family
    assert Path(args.data_dir) == base / "processed_data" / "dolly" / "full" / family
    assert Path(args.save).is_relative_to(base / "results" / family / "train" / method)
    assert args.do_train and args.do_valid
    assert args.epochs and args.total_iters is None
    assert Path(args.deepspeed_config).is_file() and Path(args.deepspeed_config).is_relative_to(REPO / "configs" / "deepspeed")
    if method in ("sft", "init"):
        assert args.teacher_model_path is None
        assert Path(args.model_path).parent == base / "checkpoints"
    else:
        assert args.teacher_model_path is not None
        assert args.teacher_model_fp16 == (family == "opt")
    if method == "ab":
        assert args.ab_alpha is not None and args.ab_beta is not None
        assert args.kd_ratio == 1.0
        assert Path(args.save).name == f"a{args.ab_alpha:g}_b{args.ab_beta:g}"
    else:
        assert args.ab_alpha is None and args.ab_beta is None
    if method == "kd":
        assert args.kd_ratio == 0.5


# KD/AB launcher -> (teacher SFT launcher, student init launcher) whose <save>/best it must read.
CHAIN = {
    **{f"gpt2/{kd}": ("gpt2/sft/sft_xlarge.sh", f"gpt2/init/init_{size}.sh")
       for size, params in (("base", "0.1B"), ("medium", "0.3B"), ("large", "0.7B"))
       for kd in (f"kd/kd_{size}.sh", f"ab/train_{params}_1.5B.sh")},
    **{f"opt/{kd}": ("opt/sft/sft_2.7B.sh", f"opt/init/init_{params}.sh")
       for params in ("0.1B", "0.3B", "1.3B")
       for kd in (f"kd/kd_{params}.sh", f"ab/train_{params}_2.7B.sh")},
}  # fmt: skip


def test_runs_chain_teacher_sft_and_student_init_into_kd(dry_runs):
    """Each KD/AB run starts from its student's init run and distils the family teacher's SFT run (both <save>/best)."""
    _, runs = dry_runs
    saved_by = {Path(args.save): name(script) for script, args in runs.items()}
    assert len(runs) == 23  # GPT-2: 4 sft, 3 init, 3 kd, 3 ab; OPT: 1 sft, 3 init, 3 kd, 3 ab
    assert len(saved_by) == len(runs), "two launchers write to the same --save"
    assert sorted(CHAIN) == sorted(name(script) for script in runs if script.parent.name in ("kd", "ab"))
    for script, (teacher_run, student_run) in CHAIN.items():
        args = runs[SCRIPTS / script]
        assert Path(args.teacher_model_path) == Path(runs[SCRIPTS / teacher_run].save) / "best", script
        assert Path(args.model_path) == Path(runs[SCRIPTS / student_run].save) / "best", script


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


def test_billion_parameter_models_train_with_zero2(dry_runs):
    """The 1.3B+ models (gpt2-xlarge, OPT-1.3B, OPT-2.7B) partition gradients too; the small ones use ZeRO-1."""
    _, runs = dry_runs
    for script, args in runs.items():
        large = Path(args.model_path).parts[-2 if Path(args.model_path).name == "best" else -1] in ("gpt2-xlarge", "opt-1.3B", "opt-2.7B")
        assert Path(args.deepspeed_config).name == ("ds_config_zero2.json" if large else "ds_config.json"), name(script)


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
