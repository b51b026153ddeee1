"""Throughput of a whole LLM distillation training step: teacher forward, student forward and
backward, AdamW step, for sft / kd / ab / srkl at equal batch, on the fused chunked loss path and
on the full-logits path. Models are GPT-2s built from configs with random weights (speed does not
depend on the weights), so nothing is downloaded.

    python benchmarks/bench_train_step.py                      # CPU preset: small GPT-2s, 1,024 tokens a step
    python benchmarks/bench_train_step.py --preset cuda-base-large --device cuda
    python benchmarks/bench_train_step.py --preset cuda-base-xl --device cuda --dtype bfloat16

Presets (student / teacher, batch x length):
  cpu-small        2 x 256 wide / 4 x 512 wide layers, V = 50,257, 4 x 256 tokens
  cuda-base-large  GPT-2 base (12 x 768) / GPT-2 large (36 x 1280), 8 x 512 tokens
  cuda-base-xl     GPT-2 base (12 x 768) / GPT-2 XL (48 x 1600), 8 x 512 tokens
Times are the median of the timed steps after warm-up (which includes any torch.compile of the
fused loss); on CUDA with CUDA synchronisation and `torch.cuda.max_memory_allocated`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

PRESETS = {
    "cpu-small": {"student": (2, 256, 4), "teacher": (4, 512, 8), "batch": 4, "length": 256},
    "cuda-base-large": {"student": (12, 768, 12), "teacher": (36, 1280, 20), "batch": 8, "length": 512},
    "cuda-base-xl": {"student": (12, 768, 12), "teacher": (48, 1600, 25), "batch": 8, "length": 512},
}
METHODS = {
    "sft": (None, {}),
    "kd": ("fkl", {}),
    "ab": ("ab", {"alpha": 0.2, "beta": 0.7}),
    "srkl": ("srkl", {"lam": 0.1}),
}
VOCAB = 50257


def gpt2(layers: int, width: int, heads: int, length: int, dtype: torch.dtype, device: torch.device):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=layers, n_embd=width, n_head=heads, n_positions=length, vocab_size=VOCAB)
    return GPT2LMHeadModel(config).to(device=device, dtype=dtype)


def batch(size: int, length: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tokens; the first half of each row is the prompt (no loss), as in instruction data."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB, (size, length), generator=generator)
    labels = torch.roll(input_ids, -1, dims=1)
    labels[:, : length // 2] = -100
    labels[:, -1] = -100
    return {"input_ids": input_ids.to(device), "attention_mask": torch.ones_like(input_ids).to(device), "labels": labels.to(device)}


def measure(method: str, fused: bool, preset: dict, device: torch.device, dtype: torch.dtype, steps: int, warmup: int) -> dict:
    from distillation_llm.objective import Objective

    torch.manual_seed(0)
    name, params = METHODS[method]
    student = gpt2(*preset["student"], preset["length"], dtype, device).train()
    teacher = None if name is None else gpt2(*preset["teacher"], preset["length"], dtype, device).eval().requires_grad_(False)
    objective = Objective(student, teacher, name, params, kd_ratio=1.0 if name else 0.0, temperature=1.0, vocab=VOCAB, full_logits=not fused)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    data = batch(preset["batch"], preset["length"], device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        loss, _ = objective.forward_train(data)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - started)
    seconds = statistics.median(times)
    tokens = preset["batch"] * preset["length"]
    row = {"method": method, "path": "fused" if objective.fused else "full logits", "s_per_step": seconds, "tokens_per_s": tokens / seconds}
    row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    del objective, student, teacher, optimizer
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=PRESETS, default="cpu-small", help="model and batch shapes (see the module docstring)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="weights' dtype (default: float32 on CPU, bfloat16 on CUDA)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {', '.join(METHODS)}")
    parser.add_argument("--paths", default="fused,full", help="comma-separated: fused (chunked LM-head loss) and/or full (full logits)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per row (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (compilation, allocator)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    preset = PRESETS[args.preset]
    rows = []
    for method in args.methods.split(","):
        for path in args.paths.split(","):
            if method == "sft" and path == "full" and "fused" in args.paths:
                continue  # cross-entropy alone: the path matters little, one row is enough
            rows.append(measure(method, path == "fused", preset, device, dtype, args.steps, args.warmup))
            print(f"  done {method} {path}: {rows[-1]['s_per_step']:.2f} s/step", flush=True)
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    tokens = preset["batch"] * preset["length"]
    print(f"\nTraining step, preset {args.preset} ({tokens} tokens a step), {str(dtype).replace('torch.', '')}, {where}, median of {args.steps}\n")
    print("| method | path | s/step | tokens/s | peak GiB | vs kd (same path) |")
    print("|---|---|---:|---:|---:|---:|")
    kd_time = {row["path"]: row["s_per_step"] for row in rows if row["method"] == "kd"}
    for row in rows:
        ratio = f"{row['s_per_step'] / kd_time[row['path']]:.2f}x" if row["path"] in kd_time else "-"
        peak = f"{row['peak_gib']:.2f}" if device.type == "cuda" else "-"
        print(f"| {row['method']} | {row['path']} | {row['s_per_step']:.3f} | {row['tokens_per_s']:.0f} | {peak} | {ratio} |")


if __name__ == "__main__":
    main()
