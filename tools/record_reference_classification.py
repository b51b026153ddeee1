"""Record what ABKD's CIFAR and CLIP launch scripts resolve to, for the launchers of ours that mirror them.

    pip install yacs     # Dassl's configuration system, which the CLIP scripts go through (only this tool needs it)
    python -m tools.record_reference_classification --abkd /path/to/abkd [--commit SHA] \\
        [--out tests/data/reference_classification_launchers.json]

--abkd is a copy of github.com/ghwang-s/abkd (a git checkout or its files; --commit names the commit when it
is not a checkout). Run it by hand when the reference changes and commit the JSON; CI never runs it.
tests/test_reference_classification_launchers.py compares each of our launchers with the file.

How a script is resolved, without training anything:
1. bash runs the reference script (from its subproject directory, with the arguments of PAIRINGS) with
   `python3` replaced by a shell function that records the call's argument vector, the CUDA_VISIBLE_DEVICES
   it was given and the script line where the call starts (BASH_LINENO);
2. every option word and Dassl config key of a call is traced to the script line that writes it;
3. the argument vector goes through the reference's own parser:
   - CIFAR (standard_classification/train_student.py): its `parse_option()`, run as written (with
     `sys.argv` set and `os.makedirs` switched off), so its own post-processing (e.g. `--lr_decay_epochs`
     to a list, the teacher's name from `--path_t`) is in the result;
   - CLIP (base_to_new_classification/train.py): the argparse parser of its `__main__` block, then its
     `setup_cfg()` on Dassl's `get_cfg_default()` (Dassl.pytorch/dassl/config/defaults.py, with
     `extend_cfg`): the dataset and trainer YAML files the script names, `reset_cfg`, the script's
     KEY VALUE options and the loss flags, in that order. The resolved config is recorded (see below), and
     the teacher checkpoint PromptKD's trainer reads (trainers/promptkd.py builds its path from
     cfg.DATASET.NAME and cfg.TRAINER.MODAL: that expression is evaluated on the resolved config).
Only the reference's parsing code is executed (function definitions taken from its files by `ast`),
never its training code.

Per pairing, "values" holds what all its reference runs share and each run's "values" the rest (a
sweep's coordinates, the seed, the output directory). A value is recorded as [value, source], the
source being "<script>:<line>" where the script sets it (the line of the option word, or of the KEY of
a Dassl option); "config (<file>:<line>)" where a YAML file named by the script sets it; "default
(<file>:<line>)" where it is the parser's or the config's default (the `add_argument` call, or the
`_C.KEY = ...`/`cfg.KEY = ...` line); "<file>:<line>" where the parser's own code computes it, after
whatever gave its input (e.g. "default (...:37), then ...:112"). The settings of Dassl's other
trainers (TRAINER.<name> subtrees other than the run's) are left out, as Dassl's own `clean_cfg` does.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import types
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "tests" / "data" / "reference_classification_launchers.json"
CIFAR_DIR = "standard_classification"
CLIP_DIR = "base_to_new_classification"
SEEDS = ("1", "2", "3")  # our CLIP launchers run seeds 1-3 (PromptKD's and ABKD's); the reference script runs one per call


@dataclass(frozen=True)
class Pairing:
    """One of our launchers (run with `args` and `env`) and the reference script (run once per `invocations`
    entry) whose protocol it reproduces. `match_on`: the reference keys whose values pair each of our runs
    with one of the reference's (a sweep's coordinates, the seed); `note`: why this pairing."""

    launcher: str
    args: tuple[str, ...]
    script: str
    invocations: tuple[tuple[str, ...], ...]
    example: str
    match_on: tuple[str, ...] = ()
    env: dict = field(default_factory=dict)
    note: str = ""


def _seeds(*args: str, seed_at: int) -> tuple[tuple[str, ...], ...]:
    """The reference invocation once per seed, the seed inserted at position `seed_at`."""
    return tuple((*args[:seed_at], seed, *args[seed_at:]) for seed in SEEDS)


PAIRINGS = [
    Pairing("cifar/train_ab.sh", ("1.1", "1.1", "0.8", "0.8", "resnet56", "resnet20", "1", "64"), f"{CIFAR_DIR}/train_ab.sh",
            (("1.1", "1.1", "0.8", "0.8", "resnet56", "resnet20", "1", "64"),), f"{CIFAR_DIR}/train_ab.sh:14", ("ab_alpha", "ab_beta"),
            note="the script's own example"),
    Pairing("cifar/train_kd.sh", ("resnet110", "resnet44", "0"), f"{CIFAR_DIR}/train_kd.sh", ((),), f"{CIFAR_DIR}/train_kd.sh:4",
            note="the script takes no arguments: its teacher, student and device are ours"),
    Pairing("cifar/train_ls.sh", ("1.0", "1.0", "0.5", "1.3", "resnet32x4", "resnet8x4", "2"), f"{CIFAR_DIR}/train_ls.sh",
            (("1.0", "1.0", "0.5", "1.3", "resnet32x4", "resnet8x4", "2"),), f"{CIFAR_DIR}/train_ls.sh:15", ("ab_alpha", "ab_beta"),
            note="the script's own example"),
    Pairing("cifar/train_ls.sh", ("resnet32x4", "resnet8x4", "2"), f"{CIFAR_DIR}/train_ls.sh",
            (("1.0", "1.0", "1.0", "1.0", "resnet32x4", "resnet8x4", "2"),), f"{CIFAR_DIR}/train_ls.sh:15", env={"DISTILL": "ls"},
            note="plain LS is the script's grid point (alpha, beta) = (1, 0), where its distiller_zoo/ls.py computes the KL"),
    Pairing("cifar/train_dkd.sh", ("vgg13", "vgg8", "0", "6"), f"{CIFAR_DIR}/train_dkd.sh",
            (("1.0", "1.0", "0.5", "0.5", "vgg13", "vgg8", "0", "6"),), f"{CIFAR_DIR}/train_dkd.sh:14", ("ab_alpha", "ab_beta"),
            env={"DISTILL": "abdkd", "AB_ALPHA": "0.5", "AB_BETA": "0.5"}, note="the first grid point of the script's example"),
    Pairing("cifar/train_dkd.sh", ("vgg13", "vgg8", "0"), f"{CIFAR_DIR}/train_dkd.sh",
            (("1.0", "1.0", "1.0", "1.0", "vgg13", "vgg8", "0", "6"),), f"{CIFAR_DIR}/train_dkd.sh:14",
            note="DKD is the script's grid point (alpha, beta) = (1, 0), where its distiller_zoo/dkd.py computes NCKD as the KL"),
    Pairing("cifar/train_ttm.sh", ("wrn_40_2", "wrn_40_1", "0"), f"{CIFAR_DIR}/train_ttm.sh",
            (("1.0", "1.0", "1.0", "1.0", "wrn_40_2", "wrn_40_1", "0", "76", "0.1"),), f"{CIFAR_DIR}/train_ttm.sh:17",
            note="TTM is the script's grid point (alpha, beta) = (1, 0) (its line 14: 'ABTTM degenerates to TTM')"),
    Pairing("cifar/train_ttm.sh", ("wrn_40_2", "wrn_40_1", "0"), f"{CIFAR_DIR}/train_ttm.sh",
            (("1.1", "1.1", "0.5", "0.5", "wrn_40_2", "wrn_40_1", "0", "76", "0.1"),), f"{CIFAR_DIR}/train_ttm.sh:17", ("ab_alpha", "ab_beta"),
            env={"DISTILL": "abttm", "AB_ALPHA": "0.5", "AB_BETA": "0.6"}, note="the first grid point of the script's example"),
    Pairing("clip/train_kd.sh", ("dtd", "data/coop", "1"), f"{CLIP_DIR}/scripts/promptkd/base2new_train_kd.sh", _seeds("dtd", seed_at=1),
            f"{CLIP_DIR}/scripts/promptkd/base2new_train_kd.sh:15", ("SEED",), note="a dataset of its KD weight 200"),
    Pairing("clip/train_kd.sh", ("caltech101", "data/coop", "1"), f"{CLIP_DIR}/scripts/promptkd/base2new_train_kd.sh",
            _seeds("caltech101", seed_at=1), f"{CLIP_DIR}/scripts/promptkd/base2new_train_kd.sh:16", ("SEED",),
            note="a dataset its comment gives KD weight 1000"),
    Pairing("clip/train_dkd.sh", ("dtd", "data/coop", "1"), f"{CLIP_DIR}/scripts/promptkd/base2new_train_dkd.sh", _seeds("dtd", seed_at=1),
            f"{CLIP_DIR}/scripts/promptkd/base2new_train_dkd.sh:14", ("SEED", "dkd_beta")),
    Pairing("clip/train_ab.sh", ("dtd", "data/coop", "1", "0.5", "0.5", "0.5", "0.5", "100.0"), f"{CLIP_DIR}/scripts/promptkd/base2new_train_ab.sh",
            _seeds("dtd", "1.0", "1.0", "0.5", "0.5", "0", "100.0", seed_at=6), f"{CLIP_DIR}/scripts/promptkd/base2new_train_ab.sh:21",
            ("SEED", "ab_alpha", "ab_beta"), note="the first grid point of the script's example"),
    Pairing("clip/train_ttm.sh", ("dtd", "data/coop", "1"), f"{CLIP_DIR}/scripts/promptkd/base2new_train_ttm.sh", _seeds("dtd", seed_at=1),
            f"{CLIP_DIR}/scripts/promptkd/base2new_train_ttm.sh:14", ("SEED",)),
]  # fmt: skip

# Our launchers without a reference script, and why (the test checks that every launcher is in one of the two lists).
NO_REFERENCE = {
    "cifar/train_crd.sh": "RepDistiller's run_cifar_distill.sh line (CRD is not an ABKD script); its values are pinned in tests/test_scripts.py",
    "cifar/train_dist.sh": "ABKD has no DIST script (train_student.py defaults only)",
    "cifar/train_itrd.sh": "ABKD has no ITRD script (train_student.py defaults only)",
    "cifar/train_wttm.sh": "no reference script gives WTTM's per-pair values",
    "cifar/train_divergences.sh": "this framework's divergences in KD's place, with train_kd.sh's recipe",
    "cifar/train_pocl.sh": "POCL's curriculum for classification is this framework's extension",
    "clip/train_dist.sh": "ABKD's PromptKD trainer cannot run DIST (an undefined `Dist`)",
    "clip/train_divergences.sh": "this framework's divergences in KD's place, with base2new_train_kd.sh's weights",
    "clip/train_pocl.sh": "POCL's curriculum for classification is this framework's extension",
}

# Reference scripts without a launcher of ours (recorded so that a reader sees the gap).
UNPAIRED = {
    f"{CLIP_DIR}/scripts/promptkd/base2new_train_ls.sh": "logit standardisation for CLIP (OPTIM.LR 0.005, T 1-4): no launcher here yet",
}

# Dassl keys written by the script itself as options (`KEY VALUE` after the flags).
IMPORT_ARGPARSE = ast.parse("import argparse").body[0]
DASSL_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")
RECORDER = r"""
python3() { printf '%s\0' "${BASH_LINENO[0]}" "${CUDA_VISIBLE_DEVICES-}" "$#" "$@" >> "${RECORD_FILE}"; }
cd "$1" && shift
script=$1 && shift
source "${script}" "$@" > /dev/null
"""


# ---------------------------------------------------------------------------------------------------
# Running a reference script
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Value:
    """A resolved value, where it comes from, and (for a parser's argument) its option strings."""

    value: object
    source: str
    options: list[str] | None = None


@dataclass
class Call:
    line: int
    devices: str
    argv: list[str]
    word_lines: list[int | None]  # the script line of each argv word that is an option or a Dassl key


def run_script(root: Path, script: str, args: tuple[str, ...]) -> list[Call]:
    """The `python3` calls of `root/script` run with `args` from its subproject directory."""
    path = root / script
    workdir = root / script.split("/")[0]
    with tempfile.NamedTemporaryFile(suffix=".record") as record:
        subprocess.run(["bash", "-c", RECORDER, "bash", str(workdir), str(path), *args], env={**os.environ, "RECORD_FILE": record.name},
                       check=True, timeout=60)
        fields = Path(record.name).read_bytes().decode().split("\0")[:-1]
    lines = path.read_text().splitlines()
    calls = []
    while fields:
        line, devices, count = int(fields[0]), fields[1], int(fields[2])
        argv, fields = fields[3 : 3 + count], fields[3 + count :]
        calls.append(Call(line, devices, argv, word_lines(lines, line, argv)))
    return calls


def word_lines(lines: list[str], start: int, argv: list[str]) -> list[int | None]:
    """For each argv word that is an option or a Dassl key, the line (1-based) of the command starting at
    `start` (backslash continuations included) that holds it, in order of appearance."""
    span = [start]
    while lines[span[-1] - 1].rstrip().endswith("\\"):
        span.append(span[-1] + 1)
    used: dict[str, int] = {}
    found = []
    for word in argv:
        if not (word.startswith("-") and not _is_number(word)) and not DASSL_KEY.match(word):
            found.append(None)
            continue
        hits = [n for n in span for _ in re.finditer(rf"(?<!\S){re.escape(word)}(?!\S)", lines[n - 1])]
        index = used.get(word, 0)
        used[word] = index + 1
        found.append(hits[index] if index < len(hits) else None)
    return found


def _is_number(word: str) -> bool:
    try:
        float(word)
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------------
# The reference's parsing code, taken from its files
# ---------------------------------------------------------------------------------------------------


def _functions(path: Path, names: tuple[str, ...]) -> tuple[ast.Module, dict[str, ast.FunctionDef]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names}
    missing = set(names) - set(found)
    if missing:
        raise SystemExit(f"{path}: no function {', '.join(sorted(missing))}: has the reference changed?")
    return tree, found


def _exec(nodes: list[ast.stmt], path: Path, namespace: dict) -> dict:
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102 (the reference's parsing code)
    return namespace


def _argument_lines(nodes: list[ast.stmt]) -> dict[str, int]:
    """Line of each `parser.add_argument(...)` call, by its first option string."""
    lines = {}
    for node in nodes:
        for call in ast.walk(node):
            if isinstance(call, ast.Call) and getattr(call.func, "attr", None) == "add_argument" and call.args:
                first = call.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    lines[first.value] = call.lineno
    return lines


def _dest_sources(parser: argparse.ArgumentParser, argument_lines: dict[str, int], call: Call, script: str, parser_file: str) -> dict:
    """dest -> (options, source) for every action of `parser`."""
    given = {}
    for word, line in zip(call.argv, call.word_lines):
        if line is not None:
            given.setdefault(word, line)
    sources = {}
    for action in parser._actions:
        if action.dest == "help":
            continue
        options = list(action.option_strings)
        lines = [given[option] for option in options if option in given]
        if lines:
            source = f"{script}:{lines[-1]}"
        else:
            first = options[0] if options else action.dest
            source = f"default ({parser_file}:{argument_lines[first]})"
        sources[action.dest] = (options, source)
    return sources


def _assignment_lines(function: ast.FunctionDef, target: str) -> dict[str, int]:
    """First line assigning `target.<name>` in `function`, by name."""
    lines = {}
    for node in ast.walk(function):
        if isinstance(node, (ast.Assign, ast.AugAssign)):
            for item in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(item, ast.Attribute) and isinstance(item.value, ast.Name) and item.value.id == target:
                    lines[item.attr] = min(lines.get(item.attr, node.lineno), node.lineno)
    return lines


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def resolve_cifar(root: Path, call: Call, script: str) -> dict:
    """ABKD's `parse_option()` on the call's argv: {key: {value, source[, options]}}."""
    relative = f"{CIFAR_DIR}/train_student.py"
    path = root / relative
    tree, functions = _functions(path, ("parse_option", "get_teacher_name"))
    parse_option = functions["parse_option"]
    parse_index = next(i for i, node in enumerate(parse_option.body) if "parse_args" in ast.unparse(node))
    building = parse_option.body[:parse_index]
    namespace = _exec([IMPORT_ARGPARSE, *building], path, {})
    parser = namespace["parser"]
    sources = _dest_sources(parser, _argument_lines(building), call, script, relative)
    parsed = vars(parser.parse_args(call.argv[1:]))

    quiet_os = types.SimpleNamespace(path=types.SimpleNamespace(isdir=lambda _: True, join=os.path.join), makedirs=lambda *a, **k: None)
    namespace = _exec([IMPORT_ARGPARSE, functions["get_teacher_name"], parse_option], path, {"os": quiet_os})
    with _argv([str(path), *call.argv[1:]]):
        resolved = vars(namespace["parse_option"]())
    assigned = _assignment_lines(ast.Module(body=parse_option.body[parse_index + 1 :], type_ignores=[]), "opt")
    values = {}
    for key, value in resolved.items():
        if key in sources:
            options, source = sources[key]
            if value != parsed[key]:
                source = f"{source}, then {relative}:{assigned[key]}"
            values[key] = Value(_plain(value), source, options)
        else:
            values[key] = Value(_plain(value), f"{relative}:{assigned[key]}")
    return values


@contextlib.contextmanager
def _cwd(path: Path):
    saved = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(saved)


@contextlib.contextmanager
def _argv(argv: list[str]):
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved


def _yaml_lines(path: Path) -> dict[str, int]:
    """Dotted key -> line of each leaf of a YAML file."""
    import yaml

    lines = {}

    def walk(node, prefix):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            if isinstance(value_node, yaml.MappingNode):
                walk(value_node, key + ".")
            else:
                lines[key] = key_node.start_mark.line + 1

    walk(yaml.compose(path.read_text()), "")
    return lines


def _config_lines(function_or_module: ast.AST, target: str) -> dict[str, int]:
    """Dotted key -> line of each `<target>.A.B = ...` in the code."""
    lines = {}
    for node in ast.walk(function_or_module):
        if isinstance(node, ast.Assign):
            for item in node.targets:
                text = ast.unparse(item)
                if text.startswith(f"{target}."):
                    lines.setdefault(text[len(target) + 1 :], node.lineno)
    return lines


def _flatten(cfg, prefix: str = "") -> dict:
    flat = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def resolve_clip(root: Path, call: Call, script: str) -> dict:
    """ABKD's CLIP `setup_cfg()` on the call's argv, and the teacher checkpoint its trainer reads."""
    try:
        import yacs  # noqa: F401
    except ImportError:
        raise SystemExit("the CLIP scripts go through Dassl's yacs configuration: pip install yacs") from None
    relative = f"{CLIP_DIR}/train.py"
    path = root / relative
    tree, functions = _functions(path, ("reset_cfg", "extend_cfg", "setup_cfg"))
    main_block = next(node for node in tree.body if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test))
    parse_index = next(i for i, node in enumerate(main_block.body) if "parse_args" in ast.unparse(node))
    building = main_block.body[:parse_index]
    parser = _exec([IMPORT_ARGPARSE, *building], path, {})["parser"]
    sources = _dest_sources(parser, _argument_lines(building), call, script, relative)
    args = parser.parse_args(call.argv[1:])

    defaults_relative = f"{CLIP_DIR}/Dassl.pytorch/dassl/config/defaults.py"
    spec = importlib.util.spec_from_file_location("dassl_config_defaults", root / defaults_relative)
    defaults = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(defaults)
    namespace = _exec([functions["reset_cfg"], functions["extend_cfg"], functions["setup_cfg"]], path,
                      {"get_cfg_default": lambda: defaults._C.clone()})
    with _cwd(root / CLIP_DIR):  # the script's config paths are relative to it
        cfg = namespace["setup_cfg"](args)

    # Where each key got its value, in setup_cfg's order (a later step overrides an earlier one).
    origin = {key: f"default ({defaults_relative}:{line})" for key, line in _config_lines(ast.parse((root / defaults_relative).read_text()), "_C").items()}
    origin.update({key: f"default ({relative}:{line})" for key, line in _config_lines(functions["extend_cfg"], "cfg").items()})
    workdir = root / CLIP_DIR
    for config_file in (args.dataset_config_file, args.config_file):
        if config_file:
            origin.update({key: f"config ({CLIP_DIR}/{config_file}:{line})" for key, line in _yaml_lines(workdir / config_file).items()})
    for node in functions["reset_cfg"].body:  # `if args.X: cfg.K = ...`
        if isinstance(node, ast.If) and getattr(args, ast.unparse(node.test).removeprefix("args."), None):
            dest = ast.unparse(node.test).removeprefix("args.")
            for key in _config_lines(node, "cfg"):
                origin[key] = sources[dest][1]
    given = {word: line for word, line in zip(call.argv, call.word_lines) if line is not None}
    for key in args.opts[0::2]:
        origin[key] = f"{script}:{given[key]}"
    loss_keys = {}
    for node in functions["setup_cfg"].body:  # `cfg.distill = args.distill`, ...
        if isinstance(node, ast.Assign) and ast.unparse(node.value).startswith("args."):
            key, dest = ast.unparse(node.targets[0]).removeprefix("cfg."), ast.unparse(node.value).removeprefix("args.")
            origin[key] = sources[dest][1]
            loss_keys[key] = sources[dest][0]

    values = {}
    for key, value in sorted(_flatten(cfg).items()):
        if key.startswith("TRAINER.") and isinstance(cfg.TRAINER.get(key.split(".")[1]), dict) and key.split(".")[1] != cfg.TRAINER.NAME.upper():
            continue  # another trainer's settings (Dassl's clean_cfg drops them the same way)
        values[key] = Value(_plain(value), origin[key], loss_keys.get(key))
    values["teacher checkpoint"] = promptkd_teacher(root, cfg)
    return values


def promptkd_teacher(root: Path, cfg) -> dict:
    """The teacher checkpoint PromptKD's `build_model` loads: its `model_path = ...` expression of the branch
    that matches cfg.TRAINER.MODAL, evaluated on the resolved config."""
    relative = f"{CLIP_DIR}/trainers/promptkd.py"
    tree = ast.parse((root / relative).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "cfg.TRAINER.MODAL" in ast.unparse(node.test):
            branch = node
            while isinstance(branch, ast.If):
                if eval(compile(ast.Expression(branch.test), relative, "eval"), {"cfg": cfg}):  # noqa: S307 (a comparison of config values)
                    assign = next(item for item in branch.body if isinstance(item, ast.Assign) and ast.unparse(item.targets[0]) == "model_path")
                    value = eval(compile(ast.Expression(assign.value), relative, "eval"), {"cfg": cfg, "str": str})  # noqa: S307 (string concatenation)
                    return Value(value, f"{relative}:{assign.lineno}")
                branch = branch.orelse[0] if branch.orelse else None
    raise SystemExit(f"{relative}: no teacher path for TRAINER.MODAL {cfg.TRAINER.MODAL}: has the reference changed?")


# ---------------------------------------------------------------------------------------------------
# The record
# ---------------------------------------------------------------------------------------------------


def record(root: Path) -> dict:
    entries = []
    for pairing in PAIRINGS:
        runs, options = [], {}
        for invocation in pairing.invocations:
            for call in run_script(root, pairing.script, invocation):
                resolve = resolve_cifar if pairing.script.startswith(CIFAR_DIR) else resolve_clip
                values = resolve(root, call, pairing.script)
                values["CUDA_VISIBLE_DEVICES"] = Value(call.devices, f"{pairing.script}:{call.line}")
                options.update({key: value.options for key, value in values.items() if value.options})
                runs.append({"invocation": _Inline(invocation), "command": f"{pairing.script}:{call.line}",
                             "values": {key: _Inline([value.value, value.source]) for key, value in values.items()}})
        common = {key: value for key, value in runs[0]["values"].items() if all(run["values"].get(key) == value for run in runs)}
        for run in runs:
            run["values"] = {key: value for key, value in run["values"].items() if key not in common}
        entries.append({
            "launcher": pairing.launcher, "args": _Inline(pairing.args), "env": pairing.env, "repo": "ghwang-s/abkd",
            "script": pairing.script, "example": pairing.example, "match_on": _Inline(pairing.match_on), "note": pairing.note,
            "options": {key: _Inline(value) for key, value in sorted(options.items())}, "values": common, "runs": runs,
        })  # fmt: skip
    return {"pairings": entries, "no_reference": NO_REFERENCE, "unpaired_reference_scripts": UNPAIRED}


class _Inline(list):
    """A list written on one line by `dumps`."""


def dumps(data) -> str:
    """JSON with one line per recorded value: `"KEY": [value, "source"]`."""
    inline = []

    def mark(item):
        if isinstance(item, _Inline):
            inline.append(json.dumps(list(item)))
            return f"\0{len(inline) - 1}\0"
        if isinstance(item, dict):
            return {key: mark(value) for key, value in item.items()}
        if isinstance(item, list):
            return [mark(value) for value in item]
        return item

    text = json.dumps(mark(data), indent=1)
    return re.sub(r'"\\u0000(\d+)\\u0000"', lambda match: inline[int(match.group(1))], text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.record_reference_classification", description=__doc__.split("\n\n")[0])
    parser.add_argument("--abkd", type=Path, required=True, help="a copy of github.com/ghwang-s/abkd (checkout or files)")
    parser.add_argument("--commit", help="the commit of --abkd when it is not a git checkout")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the JSON file to write")
    args = parser.parse_args(argv)
    commit = args.commit
    if commit is None:
        found = subprocess.run(["git", "-C", str(args.abkd), "rev-parse", "HEAD"], capture_output=True, text=True)
        commit = found.stdout.strip() if found.returncode == 0 else None
    if commit is None:
        parser.error(f"--abkd {args.abkd} is not a git checkout: name its commit with --commit")
    data = {
        "about": "Resolved arguments of ABKD's CIFAR and CLIP launch scripts behind our launchers, written by "
                 "tools/record_reference_classification.py (see its docstring for how); compared by "
                 "tests/test_reference_classification_launchers.py.",
        "reference": {"repo": "ghwang-s/abkd", "commit": commit},
        **record(args.abkd.resolve()),
    }  # fmt: skip
    args.out.write_text(dumps(data) + "\n")
    print(f"{args.out}: {sum(len(entry['runs']) for entry in data['pairings'])} reference runs behind {len(data['pairings'])} pairings")


if __name__ == "__main__":
    main()
