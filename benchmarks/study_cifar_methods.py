"""A CPU-scale study of the CIFAR distillation methods, with and without the POCL curriculum.

    python benchmarks/study_cifar_methods.py                       # the study of docs/studies.md (~30-40 min, 2 cores)
    python benchmarks/study_cifar_methods.py --methods kd dkd --seeds 1

Writes a synthetic CIFAR-format set whose 20 classes come in 4 superclasses (a shared superclass
pattern plus a weaker class pattern plus noise: `standard_classification.data.write_superclass_cifar`),
so that a teacher's soft labels carry which classes resemble which. Trains a teacher once, then a
student from scratch (cross-entropy only) and with every `--distill` method of
`standard_classification.train_student`, at the weights of its launcher (scripts/cifar/*.sh; see
`method_flags`), without and with `--curriculum pocl` where POCL applies (the terms with a KD
temperature), for each seed; prints a markdown table of the final-epoch test top-1, mean ± sample
std over the seeds, against the student from scratch.

The student recipe is the CRD/RepDistiller one compressed into `--epochs`: SGD lr 0.05, momentum
0.9, weight decay 5e-4, batch 64, the decays of epochs 150/180/210 of 240 moved to the same
fractions of the run; DKD's 20-epoch warm-up and CRD's 16,384 negatives are scaled the same way
(to the run's length and the training set's size). Every run is its own process (`python -m ...`
from the repository root) with `--threads` intra-op threads, `--workers` at a time. Each finished
run appends a line to `<out>/results.jsonl`; a rerun skips what is there (an interrupted study
resumes; a run cut off midway starts again), and refuses an `<out>` made with other settings.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# The reference recipe the schedule is scaled from: 240 epochs, decays after 150, 180 and 210.
REFERENCE_EPOCHS, REFERENCE_DECAYS = 240, (150, 180, 210)
DKD_REFERENCE_WARMUP = 20  # mdistiller's CFG.DKD.WARMUP, in epochs of 240
CRD_REFERENCE_NEGATIVES, CIFAR100_TRAIN_SIZE = 16384, 50000  # RepDistiller's --nce_k for CIFAR-100's 50,000 images
AB = ("--ab_alpha", "0.5", "--ab_beta", "0.5")  # the launchers' default D_AB for abdkd, abls, abttm


def scaled_decays(epochs: int) -> str:
    """The reference's decay epochs at the same fractions of `epochs`, e.g. 8 -> '5,6,7'."""
    return ",".join(str(e) for e in sorted({max(1, round(d * epochs / REFERENCE_EPOCHS)) for d in REFERENCE_DECAYS}))


