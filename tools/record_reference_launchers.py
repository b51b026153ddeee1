"""Record what each reference LLM launch script resolves to, for tests/test_reference_llm_launchers.py.

    python -m tools.record_reference_launchers --abkd ABKD_CHECKOUT --distillm DISTILLM_CHECKOUT \
        --pocl POCL_CHECKOUT [--out tests/data/reference_llm_launchers.json]

A checkout is a plain copy of the reference repository (`git archive` of ghwang-s/abkd,
jongwooko/distillm, liuliuyuan6/POCL). For each of our launchers in `LAUNCHERS`, the reference
script behind it runs under bash with `torchrun` replaced by a program that writes down its
command line; the reference's own `arguments.py` (`get_args`, imported from the checkout) parses
that command line, and every value of the resulting namespace is recorded with where it comes from:
`<script>:<line>` for a flag the script passes, `default (<arguments.py>:<line>)` otherwise. The
DeepSpeed config the script names gives the precision, and the process count with the batch flags
gives the global batch.

Each script runs with the process count its repository's README documents (4: DistiLLM "4 * 40GB
A100", ABKD "4~8 RTX 3090", POCL's published args.json `world_size: 4`), passed as the scripts'
third argument. Run by hand when the references change; CI reads only the recorded file.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

PROCESSES = 4
PROCESSES_SOURCE = {
    "ghwang-s/abkd": "README.md: 'All our experiments are conducted on 4~8 RTX 3090 24GB GPUs'",
    "jongwooko/distillm": "README.md: 'All our experiments are conducted on 4 * 40A100'",
    "liuliuyuan6/POCL": "results_gpt2_fkl_dolly_training/t0/args.json: world_size 4",
}
ABKD, DISTILLM, POCL = "ghwang-s/abkd", "jongwooko/distillm", "liuliuyuan6/POCL"
# The scripts' directory inside each repository, and where its arguments.py lies.
ROOTS = {ABKD: "distillation_llm", DISTILLM: "", POCL: ""}


def _family(prefix: str, repo: str, scripts: dict[str, str]) -> dict[str, tuple[str, list[str]]]:
    return {f"{prefix}/{ours}": (repo, [theirs]) for ours, theirs in scripts.items()}


LAUNCHERS: dict[str, tuple[str, list[str]]] = {
    **_family("gpt2", ABKD, {
        **{f"sft/sft_{size}.sh": f"scripts/gpt2/sft/sft_{size}.sh" for size in ("base", "medium", "large", "xlarge")},
        **{f"{method}/{method}_{size}.sh": f"scripts/gpt2/{method}/{method}_{size}.sh"
           for method in ("init", "kd", "seqkd", "imitkd", "gkd") for size in ("base", "medium", "large")},
        **{f"ab/train_{size}_1.5B.sh": f"scripts/gpt2/ab/train_{size}_1.5B.sh" for size in ("0.1B", "0.3B", "0.7B")},
    }),
    **_family("gpt2", DISTILLM, {f"distillm/distillm_{ours}.sh": f"scripts/gpt2/distillm/train_{size}_1.5B.sh"
                                 for ours, size in (("base", "0.1B"), ("medium", "0.3B"), ("large", "0.7B"))}),
    **_family("gpt2", DISTILLM, {f"minillm/train_{size}_1.5B.sh": f"scripts/gpt2/minillm/train_{theirs}_xl.sh"
                                 for size, theirs in (("0.1B", "base"), ("0.3B", "medium"), ("0.7B", "large"))}),
    **_family("opt", DISTILLM, {f"minillm/train_{size}_2.7B.sh": f"scripts/opt/minillm/train_{size}_2.7B.sh" for size in ("0.1B", "0.3B", "1.3B")}),
    "gpt2/pocl/train_0.1B_1.5B.sh": (POCL, [f"scripts/gpt2/pocl/train_0.1B_1.5B/t{s}.sh" for s in range(4)]),
    "opt/pocl/train_0.3B_2.7B.sh": (POCL, [f"scripts/opt/pocl/train_0.3B_2.7B/t{s}.sh" for s in range(4)]),
    **_family("opt", DISTILLM, {
        **{f"{method}/{method}_{size}.sh": f"scripts/opt/{method}/{method}_{size}_2.7B.sh"
           for method in ("kd", "seqkd", "imitkd", "gkd") for size in ("0.1B", "0.3B", "1.3B")},
        **{f"distillm/distillm_{size}.sh": f"scripts/opt/distillm/train_{size}_2.7B.sh" for size in ("0.1B", "0.3B", "1.3B")},
        **{f"init/init_{size}.sh": f"scripts/opt/init/init_{size}.sh" for size in ("0.1B", "0.3B", "1.3B")},
        "sft/sft_2.7B.sh": "scripts/opt/sft/sft_2.7B.sh",
    }),
}

FAKE_TORCHRUN = """#!/usr/bin/env python3
import json, os, sys
with open(os.environ["RECORD_ARGV"], "a") as out:
    out.write(json.dumps(sys.argv[1:]) + "\\n")
"""

PARSE = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
os.environ.setdefault("LOCAL_RANK", "0")
from arguments import get_args
sys.argv = ["finetune.py", *json.loads(sys.argv[2])]
print(json.dumps(vars(get_args()), default=str))
"""


BASE = "/tmp/reference-base"  # the scripts' BASE_PATH argument: recorded paths start with it


