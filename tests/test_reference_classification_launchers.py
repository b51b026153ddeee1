"""Our CIFAR and CLIP launchers resolve to the values of the ABKD scripts they reproduce, or the difference is listed.

tests/data/reference_classification_launchers.json holds, for each pairing of one of our launchers (its arguments
and environment) with an ABKD launch script (its invocations), every value that ABKD's own parser resolves from
that script, with the script or default line it comes from (written by tools/record_reference_classification.py,
by hand, when the reference changes). Here our launcher is dry-run with the pairing's arguments, each command it
prints goes through our real parser (defaults and start-up resolution included), each of our runs is paired with a
reference run by the pairing's `match_on` values, and every reference value is compared with ours.

A reference key is ours when one of its option strings is ours (`_` and `-` alike: `-r`/`--gamma` is our
`--ce-weight`/`-r`), through COUNTERPARTS (Dassl config keys, ABKD's computed values) or, for a constant of our
code, through fixed_values; otherwise ours is NO_COUNTERPART. A value that differs must be an entry of tests/data/reference_classification_differences.json (the
launchers and keys it covers, the reason, optionally the (ours, reference) pairs it allows); an entry, or one of
its keys, that no longer matches a difference fails the test as stale.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
RECORD = json.loads((REPO / "tests/data/reference_classification_launchers.json").read_text())
ACCEPTED = json.loads((REPO / "tests/data/reference_classification_differences.json").read_text())["differences"]
NO_COUNTERPART = "(no counterpart)"
CIFAR_MODULE, CLIP_MODULE = "standard_classification.train_student", "base_to_new_classification.train"

# Reference keys that are ours under another name (those sharing an option string are found from the parsers).
COUNTERPARTS = {
    CIFAR_MODULE: {"print_freq": "log_interval", "model_t": "teacher_model"},
    CLIP_MODULE: {
        "SEED": "seed", "DATASET.NAME": "dataset", "DATASET.ROOT": "root", "OUTPUT_DIR": "save", "teacher checkpoint": "teacher_ckpt",
        "MODEL.BACKBONE.NAME": "student_model_path", "TRAINER.PROMPTKD.TEACHER_NAME": "teacher_model_path",
        "OPTIM.LR": "lr", "OPTIM.MAX_EPOCH": "epochs", "OPTIM.MOMENTUM": "momentum", "OPTIM.WEIGHT_DECAY": "weight_decay",
        "OPTIM.LR_SCHEDULER": "lr_schedule", "OPTIM.WARMUP_EPOCH": "warmup_epochs", "OPTIM.WARMUP_CONS_LR": "warmup_lr",
        "DATALOADER.TRAIN_X.BATCH_SIZE": "batch_size", "DATALOADER.TEST.BATCH_SIZE": "eval_batch_size", "DATALOADER.NUM_WORKERS": "num_workers",
        "TRAIN.PRINT_FREQ": "log_interval", "TEST.FINAL_MODEL": "final_model", "RESUME": "resume",
        "TRAINER.PROMPTKD.TEMPERATURE": "kd_temperature", "TRAINER.PROMPTKD.KD_WEIGHT": "kd_ratio", "TRAINER.PROMPTKD.PREC": "precision",
        "TRAINER.PROMPTKD.N_CTX_VISION": "n_ctx_vision", "TRAINER.PROMPTKD.PROMPT_DEPTH_VISION": "prompt_depth_vision",
    },
}  # fmt: skip
# Reference keys that are constants of our code rather than flags: key -> (our name, its value).
def fixed_values(module: str) -> dict[str, tuple[str, object]]:
    if module == CIFAR_MODULE:
        return {}
    import inspect

    from base_to_new_classification import preprocess

    return {
        "INPUT.PIXEL_MEAN": ("preprocess.CLIP_MEAN", preprocess.CLIP_MEAN),
        "INPUT.PIXEL_STD": ("preprocess.CLIP_STD", preprocess.CLIP_STD),
        "INPUT.RRCROP_SCALE": ("preprocess.TrainTransform scale", inspect.signature(preprocess.TrainTransform).parameters["scale"].default),
    }


# Values compared as paths relative to the repository (ours are absolute or relative to it; the reference's are
# relative to its subproject directory, often with "./").
PATHS = {"path_t", "teacher checkpoint", "DATASET.ROOT", "OUTPUT_DIR", "MODEL.BACKBONE.NAME", "TRAINER.PROMPTKD.TEACHER_NAME"}
DEVICE = "CUDA_VISIBLE_DEVICES"


def label(pairing: dict) -> str:
    return " ".join([pairing["launcher"], *(f"{key}={value}" for key, value in pairing["env"].items()), *pairing["args"]])


def parser_module(pairing: dict) -> str:
    return CIFAR_MODULE if pairing["launcher"].startswith("cifar/") else CLIP_MODULE


def our_parser(module: str):
    if module == CIFAR_MODULE:
        from standard_classification.train_student import build_parser, parse_args
    else:
        from base_to_new_classification.train import build_parser, parse_args
    return build_parser(), parse_args


def script_env(extra: dict) -> dict:
    from test_scripts import SCRIPT_ENV

    return {**{key: value for key, value in os.environ.items() if key not in SCRIPT_ENV}, **extra}


def our_runs(pairing: dict, tmp_path: Path) -> list[dict]:
    """Our launcher's training commands (DRY_RUN=1) through our parser, as dicts of resolved values, with the
    CUDA_VISIBLE_DEVICES each real launch would get (from a fake torchrun)."""
    module = parser_module(pairing)
    script = SCRIPTS / pairing["launcher"]
    result = subprocess.run(["bash", str(script), *pairing["args"]], env=script_env({**pairing["env"], "DRY_RUN": "1"}),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line)[3:] for line in result.stdout.splitlines() if shlex.split(line)[:3] == ["python", "-m", module]]
    _, parse_args = our_parser(module)
    runs = [vars(parse_args(argv)) for argv in commands]
    devices = launched_devices(pairing, tmp_path) if module == CIFAR_MODULE else [NO_COUNTERPART] * len(runs)
    assert len(devices) == len(runs)
    for run, device in zip(runs, devices):
        run[DEVICE] = device
        run.update(dict(fixed_values(module).values()))
    return runs


def launched_devices(pairing: dict, tmp_path: Path) -> list[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "torchrun").write_text(f'#!/usr/bin/env bash\necho "${{{DEVICE}-}}" >> "{tmp_path}/devices"\n')
    (bin_dir / "torchrun").chmod(0o755)
    env = script_env({**pairing["env"], "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    result = subprocess.run(["bash", str(SCRIPTS / pairing["launcher"]), *pairing["args"]], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return (tmp_path / "devices").read_text().splitlines()


def key_map(pairing: dict) -> dict[str, str | None]:
    """Reference key -> our resolved key (None: no counterpart)."""
    module = parser_module(pairing)
    parser, _ = our_parser(module)
    ours = {option.replace("_", "-"): action.dest for action in parser._actions for option in action.option_strings}
    keys = {key for run in pairing["runs"] for key in run["values"]} | set(pairing["values"])
    mapping = {}
    for key in keys:
        shared = [ours[option.replace("_", "-")] for option in pairing["options"].get(key, []) if option.replace("_", "-") in ours]
        fixed = fixed_values(module).get(key, (None,))[0]
        mapping[key] = shared[0] if shared else COUNTERPARTS[module].get(key, DEVICE if key == DEVICE else fixed)
    return mapping


def normal(key: str, value):
    if key in PATHS and isinstance(value, str):
        value = value.removeprefix(str(REPO) + "/").removeprefix("./")
    return value


def same(ours, reference) -> bool:
    if isinstance(ours, (list, tuple)) and isinstance(reference, (list, tuple)):
        return len(ours) == len(reference) and all(same(a, b) for a, b in zip(ours, reference))
    numbers = (int, float)
    if isinstance(ours, numbers) and isinstance(reference, numbers) and not isinstance(ours, bool) and not isinstance(reference, bool):
        return math.isclose(ours, reference, rel_tol=1e-9, abs_tol=1e-12)
    return ours == reference


def differences(pairing: dict, tmp_path: Path) -> list[tuple[str, str | None, object, object, str]]:
    """(reference key, our key, ours, reference, reference source) of every value that differs, over the pairing's runs."""
    mapping = key_map(pairing)
    ours_runs = our_runs(pairing, tmp_path)
    reference_runs = [{**pairing["values"], **run["values"]} for run in pairing["runs"]]
    assert len(ours_runs) == len(reference_runs), f"{label(pairing)}: {len(ours_runs)} runs, the reference {len(reference_runs)}"
    found = []
    for reference in reference_runs:
        matching = [run for run in ours_runs
                    if all(same(normal(key, run[mapping[key]]), normal(key, reference[key][0])) for key in pairing["match_on"])]
        coordinates = {key: reference[key][0] for key in pairing["match_on"]}
        assert len(matching) == 1, f"{label(pairing)}: {len(matching)} of our runs have the reference run's {coordinates}"
        (run,) = matching
        for key, (value, source) in sorted(reference.items()):
            ours = run[mapping[key]] if mapping[key] is not None else NO_COUNTERPART
            if not same(normal(key, ours), normal(key, value)):
                found.append((key, mapping[key], normal(key, ours), normal(key, value), source))
    return found


