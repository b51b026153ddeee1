"""Average base/new/HM over seeds: `python -m base_to_new_classification.summarize DIR`.

Every `results.json` under DIR is grouped by its parent's parent directory (the launchers write
`<DIR>/<dataset>/<method>/seed<N>/results.json`, so a group is one dataset and method) and the
mean ± std over its seeds is printed as a Markdown table and written to DIR/summary.json. HM is
recomputed from the mean base and new accuracies, as in the CoOp/PromptKD tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from base_to_new_classification.evaluate import harmonic_mean


def collect(directory: Path) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for path in sorted(directory.rglob("results.json")):
        group = path.parent.parent.relative_to(directory).as_posix() if path.parent != directory else "."
        groups.setdefault(group, []).append(json.loads(path.read_text()))
    return groups


def summarize(directory: str | Path) -> list[dict]:
    directory = Path(directory)
    groups = collect(directory)
    if not groups:
        raise FileNotFoundError(f"no results.json under {directory}")
    rows = []
    for group, results in groups.items():
        row = {"group": group, "seeds": sorted(r.get("seed") for r in results)}
        for key in ("base_acc", "new_acc"):
            values = [r[key] for r in results]
            row[key] = statistics.fmean(values)
            row[key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        row["hm"] = harmonic_mean(row["base_acc"], row["new_acc"])
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| run | seeds | base | new | HM |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['group']} | {len(row['seeds'])} | {row['base_acc']:.2f} ± {row['base_acc_std']:.2f} "
            f"| {row['new_acc']:.2f} ± {row['new_acc_std']:.2f} | {row['hm']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m base_to_new_classification.summarize", description=__doc__.splitlines()[0])
    parser.add_argument("directory", help="directory searched recursively for results.json files")
    args = parser.parse_args(argv)
    rows = summarize(args.directory)
    print(format_table(rows))
    (Path(args.directory) / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