def run_script(checkout: Path, script: str) -> tuple[int, list[str]]:
    """The reference's process count and finetune.py arguments of one script."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "bin").mkdir()
        (tmp / "bin" / "torchrun").write_text(FAKE_TORCHRUN)
        (tmp / "bin" / "torchrun").chmod(0o755)
        env = {**os.environ, "PATH": f"{tmp / 'bin'}:{os.environ['PATH']}", "RECORD_ARGV": str(tmp / "argv.jsonl")}
        subprocess.run(["bash", str(checkout / script), BASE, "2012", str(PROCESSES)], env=env, check=True,
                       stdout=subprocess.DEVNULL, cwd=tmp)
        (argv,) = [json.loads(line) for line in (tmp / "argv.jsonl").read_text().splitlines()]
    processes = int(argv[argv.index("--nproc_per_node") + 1])
    script_at = next(i for i, token in enumerate(argv) if token.endswith(".py"))
    return processes, argv[script_at + 1:]


def parse(arguments_dir: Path, argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", PARSE, str(arguments_dir), json.dumps(argv)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _line_of(path: Path, pattern: str) -> int | None:
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if re.search(pattern, line) and not line.lstrip().startswith("#"):
            return number
    return None


def sources(checkout: Path, script: str, arguments: str, argv: list[str], namespace: dict) -> dict[str, str]:
    """Where each resolved value comes from: the script's line passing the flag, else the parser's default."""
    flags = {token for token in argv if token.startswith("--")}
    out = {}
    for dest in namespace:
        spellings = [f"--{dest}", f"--{dest.replace('_', '-')}"]
        given = next((flag for flag in spellings if flag in flags), None)
        if given is not None:
            line = _line_of(checkout / script, rf"{re.escape(given)}(\s|\"|$)")
            out[dest] = f"{script}:{line}" if line else f"{script} (through a variable)"
        else:
            line = next((n for flag in spellings if (n := _line_of(checkout / arguments, rf"[\"']{re.escape(flag)}[\"']"))), None)
            out[dest] = f"default ({arguments}:{line})" if line else "set by get_args"
    return out


def precision(checkout: Path, config_path: str, base: str) -> dict:
    config = json.loads((checkout / config_path.replace(base, "").lstrip("/")).read_text())
    fp16 = config.get("fp16", {})
    if fp16.get("enabled"):
        return {"precision": "fp16", "initial_scale_power": fp16.get("initial_scale_power"), "loss_scale": fp16.get("loss_scale")}
    return {"precision": "bf16" if config.get("bf16", {}).get("enabled") else "fp32"}


def record(checkouts: dict[str, Path], only: str | None = None, previous: dict | None = None) -> dict:
    launchers = dict(previous["launchers"]) if previous else {}
    for ours, (repo, scripts) in LAUNCHERS.items():
        if only and not fnmatch.fnmatch(ours, only):
            continue
        checkout = checkouts[repo] / ROOTS[repo] if ROOTS[repo] else checkouts[repo]
        arguments = "arguments.py"
        stages = []
        for script in scripts:
            processes, argv = run_script(checkout, script)
            namespace = parse(checkout, argv)
            base = argv[argv.index("--base-path") + 1] if "--base-path" in argv else ""
            where = sources(checkout, script, arguments, argv, namespace)
            values = {dest: {"value": value, "source": where[dest]} for dest, value in sorted(namespace.items())}
            values["processes"] = {"value": processes, "source": PROCESSES_SOURCE[repo]}
            values["global_batch"] = {"value": processes * namespace["batch_size"] * namespace["gradient_accumulation_steps"],
                                      "source": "processes * batch_size * gradient_accumulation_steps"}
            for key, value in precision(checkout, namespace["deepspeed_config"], base).items():
                values[key] = {"value": value, "source": namespace["deepspeed_config"].replace(base, "").lstrip("/")}
            stages.append({"script": f"{ROOTS[repo] + '/' if ROOTS[repo] else ''}{script}", "values": values})
        launchers[ours] = {"repo": repo, "stages": stages}
        print(f"{ours}: {len(stages)} script(s) from {repo}", file=sys.stderr)
    ordered = {name: launchers[name] for name in LAUNCHERS if name in launchers}
    return {"about": __doc__.strip().splitlines()[0], "base": BASE, "processes": PROCESSES, "launchers": ordered}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.record_reference_launchers", description=__doc__.splitlines()[0])
    parser.add_argument("--abkd", type=Path, required=True, help="a checkout of ghwang-s/abkd")
    parser.add_argument("--distillm", type=Path, required=True, help="a checkout of jongwooko/distillm")
    parser.add_argument("--pocl", type=Path, required=True, help="a checkout of liuliuyuan6/POCL")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests" / "data" / "reference_llm_launchers.json")
    parser.add_argument("--only", help="re-record only our launchers matching this pattern (e.g. 'gpt2/minillm/*'), keeping the others of --out")
    args = parser.parse_args(argv)
    previous = json.loads(args.out.read_text()) if args.only and args.out.is_file() else None
    recorded = record({ABKD: args.abkd, DISTILLM: args.distillm, POCL: args.pocl}, args.only, previous)
    args.out.write_text(json.dumps(recorded, indent=1, sort_keys=False) + "\n")
    print(f"wrote {args.out}: {len(recorded['launchers'])} launchers", file=sys.stderr)


if __name__ == "__main__":
    main()
