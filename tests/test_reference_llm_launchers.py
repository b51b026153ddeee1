"""Each LLM launcher against the reference script it reproduces, value by value (issue #24).

tests/data/reference_llm_launchers.json holds what each reference script resolves to through the
reference's own parser, every value with the script line (or parser default) it comes from
(tools/record_reference_launchers.py). Here each of our launchers is dry-run, its command parsed by
our real parser with every default, and every reference value compared with ours, untranslated
(a reference `--type tfkl` must meet our `--type tfkl`). A difference passes only when
tests/data/reference_llm_accepted.json lists it with its reason; an accepted difference that no
longer occurs fails too, and docs/reference-differences.md shows the list (generated from it by
tools/reference_differences_table.py).
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from pathlib import Path

import pytest
from test_scripts import REPO, SCRIPTS, printed_commands, run_script

from abkd.pocl import stage_value
from distillation_llm.arguments import build_parser, resolve_defaults

RECORD = json.loads((REPO / "tests" / "data" / "reference_llm_launchers.json").read_text())
ACCEPTED = json.loads((REPO / "tests" / "data" / "reference_llm_accepted.json").read_text())["accepted"]
BASE = RECORD["base"]
GPU_NUM = 1  # our launchers run with one process here; the global batch must still be the reference's
# Reference flag -> our flag of the same meaning under another name.
RENAMED = {"temperature_kld": "kd_temperature"}
# ... and per launcher: MiniLLM's --chunk-size (prompts sampled together) is --rollout-chunk-size here.
RENAMED_FOR = {"*/minillm/*": {"chunk_size": "rollout_chunk_size"}}


def renamed(launcher: str) -> dict[str, str]:
    names = dict(RENAMED)
    for pattern, more in RENAMED_FOR.items():
        if fnmatch.fnmatch(launcher, pattern):
            names.update(more)
    return names
ABSENT = "<not a flag here>"


def path_role(path: str | None, base: str) -> str | None:
    """What a path argument points to, independent of the two projects' directory layouts: the
    pretrained or trained model (by training step and model name), or the dataset."""
    if path is None:
        return None
    rel = path.removeprefix(base).strip("/")
    if m := re.fullmatch(r"results/\w+/train/\w+/t(\d)/\d+", rel):
        return f"POCL stage {int(m[1]) + 1}'s last step"  # POCL's args.json: t1 starts from t0/352, t0's last step (row 47)
    if m := re.fullmatch(r"results/\w+/train/(init|sft)/([\w.-]+)(/\d+|/best)?", rel):
        return f"{m[1]}:{m[2]}"
    if m := re.fullmatch(r"checkpoints/([\w.-]+)", rel):
        return f"pretrained:{m[1]}"
    if m := re.fullmatch(r"processed_data/dolly/(full|pseudo|seqkd)/([\w.-]+)(/train(\d)|/t(\d))?", rel):
        stage = m[4] or m[5]
        return {"full": "dolly", "pseudo": "teacher-generated dolly", "seqkd": "teacher-generated dolly"}[m[1]] + (f" stage {int(stage) + 1} split" if stage else "")
    if rel == "processed_data/openwebtext" or rel.startswith("processed_data/openwebtext/"):
        return "openwebtext"
    return rel


PATH_KEYS = ("model_path", "teacher_model_path", "data_dir", "lm_data_dir")


def precision(config_path: str, fp16_flag: bool) -> dict:
    config = json.loads(Path(config_path).read_text())
    if fp16_flag or config.get("fp16", {}).get("enabled"):
        fp16 = config.get("fp16", {})
        return {"precision": "fp16", "initial_scale_power": fp16.get("initial_scale_power", 16), "loss_scale": fp16.get("loss_scale", 0)}
    return {"precision": "bf16" if config.get("bf16", {}).get("enabled") else "fp32", "initial_scale_power": None, "loss_scale": None}


def ours(launcher: str, gpu_num: int = GPU_NUM) -> list[dict]:
    """Our launcher's resolved values, one dict per reference script (per POCL stage)."""
    commands = printed_commands(SCRIPTS / launcher, BASE, "2012", str(gpu_num))
    argv = next(argv for module, argv in reversed(commands) if module == "distillation_llm.finetune")
    args = resolve_defaults(build_parser().parse_args(argv))
    values = dict(vars(args))
    values.update(precision(args.deepspeed_config, args.fp16))
    values["processes"] = gpu_num
    values["global_batch"] = gpu_num * args.batch_size * args.gradient_accumulation_steps
    for key in PATH_KEYS:
        values[key] = path_role(values[key], BASE)
    if args.curriculum != "pocl":
        return [values]
    stages = []
    for s in range(args.num_stages):  # the values the curriculum trains each stage with (abkd.pocl.BabyStepScheduler)
        stage = {**values, "epochs": args.stage_epochs, "stage": s, "data_dir": values["data_dir"] + " (curriculum)"}
        stage["kd_ratio"] = stage_value(args.kd_ratio_start, args.kd_ratio_end, s, args.num_stages)
        stage["kd_temperature"] = stage_value(args.kd_temperature_start, args.kd_temperature_end, s, args.num_stages)
        if args.stage_dev_num:
            stage["dev_num"] = args.stage_dev_num[s]
        if s > 0:
            stage["model_path"] = f"POCL stage {s}'s last step" if args.stage_start == "last" else f"POCL stage {s}'s best"
        stages.append(stage)
    return stages


