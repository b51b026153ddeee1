"""Training throughput of CIFAR-100 distillation: images per second of a student step (teacher
forward, student forward + backward, SGD step through the DeepSpeed engine, batched augmentation)
at batch 64, on synthetic uint8 images, on the available device, in fp32 as the recipes (or
`--precision bf16`: autocast with fp32 weights and BatchNorm).

    python benchmarks/bench_cifar.py                          # the default pairs, kd and ab
    python benchmarks/bench_cifar.py --pairs resnet56:resnet20 --distill ab dkd --steps 20

Rows with teacher "-" train the student alone (cross-entropy), the cost distillation is compared
with. Times are the median over `--steps` timed steps after `--warmup` untimed ones.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from abkd import engine as E
from abkd.classification import LogitDistillation, build_distill_loss, fp32_deepspeed_config
from standard_classification.data import augment, normalize
from standard_classification.models import build_model
from standard_classification.train import DEFAULT_DS_CONFIG


def measure(teacher_name: str | None, student_name: str, distill: str | None, batch: int, steps: int, warmup: int, device, precision: str) -> dict:
    # As the CIFAR recipes: fp32 weights (DeepSpeed's half precision off), bf16 only as autocast.
    config = fp32_deepspeed_config(E.load_deepspeed_config(DEFAULT_DS_CONFIG, micro_batch_size=batch, gradient_accumulation_steps=1))
    student = build_model(student_name).to(device)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    engine = E.initialize(student, optimizer, None, config)
    objective = LogitDistillation(engine, ce_weight=1.0, precision=precision)
    if teacher_name is not None:
        teacher = build_model(teacher_name).to(device=device).eval().requires_grad_(False)
        options = dict(temperature=4.0, ab_alpha=0.5, ab_beta=0.5, tckd_weight=1.0, nckd_weight=8.0, dkd_warmup=20)
        objective = LogitDistillation(engine, ce_weight=1.0, kd_ratio=0.9, teacher=teacher, distill=build_distill_loss(distill, **options), precision=precision)
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 100, (batch,), device=device)
    generator = torch.Generator().manual_seed(0)
    engine.train()
    times = []
    for step in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        loss, _ = objective((normalize(augment(images, generator)), labels))
        engine.backward(loss)
        engine.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - started)
    seconds = statistics.median(times)
    return {"teacher": teacher_name or "-", "student": student_name, "distill": distill or "ce", "dtype": precision,
            "ms_per_step": 1000 * seconds, "images_per_s": batch / seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", nargs="+", default=["resnet56:resnet20", "resnet32x4:resnet8x4"], help="TEACHER:STUDENT zoo names")
    parser.add_argument("--distill", nargs="+", default=["kd", "ab"], help="distillation terms to time for each pair")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    parser.add_argument("--threads", type=int, help="torch intra-op threads on CPU (default: torch's choice)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="fp32 (the recipes' default) or bf16 autocast with fp32 weights and BatchNorm")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = E.init_distributed()
    rows = []
    for pair in args.pairs:
        teacher, student = pair.split(":")
        rows.append(measure(None, student, None, args.batch_size, args.steps, args.warmup, device, args.precision))
        for distill in args.distill:
            rows.append(measure(teacher, student, distill, args.batch_size, args.steps, args.warmup, device, args.precision))
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\nCIFAR training step, batch {args.batch_size}, {name}, median of {args.steps} steps\n")
    print("| teacher | student | loss | dtype | ms/step | images/s |")
    print("|---|---|---|---|---:|---:|")
    for row in rows:
        print(f"| {row['teacher']} | {row['student']} | {row['distill']} | {row['dtype']} | {row['ms_per_step']:.1f} | {row['images_per_s']:.0f} |")


if __name__ == "__main__":
    main()
