"""The demo's ROUGE-L table as `scripts/demo.sh` prints it, and the machine and versions it was
measured with.

The demo's numbers are deterministic, but only for a given set of package versions
(constraints.txt) and a given CPU arithmetic: the vector instruction set torch's kernels dispatch
to, the CPU's vendor (MKL takes other code paths on AMD than on Intel) and the number of threads
(which splits a matmul's sums). Any of these changes float32 rounding from the first training
step, and hundreds of steps and sampling at temperature 0.7 turn that into another table. So a
recorded table carries the machine line it was measured on, and is compared only on the same.

    python -m tools.demo_table --machine        # what scripts/demo.sh writes to OUT/machine.txt
    python -m tools.demo_table results/demo     # the final table of OUT/table.txt, with its machine
    python -m tools.demo_table OUT --write FILE  # a recorded copy (tests/data/demo_quick_table.txt is one)
"""

from __future__ import annotations

import argparse
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

TABLE_TITLE = "ROUGE-L (mean ± std over seeds)"  # distillation_llm.evaluate.format_table's first line
# The packages the numbers pass through, in the versions line (all pinned by constraints.txt, torch by install.sh).
VERSIONED = ("torch", "transformers", "tokenizers", "huggingface-hub", "datasets", "numpy", "deepspeed", "rouge-score", "nltk")


def machine_line() -> str:
    """The arithmetic the demo's numbers depend on: 'cuda <GPU>' where the demo trains on a GPU,
    else 'cpu <vendor> <torch CPU capability>, <N> threads' (N as torch sets it in this environment)."""
    import torch

    if torch.cuda.is_available():
        return f"cuda {torch.cuda.get_device_name(0)}"
    return f"cpu {_cpu_vendor()} {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads"


def _cpu_vendor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions_line() -> str:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "absent"

    return ", ".join([f"python {platform.python_version()}", *(f"{name} {version(name)}" for name in VERSIONED)])


def final_table(printed: str) -> str:
    """The last table in `distillation_llm.evaluate`'s output (the one with every model): its title,
    header and rows, up to the line that names the files written."""
    lines = printed.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == TABLE_TITLE]
    if not starts:
        raise ValueError(f"no '{TABLE_TITLE}' table in the demo's output")
    table = []
    for line in lines[starts[-1] :]:
        if not line.strip() or line.startswith("wrote "):
            break
        table.append(line.rstrip())
    return "\n".join(table)


@dataclass(frozen=True)
class DemoTable:
    table: str
    machine: str
    versions: str

    def render(self, title: str) -> str:
        return f"# {title}\n# machine: {self.machine}\n# versions: {self.versions}\n{self.table}\n"


def read_demo(out: str | Path) -> DemoTable:
    """The table a demo run printed (OUT/table.txt) with the machine it wrote (OUT/machine.txt)."""
    out = Path(out)
    header = _header((out / "machine.txt").read_text(encoding="utf-8"))
    return DemoTable(final_table((out / "table.txt").read_text(encoding="utf-8")), header["machine"], header["versions"])


def read_record(path: str | Path) -> DemoTable:
    """A recorded table as `DemoTable.render` writes it: '# ' header lines, then the table."""
    text = Path(path).read_text(encoding="utf-8")
    header = _header("\n".join(line[2:] for line in text.splitlines() if line.startswith("# ")))
    table = "\n".join(line.rstrip() for line in text.splitlines() if line.strip() and not line.startswith("#"))
    return DemoTable(table, header["machine"], header["versions"])


def _header(text: str) -> dict[str, str]:
    fields = dict(line.split(": ", 1) for line in text.splitlines() if line.startswith(("machine: ", "versions: ")))
    missing = {"machine", "versions"} - fields.keys()
    if missing:
        raise ValueError(f"no {' or '.join(sorted(missing))} line in {text!r}")
    return fields


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.demo_table", description="Print or record the demo's final ROUGE-L table with its machine and versions.")
    parser.add_argument("out", nargs="?", help="the demo's output directory (scripts/demo.sh --out; holds table.txt and machine.txt)")
    parser.add_argument("--machine", action="store_true", help="print this environment's machine and versions lines (what scripts/demo.sh writes to machine.txt) and exit")
    parser.add_argument("--write", metavar="FILE", help="write the table with its machine and versions to FILE (a recorded copy, e.g. tests/data/demo_table.txt)")
    parser.add_argument("--title", default="The final table of `bash scripts/demo.sh`, as printed.", help="the first comment line of the --write file")
    args = parser.parse_args(argv)
    if args.machine:
        print(f"machine: {machine_line()}\nversions: {versions_line()}")
        return
    if args.out is None:
        parser.error("give the demo's output directory, or --machine")
    text = read_demo(args.out).render(args.title)
    if args.write:
        Path(args.write).write_text(text, encoding="utf-8")
        print(f"wrote {args.write}")
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