def reference(launcher: str) -> list[dict]:
    stages = []
    for stage in RECORD["launchers"][launcher]["stages"]:
        values = {key: entry["value"] for key, entry in stage["values"].items()}
        for key in PATH_KEYS:
            values[key] = path_role(values[key], BASE)
        stages.append(values)
    return stages


def same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool) and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def same_method(mine: dict, theirs: dict) -> bool:
    """Whether our --type and the reference's train the same thing: divergence with its parameters,
    batch source, T^2 factor and probability of student-sampled batches (as read from each side's values)."""
    from types import SimpleNamespace

    from distillation_llm.methods import lookup

    ours_args = SimpleNamespace(**mine)
    theirs_args = SimpleNamespace(**{**mine, **{RENAMED.get(k, k): v for k, v in theirs.items()}})
    def trains(method, args) -> tuple:
        sampled = method.student_probability(args) if method.student_probability else None
        return method.divergence, method.source, method.temperature_squared, method.params(args), sampled

    return trains(lookup(mine["type"]), ours_args) == trains(lookup(theirs["type"]), theirs_args)


def accepted(launcher: str, key: str, mine, theirs, mine_all: dict, theirs_all: dict) -> dict | None:
    for entry in ACCEPTED:
        if not any(fnmatch.fnmatch(launcher, pattern) for pattern in entry["launchers"]) or key not in entry["keys"]:
            continue
        if "ours" in entry and not same(entry["ours"], mine):
            continue
        if "reference" in entry and not same(entry["reference"], theirs):
            continue
        if "tolerance" in entry and not abs(mine - theirs) <= entry["tolerance"]:
            continue
        if entry.get("same_method") and not same_method(mine_all, theirs_all):
            continue
        if entry.get("scaled_by_processes") and mine * mine_all["processes"] != theirs * theirs_all["processes"]:
            continue
        return entry
    return None


def differences(launcher: str, gpu_num: int = GPU_NUM) -> tuple[list[str], set[int]]:
    """Unaccepted differences (one line each) and the indices of the accepted entries used."""
    record = RECORD["launchers"][launcher]
    mine_stages, their_stages = ours(launcher, gpu_num), reference(launcher)
    assert len(mine_stages) == len(their_stages), f"{launcher}: {len(mine_stages)} stages here, {len(their_stages)} reference scripts"
    problems, used = [], set()
    for index, (mine, theirs) in enumerate(zip(mine_stages, their_stages)):
        sources = record["stages"][index]["values"]
        names = renamed(launcher)
        for key, value in theirs.items():
            our_key = names.get(key, key)
            here = mine.get(our_key, ABSENT)
            if same(here, value):
                continue
            entry = accepted(launcher, key, here, value, mine, theirs)
            if entry is None:
                problems.append(f"{launcher} ({record['stages'][index]['script']}): {key} is {here!r} here, {value!r} in the reference "
                                f"({sources[key]['source']})")
            else:
                used.add(ACCEPTED.index(entry))
    return problems, used


LAUNCHERS = sorted(RECORD["launchers"])


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_launcher_resolves_to_its_reference_script(launcher):
    problems, _ = differences(launcher)
    assert not problems, "\n".join(problems)


def test_every_accepted_difference_still_occurs_and_has_a_reason():
    used = set()
    for launcher in LAUNCHERS:
        used |= differences(launcher)[1]
    for index, entry in enumerate(ACCEPTED):
        assert entry.get("reason", "").strip(), f"accepted difference {entry['keys']} has no reason"
        assert index in used, f"accepted difference {entry['keys']} for {entry['launchers']} no longer occurs: remove it"