def accepting(pairing: dict, key: str, ours, reference) -> list[tuple[int, str]]:
    """(entry index, key pattern) of the accepted differences that cover this one."""
    hits = []
    for index, entry in enumerate(ACCEPTED):
        if not any(fnmatch.fnmatchcase(label(pairing), pattern) for pattern in entry["launchers"]):
            continue
        if "values" in entry and not any(same(ours, a) and same(reference, b) for a, b in entry["values"]):
            continue
        hits += [(index, pattern) for pattern in entry["keys"] if fnmatch.fnmatchcase(key, pattern)]
    return hits


@pytest.fixture(scope="module")
def all_differences(tmp_path_factory) -> dict[str, list]:
    return {label(pairing): differences(pairing, tmp_path_factory.mktemp("launch")) for pairing in RECORD["pairings"]}


@pytest.mark.parametrize("pairing", RECORD["pairings"], ids=label)
def test_launcher_resolves_to_its_reference_script(pairing, all_differences):
    counts: dict[str, int] = {}
    for key, ours_key, ours, reference, source in all_differences[label(pairing)]:
        if not accepting(pairing, key, ours, reference):
            line = f"{key}{f' (ours: {ours_key})' if ours_key not in (key, None) else ''}: ours {ours!r}, reference {reference!r} ({source})"
            counts[line] = counts.get(line, 0) + 1
    unexplained = [line + (f" [{count} runs]" if count > 1 else "") for line, count in counts.items()]
    assert not unexplained, (
        f"{label(pairing)} differs from {pairing['repo']} {pairing['script']} (run as {pairing['runs'][0]['command']}) in:\n  "
        + "\n  ".join(unexplained)
        + "\nfix the launcher, or list the difference with its reason in tests/data/reference_classification_differences.json"
    )


def test_every_accepted_difference_still_occurs(all_differences):
    used = set()
    for pairing in RECORD["pairings"]:
        for key, _, ours, reference, _ in all_differences[label(pairing)]:
            used.update(accepting(pairing, key, ours, reference))
    stale = [f"{entry['keys']} for {entry['launchers']}: {pattern}" for index, entry in enumerate(ACCEPTED)
             for pattern in entry["keys"] if (index, pattern) not in used]
    assert not stale, "accepted differences that no longer occur (remove them):\n  " + "\n  ".join(stale)


def test_every_launcher_has_a_reference_or_a_reason():
    launchers = {str(path.relative_to(SCRIPTS)) for family in ("cifar", "clip") for path in (SCRIPTS / family).glob("*.sh") if path.name != "defaults.sh"}
    paired = {pairing["launcher"] for pairing in RECORD["pairings"]}
    assert launchers == paired | set(RECORD["no_reference"]) and not paired & set(RECORD["no_reference"])


def test_accepted_differences_give_reasons():
    for entry in ACCEPTED:
        assert set(entry) <= {"launchers", "keys", "reason", "values"} and entry["launchers"] and entry["keys"], entry
        assert len(entry["reason"]) > 20, entry