def method_flags(epochs: int, train_size: int) -> dict[str, tuple[tuple[str, ...], str]]:
    """`--distill` name -> (its train_student flags, where they come from)."""
    divergence = ("--jsd-lam", "0.1", "--skew-alpha", "0.1", "--kd_T", "4", "--ce-weight", "1", "--kd-weight", "2")
    dkd = ("--dkd_alpha", "1", "--dkd_warmup", str(max(1, round(DKD_REFERENCE_WARMUP * epochs / REFERENCE_EPOCHS))), "--kd_T", "4",
           "--ce-weight", "1", "--kd-weight", "1")
    nce_k = max(1, round(CRD_REFERENCE_NEGATIVES * train_size / CIFAR100_TRAIN_SIZE))
    return {
        "kd": (("--kd_T", "4", "--ce-weight", "1", "--kd-weight", "2"), "train_kd.sh"),
        **{name: (divergence, "train_divergences.sh") for name in ("fkl", "rkl", "jsd", "tvd", "sfkl", "srkl")},
        "ab": (("--ab_alpha", "0.8", "--ab_beta", "0.3", "--kd_T", "4", "--ce-weight", "1", "--kd-weight", "64"),
               "train_ab.sh's example (resnet56 -> resnet20)"),
        "dkd": (dkd, "train_dkd.sh; NCKD weight 8 (mdistiller's default for an unlisted pair); warm-up scaled to the run"),
        "abdkd": ((*dkd, *AB), "train_dkd.sh, DISTILL=abdkd"),
        "ls": (("--kd_T", "2", "--ce-weight", "0.1", "--kd-weight", "9"), "train_ls.sh"),
        "abls": (("--kd_T", "2", "--ce-weight", "0.1", "--kd-weight", "9", *AB), "train_ls.sh, DISTILL=abls"),
        "ttm": (("--ttm_l", "0.1", "--ce-weight", "1", "--kd-weight", "76"), "train_ttm.sh"),
        "wttm": (("--ttm_l", "0.2", "--ce-weight", "1", "--kd-weight", "4"),
                 "train_wttm.sh needs both: the TTM authors' README's WTTM setting (there beside CRD)"),
        "abttm": (("--ttm_l", "0.1", "--ce-weight", "1", "--kd-weight", "76", *AB), "train_ttm.sh, DISTILL=abttm"),
        "dist": (("--dist_beta", "1", "--dist_gamma", "1", "--dist_tau", "4", "--ce-weight", "1", "--kd-weight", "1"), "train_dist.sh"),
        "crd": (("--nce_k", str(nce_k), "--nce_t", "0.07", "--nce_m", "0.5", "--feat_dim", "128", "--mode", "exact", "--ce-weight", "1", "--kd-weight", "0.8"),
                f"train_crd.sh; --nce_k {CRD_REFERENCE_NEGATIVES} x {train_size}/{CIFAR100_TRAIN_SIZE} images"),
        "itrd": (("--lambda_corr", "2", "--lambda_mutual", "1", "--alpha_it", "1.5", "--ce-weight", "1", "--kd-weight", "1"), "train_itrd.sh"),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "results" / "study_cifar_methods"), help="folder of the data, teacher, runs and results.jsonl")
    parser.add_argument("--methods", nargs="+", help="--distill names to run (default: every one train_student offers)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="student seeds (--seed of each run)")
    parser.add_argument("--workers", type=int, default=2, help="runs at a time")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads per run (1: on a shared 2-core machine one thread per run beats two spin-waiting ones)")
    data = parser.add_argument_group("data (standard_classification.data --synthetic --superclasses)")
    data.add_argument("--classes", type=int, default=20, help="number of classes")
    data.add_argument("--superclasses", type=int, default=4, help="superclasses the classes are split into")
    data.add_argument("--train-per-class", type=int, default=64, help="training images per class")
    data.add_argument("--test-per-class", type=int, default=50, help="test images per class")
    data.add_argument("--class-strength", type=float, default=0.2, help="amplitude of each class's own pattern beside its superclass's")
    data.add_argument("--noise", type=float, default=0.3, help="std of the pixel noise")
    data.add_argument("--data-seed", type=int, default=0, help="seed of the patterns and the images")
    models = parser.add_argument_group("models and recipe")
    models.add_argument("--teacher", default="resnet20", help="teacher architecture (trained once, seed 0)")
    models.add_argument("--teacher-epochs", type=int, default=30, help="teacher training epochs")
    models.add_argument("--student", default="resnet8", help="student architecture")
    models.add_argument("--epochs", type=int, default=8, help="student training epochs (every row)")
    return parser


SETTINGS = ("classes", "superclasses", "train_per_class", "test_per_class", "class_strength", "noise", "data_seed", "teacher", "teacher_epochs", "student", "epochs")


class Study:
    """The study's folder: data, teacher, rankings, one folder per run, results.jsonl."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.out = args, Path(args.out).resolve()
        self.data = self.out / "data"
        self.teacher_dir = self.out / "teacher" / f"{args.teacher}_vanilla"  # train_student reads the architecture from <name>_vanilla
        self.teacher_ckpt = self.teacher_dir / f"ckpt_epoch_{args.teacher_epochs}.pth"
        self.results = self.out / "results.jsonl"
        self.lock = threading.Lock()
        self.env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}

    def check_settings(self) -> None:
        settings = {key: getattr(self.args, key) for key in SETTINGS}
        path = self.out / "study.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved != settings:
                changed = ", ".join(f"{key} {saved.get(key)} -> {value}" for key, value in settings.items() if saved.get(key) != value)
                sys.exit(f"{self.out} holds a study with other settings ({changed}); pass another --out")
        self.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=1))

    def module(self, name: str, argv: list[str], log: Path) -> float:
        """Run `python -m name argv` from the repository root (its code, not an installed copy),
        output to `log`; the wall time in seconds. CalledProcessError names the log."""
        log.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with open(log, "w") as stream:
            code = subprocess.call([sys.executable, "-m", name, *argv], cwd=REPO, env=self.env, stdout=stream, stderr=subprocess.STDOUT)
        if code:
            raise RuntimeError(f"python -m {name} exited with {code}; see {log}")
        return time.perf_counter() - started

    def done(self) -> dict[tuple[str, str, int], dict]:
        if not self.results.is_file():
            return {}
        rows = [json.loads(line) for line in self.results.read_text().splitlines() if line.strip()]
        return {(row["method"], row["curriculum"], row["seed"]): row for row in rows}

    def record(self, row: dict) -> None:
        with self.lock, open(self.results, "a") as stream:
            stream.write(json.dumps(row) + "\n")

    def recipe(self, epochs: int, seed: int, save: Path) -> list[str]:
        return ["--data-folder", str(self.data), "--epochs", str(epochs), "--lr-decay-epochs", scaled_decays(epochs), "--seed", str(seed),
                "--save", str(save), "--save-freq", str(epochs), "--log-interval", "0"]

    def write_data(self) -> None:
        a = self.args
        if (self.data / "cifar-100-python" / "meta").is_file():
            return
        self.module("standard_classification.data", [
            "--data-folder", str(self.data), "--synthetic", "--classes", str(a.classes), "--superclasses", str(a.superclasses),
            "--train-per-class", str(a.train_per_class), "--test-per-class", str(a.test_per_class), "--class-strength", str(a.class_strength),
            "--noise", str(a.noise), "--seed", str(a.data_seed),
        ], self.out / "logs" / "data.log")

    def train_teacher(self) -> float:
        if not self.teacher_ckpt.is_file():
            shutil.rmtree(self.teacher_dir, ignore_errors=True)
            wall = self.module("standard_classification.train_teacher", ["--model", self.args.teacher, *self.recipe(self.args.teacher_epochs, 0, self.teacher_dir)],
                               self.out / "logs" / "teacher.log")
            print(f"teacher {self.args.teacher}: {self.args.teacher_epochs} epochs in {wall:.0f} s", flush=True)
        return final_accuracy(self.teacher_ckpt)

    def ranking(self, seed: int) -> Path:
        """POCL's ranking for the students of `seed`: the student as initialised by that seed and
        the teacher score every training image (CE and forward KL at T = 4, fused by RRF);
        rank_difficulty reuses a matching one."""
        path = self.out / "rankings" / f"seed{seed}" / "ranking.jsonl"
        self.module("standard_classification.rank_difficulty", [
            "--teacher-ckpt", str(self.teacher_ckpt), "--model", self.args.student, "--seed", str(seed), "--data-folder", str(self.data),
            "--kd-temperature", "4", "--ranking", str(path),
        ], self.out / "logs" / f"rank_seed{seed}.log")
        return path

    def run(self, method: str, curriculum: str, seed: int, flags: tuple[str, ...]) -> dict:
        """One student run from scratch (a partial one is discarded); its results.jsonl row."""
        name = f"{method}_{curriculum}"
        save = self.out / "runs" / name / f"seed{seed}"
        shutil.rmtree(save, ignore_errors=True)
        recipe = self.recipe(self.args.epochs, seed, save)
        if method == "scratch":
            module, argv = "standard_classification.train_teacher", ["--model", self.args.student, *recipe]
        else:
            module = "standard_classification.train_student"
            argv = ["--teacher-ckpt", str(self.teacher_ckpt), "--model", self.args.student, "--distill", method, *flags, *recipe]
            if curriculum == "pocl":
                argv += ["--curriculum", "pocl", "--ranking", str(self.out / "rankings" / f"seed{seed}" / "ranking.jsonl"), "--num-stages", "4"]
        log = self.out / "logs" / f"{name}_seed{seed}.log"
        wall = self.module(module, argv, log)
        log.unlink()  # the run's own log.txt keeps its epochs
        shutil.rmtree(save / "checkpoints", ignore_errors=True)  # resumable state: a cut-off run starts again instead
        best = json.loads((save / "best.json").read_text())
        row = {"method": method, "curriculum": curriculum, "seed": seed, "top1": final_accuracy(save / f"ckpt_epoch_{self.args.epochs}.pth"),
               "best_top1": best["best_accuracy"], "wall_s": round(wall, 1), "command": f"python -m {module} {' '.join(argv)}"}
        self.record(row)
        return row


def final_accuracy(checkpoint: Path) -> float:
    """The test top-1 (%) a zoo checkpoint was saved with (that of its epoch)."""
    return float(torch.load(checkpoint, map_location="cpu", weights_only=True)["accuracy"])


def cli_methods() -> tuple[list[str], list[str]]:
    """(train_student's --distill names, the ones --curriculum pocl applies to), from the code."""
    code = "import json; from standard_classification.train_student import METHODS, POCL_TERMS; print(json.dumps([list(METHODS), list(POCL_TERMS)]))"
    names, pocl = json.loads(subprocess.check_output([sys.executable, "-c", code], cwd=REPO, text=True, stderr=subprocess.DEVNULL).strip().splitlines()[-1])
    return names, pocl


def mean_std(values: list[float], runs: int) -> str:
    """'mean ± sample std', with the count where fewer than the `runs` planned are in."""
    if not values:
        return "not run"
    spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.2f}{spread}" + ("" if len(values) == runs else f" (n={len(values)} of {runs})")


def table(study: Study, teacher_accuracy: float, names: list[str], pocl: list[str], flags: dict) -> str:
    a, rows = study.args, study.done()
    seeds = a.seeds

    def values(method: str, curriculum: str) -> list[float]:
        return [rows[(method, curriculum, seed)]["top1"] for seed in seeds if (method, curriculum, seed) in rows]

    def walls(method: str, curriculum: str) -> list[float]:
        return [rows[(method, curriculum, seed)]["wall_s"] for seed in seeds if (method, curriculum, seed) in rows]

    scratch = values("scratch", "no")
    lines = [
        f"- Data: synthetic CIFAR-format, {a.classes} classes in {a.superclasses} superclasses (class strength {a.class_strength}, noise {a.noise}, "
        f"seed {a.data_seed}), {a.classes * a.train_per_class} training / {a.classes * a.test_per_class} test images.",
        f"- Teacher: {a.teacher}, {a.teacher_epochs} epochs (decays after {scaled_decays(a.teacher_epochs)}), seed 0: top-1 {teacher_accuracy:.2f}.",
        f"- Student: {a.student}, {a.epochs} epochs, SGD lr 0.05 ×0.1 after epochs {scaled_decays(a.epochs)}, batch 64, weight decay 5e-4; "
        f"POCL: 4 stages, ranking by the seed's initialised student (CE + KL at T 4, RRF), T from T/2 and the KD weight from 0.7×.",
        f"- Top-1 (%) on the test set after the last epoch, mean ± sample std over seeds {', '.join(map(str, seeds))}; "
        f"wall: seconds per run, {a.workers} runs at a time, {a.threads} thread(s) each.",
        "",
        "| method | curriculum | top-1 | Δ vs scratch | Δ pocl − no | wall (s) |",
        "|---|---|---:|---:|---:|---:|",
    ]

    def line(label: str, method: str, curriculum: str) -> str:
        got = values(method, curriculum)
        delta = f"{statistics.mean(got) - statistics.mean(scratch):+.2f}" if got and scratch and method != "scratch" else ""
        base = values(method, "no")
        vs_none = f"{statistics.mean(got) - statistics.mean(base):+.2f}" if curriculum == "pocl" and got and base else ""
        wall = f"{statistics.mean(walls(method, curriculum)):.0f}" if got else ""
        return f"| {label} | {curriculum} | {mean_std(got, len(seeds))} | {delta} | {vs_none} | {wall} |"

    lines.append(line("scratch (CE only)", "scratch", "no"))
    for method in names:
        lines.append(line(method, method, "no"))
        if method in pocl:
            lines.append(line(method, method, "pocl"))
    skipped = [name for name in names if name not in pocl]
    lines += ["", f"`--curriculum pocl` is not run for {', '.join(skipped)}: it schedules the KD temperature, which they do not have "
                  "(train_student refuses the combination).", "", "| method | flags | from |", "|---|---|---|"]
    for method in names:
        method_args, source = flags[method]
        lines.append(f"| {method} | `{' '.join(method_args)}` | {source} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    study = Study(args)
    study.check_settings()
    all_names, all_pocl = cli_methods()
    flags = method_flags(args.epochs, args.classes * args.train_per_class)
    missing = sorted(set(all_names) - set(flags))
    if missing:
        sys.exit(f"no launcher settings for --distill {', '.join(missing)}: add them to method_flags")
    unknown = sorted(set(args.methods or []) - set(all_names))
    if unknown:
        sys.exit(f"unknown --methods {', '.join(unknown)}; valid: {', '.join(all_names)}")
    names = [name for name in all_names if args.methods is None or name in args.methods]
    pocl = [name for name in names if name in all_pocl]

    study.write_data()
    done = study.done()
    jobs = [("scratch", "no", seed) for seed in args.seeds]
    jobs += [(method, curriculum, seed) for seed in args.seeds for method in names for curriculum in (("no", "pocl") if method in pocl else ("no",))]
    todo = [job for job in jobs if job not in done]
    print(f"{len(jobs)} runs, {len(jobs) - len(todo)} already in {study.results}; {len(todo)} to go, {args.workers} at a time", flush=True)
    counter = iter(range(1, len(todo) + 1))

    def one(job: tuple[str, str, int]) -> None:
        method, curriculum, seed = job
        try:
            row = study.run(method, curriculum, seed, flags.get(method, ((), ""))[0])
        except Exception as error:  # one failed run must not stop the others; a rerun retries it
            print(f"[{next(counter)}/{len(todo)}] {method} {curriculum} seed {seed}: FAILED: {error}", flush=True)
            return
        print(f"[{next(counter)}/{len(todo)}] {method} {curriculum} seed {seed}: top-1 {row['top1']:.2f} (best {row['best_top1']:.2f}) "
              f"in {row['wall_s']:.0f} s", flush=True)

    with ThreadPoolExecutor(args.workers) as pool:
        teacher: Future = pool.submit(study.train_teacher)  # the scratch runs do not need it: they fill the other workers meanwhile
        scratch = [pool.submit(one, job) for job in todo if job[0] == "scratch"]
        teacher_accuracy = teacher.result()
        rest = [job for job in todo if job[0] != "scratch"]
        for ranking in [pool.submit(study.ranking, seed) for seed in sorted({seed for _, curriculum, seed in rest if curriculum == "pocl"})]:
            ranking.result()
        for future in [*scratch, *[pool.submit(one, job) for job in rest]]:
            future.result()

    print(f"\nstudy finished in {time.perf_counter() - started:.0f} s (this invocation)\n")
    text = table(study, teacher_accuracy, names, pocl, flags)
    (study.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