@pytest.mark.parametrize("gpu_num", [2, 4])
def test_the_global_batch_is_the_reference_s_for_any_process_count(gpu_num):
    """Gradient accumulation fills the gap between the processes given and the reference's."""
    for launcher in ("gpt2/ab/train_0.1B_1.5B.sh", "gpt2/pocl/train_0.1B_1.5B.sh", "opt/kd/kd_0.1B.sh"):
        (mine, *_), (theirs, *_) = ours(launcher, gpu_num), reference(launcher)
        assert (mine["global_batch"], mine["batch_size"]) == (theirs["global_batch"], theirs["batch_size"]), launcher


def test_a_process_count_that_does_not_divide_the_global_batch_is_refused():
    result = run_script(SCRIPTS / "gpt2/ab/train_0.1B_1.5B.sh", BASE, "2012", "3")
    assert result.returncode != 0
    assert "global batch 32" in result.stderr and "BATCH_SIZE" in result.stderr, result.stderr


def test_the_docs_list_every_accepted_difference():
    from tools.reference_differences_table import MARKERS, table

    text = (REPO / "docs" / "reference-differences.md").read_text()
    start, end = (text.index(marker) for marker in MARKERS)
    assert text[start + len(MARKERS[0]):end].strip() == table().strip(), "run python -m tools.reference_differences_table"


# ---------------------------------------------------------------------------------------------
# What runs: printed by the launcher and logged by finetune before training.
# ---------------------------------------------------------------------------------------------


def _launcher_args(launcher: str, gpu_num: int = 1):
    commands = printed_commands(SCRIPTS / launcher, BASE, "2012", str(gpu_num))
    argv = next(argv for module, argv in reversed(commands) if module == "distillation_llm.finetune")
    return resolve_defaults(build_parser().parse_args(argv))


def test_a_gpt2_abkd_launcher_with_one_process_reports_the_reference_global_batch_and_fp16():
    import torch

    from abkd import engine as E
    from distillation_llm.arguments import run_summary
    from distillation_llm.finetune import precision_label

    result = run_script(SCRIPTS / "gpt2/ab/train_0.1B_1.5B.sh", BASE, "2012", "1")
    assert "global batch 32 = 1 process(es) x batch 8 x accumulation 4, precision fp16" in result.stderr, result.stderr
    args = _launcher_args("gpt2/ab/train_0.1B_1.5B.sh")
    config = E.load_deepspeed_config(args.deepspeed_config, micro_batch_size=args.batch_size,
                                     gradient_accumulation_steps=args.gradient_accumulation_steps, half_precision="fp16" if args.fp16 else None)
    label = precision_label(config, args)
    assert label == ("fp16 (dynamic loss scaling from 2^11)" if torch.cuda.is_available() else "fp32 (fp16 asked: no CUDA here)")
    lines = run_summary(args, 1, label)
    assert lines[0] == f"global batch 32 = 1 process(es) x batch 8 x accumulation 4; precision {label}"
    assert lines[1] == "loss 0 * CE + 1 * ab(alpha=0.2, beta=0.7) (T = 1) + 1 * LM"
    assert lines[2] == "dev decoding (--eval-gen, selects best/): sampling at temperature 1, top-k off, top-p 1, up to 256 new tokens"


def test_a_pocl_launcher_reports_t_squared_and_each_stage_starting_from_the_previous_last_step():
    from distillation_llm.arguments import run_summary

    args = _launcher_args("gpt2/pocl/train_0.1B_1.5B.sh")
    stages = [line for line in run_summary(args, 1, "fp16") if line.startswith("POCL stage")]
    assert stages == [
        "POCL stage 1/4: loss 0.3 * CE + 0.7 * tfkl * T^2 (T = 1); 8 epochs from --model-path, 1000 dev examples",
        "POCL stage 2/4: loss 0.2 * CE + 0.8 * tfkl * T^2 (T = 1.33); 8 epochs from stage 1's last step, 500 dev examples",
        "POCL stage 3/4: loss 0.1 * CE + 0.9 * tfkl * T^2 (T = 1.67); 8 epochs from stage 2's last step, 500 dev examples",
        "POCL stage 4/4: loss 0 * CE + 1 * tfkl * T^2 (T = 2); 8 epochs from stage 3's last step, 500 dev examples",
    ]
