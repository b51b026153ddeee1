"""Memory and time of the fused chunked distillation loss against the naive full-logits path.

Each implementation runs in a fresh process. After set-up (hidden states, LM head, teacher logits)
and one warm-up forward+backward (which includes any torch.compile compilation, reported
separately), the process's resident set size is the floor; the kernel's peak-RSS counter is then
reset (/proc/self/clear_refs) and the timed repetitions run. "above floor" is the peak during the
timed runs minus that floor: the working memory of the loss itself. Times are the best of the
repetitions, which is robust to other jobs sharing the cores.

    python benchmarks/bench_fused_loss.py                       # the full table (about 15 min on 2 cores)
    python benchmarks/bench_fused_loss.py --tokens 1024 --reps 2
    python benchmarks/bench_fused_loss.py --device cuda --json fused.json   # the three H200 shapes, bf16
    python benchmarks/bench_fused_loss.py --head ~/.cache/abkd/checkpoints/smollm2-135m-instruct --tokens 1024,4096,8192
                                            # a real head: SmolLM2's tied 49,152 x 576 (tools.real_checkpoint)

Rows: the naive path (`divergence` then `masked_mean` on full logits, autograd backward); the
fused path at several chunk sizes (compiled) and once eager; the bare matmul floor (student
logits, grad wrt hidden, grad wrt weight: the three matmuls alone, unchunked); and Liger-Kernel's
`LigerFusedLinearJSDLoss` when importable (`pip install --no-deps liger-kernel` on a CPU-only
machine). Liger computes JSD, its closest loss to ours, and takes the teacher as hidden states +
head, so its time includes one more matmul (the teacher's logits) than the other rows.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

H, V = 768, 50257
ALPHA, BETA = 0.2, 0.7
TARGET_TOKENS = 4096


def _rss_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def real_head(path: str):
    """The LM head weight [V, H] of the checkpoint at `path` (tied or not), as float32."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)
    weight = model.get_output_embeddings().weight.detach().clone()
    del model
    gc.collect()
    return weight


def worker(impl: str, tokens: int, chunk_size: int, reps: int, head: str | None = None) -> dict:
    import torch

    from abkd.fused import fused_linear_divergence
    from abkd.losses import divergence, masked_mean

    torch.manual_seed(0)
    if head:  # a real head for student and teacher: a layer-dropped student starts with the teacher's
        teacher_weight = real_head(head)
        hidden_size = teacher_weight.shape[1]
        student_weight = teacher_weight.clone().requires_grad_()
    else:
        hidden_size = H
        student_weight = (torch.randn(V, H) * 0.05).requires_grad_()
        teacher_weight = torch.randn(V, H) * 0.05
    student_hidden = (torch.randn(tokens, hidden_size) * 0.5).requires_grad_()
    teacher_hidden = torch.randn(tokens, hidden_size) * 0.5
    teacher_logits = teacher_hidden @ teacher_weight.T
    labels = torch.randint(0, teacher_weight.shape[0], (tokens,))
    setup_rss = _rss_mib("VmRSS")

    if impl == "naive":

        def step():
            student_logits = student_hidden @ student_weight.T
            masked_mean(divergence("ab", student_logits, teacher_logits, alpha=ALPHA, beta=BETA)).backward()

    elif impl in ("fused", "fused-eager"):

        def step():
            fused_linear_divergence(
                "ab", student_hidden, student_weight, teacher_logits=teacher_logits, chunk_size=chunk_size,
                compile=impl == "fused", alpha=ALPHA, beta=BETA,
            ).loss.backward()

    elif impl == "matmul-floor":

        def step():
            with torch.no_grad():
                student_logits = student_hidden @ student_weight.T
                _ = student_logits @ student_weight
                _ = student_logits.T @ student_hidden

    elif impl == "liger-jsd":
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        loss_fn = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=0.5, compiled=True, chunk_size=chunk_size)

        def step():
            loss_fn(student_hidden, student_weight, teacher_hidden, teacher_weight, labels).backward()

    else:
        raise ValueError(f"unknown implementation {impl}")

    def run() -> float:
        student_hidden.grad = student_weight.grad = None
        start = time.perf_counter()
        step()
        return time.perf_counter() - start

    warmup = run()
    gc.collect()
    floor = _rss_mib("VmRSS")
    _reset_peak_rss()
    times = [run() for _ in range(reps)]
    peak = _rss_mib("VmHWM")
    return {
        "impl": impl, "tokens": tokens, "chunk": chunk_size, "setup_mib": setup_rss, "floor_mib": floor,
        "peak_mib": peak, "above_mib": peak - floor, "time_s": min(times), "median_s": statistics.median(times), "warmup_s": warmup,
    }


# The shapes measured on an H200 (shared/gpu/README.md): N x H x V of GPT-2, Llama-3 8B, Qwen2.5 1.5B.
CUDA_PRESETS = {"gpt2": (8192, 768, 50257), "llama3": (8192, 4096, 128256), "qwen2.5": (16384, 2048, 151936)}


def cuda_rows(preset: str, impls: list[str], reps: int) -> list[dict]:
    """Each implementation in this process on CUDA, bf16 hidden states and heads, teacher as
    hidden states + head: median of `reps` forward+backward timed with CUDA events after one
    warm-up (compilation), peak = torch.cuda.max_memory_allocated above the inputs."""
    import torch

    from abkd.fused import fused_linear_divergence
    from abkd.losses import divergence, masked_mean

    tokens, hidden_size, vocab = CUDA_PRESETS[preset]
    device, dtype = torch.device("cuda"), torch.bfloat16
    generator = torch.Generator(device=device).manual_seed(0)

    def randn(*shape, scale):
        return (torch.randn(*shape, device=device, generator=generator) * scale).to(dtype)

    student_hidden = randn(tokens, hidden_size, scale=0.5).requires_grad_()
    student_weight = randn(vocab, hidden_size, scale=0.05).requires_grad_()
    teacher_hidden, teacher_weight = randn(tokens, hidden_size, scale=0.5), randn(vocab, hidden_size, scale=0.05)
    labels = torch.randint(0, vocab, (tokens,), device=device, generator=generator)

    def naive():
        teacher_logits = teacher_hidden @ teacher_weight.T
        masked_mean(divergence("ab", student_hidden @ student_weight.T, teacher_logits, alpha=ALPHA, beta=BETA)).backward()

    def fused():
        fused_linear_divergence("ab", student_hidden, student_weight, teacher_hidden=teacher_hidden, teacher_weight=teacher_weight,
                                alpha=ALPHA, beta=BETA).loss.backward()

    def floor():  # the four bf16 matmuls: student and teacher logits, grad of hidden, grad of head
        with torch.no_grad():
            logits = student_hidden @ student_weight.T
            _ = teacher_hidden @ teacher_weight.T
            _ = logits @ student_weight
            _ = logits.T @ student_hidden

    steps = {"naive": naive, "fused": fused, "matmul-floor": floor}
    if "liger-jsd" in impls and _liger_available():
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        liger = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=0.5, compiled=True)
        steps["liger-jsd"] = lambda: liger(student_hidden, student_weight, teacher_hidden, teacher_weight, labels).backward()
    rows = []
    for impl in impls:
        if impl not in steps:
            continue
        try:
            student_hidden.grad = student_weight.grad = None
            steps[impl]()  # warm-up, compilation
            torch.cuda.synchronize()
            student_hidden.grad = student_weight.grad = None
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(reps):
                student_hidden.grad = student_weight.grad = None
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                steps[impl]()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            rows.append({"preset": preset, "impl": impl, "ms": statistics.median(times), "peak_gib": (torch.cuda.max_memory_allocated() - base) / 2**30})
        except Exception as error:  # e.g. out of memory for the naive path: report, go on
            rows.append({"preset": preset, "impl": impl, "error": f"{type(error).__name__}: {str(error)[:80]}"})
            torch.cuda.empty_cache()
    return rows


def cuda_main(presets: list[str], impls: list[str], reps: int, json_path: str | None) -> None:
    import torch

    rows = [row for preset in presets for row in cuda_rows(preset, impls, reps)]
    print(f"\n{torch.cuda.get_device_name()}, bf16, ab(alpha={ALPHA}, beta={BETA}), forward+backward, median of {reps}")
    print("| N x H x V | implementation | ms | peak GiB | vs floor |")
    print("|---|---|---:|---:|---:|")
    floors = {row["preset"]: row["ms"] for row in rows if row["impl"] == "matmul-floor" and "ms" in row}
    for row in rows:
        shape = " x ".join(map(str, CUDA_PRESETS[row["preset"]]))
        if "error" in row:
            print(f"| {shape} | {row['impl']} | {row['error']} | | |")
            continue
        ratio = f"{row['ms'] / floors[row['preset']]:.2f}x" if row["preset"] in floors else "-"
        print(f"| {shape} | {row['impl']} | {row['ms']:.1f} | {row['peak_gib']:.2f} | {ratio} |")
    if json_path:
        with open(json_path, "w") as handle:
            json.dump(rows, handle, indent=2)


def _run_worker(impl: str, tokens: int, chunk: int, reps: int, head: str | None) -> dict | str:
    command = [sys.executable, __file__, "--worker", impl, "--tokens", str(tokens), "--chunk-sizes", str(chunk), "--reps", str(reps)]
    command += ["--head", head] if head else []
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"failed: {last[:80]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _liger_available() -> bool:
    try:
        import liger_kernel.chunked_loss  # noqa: F401
    except Exception:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default="1024,2048,4096,8192", help="comma-separated token counts N")
    parser.add_argument("--chunk-sizes", default="256,512,1024", help="comma-separated fused chunk sizes")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per row (CPU: 3, the best is reported; CUDA: 5, the median)")
    parser.add_argument("--max-naive-gib", type=float, default=18.0, help="skip naive runs projected above this memory")
    parser.add_argument("--rows", default="naive,matmul-floor,fused,fused-eager,liger-jsd", help="comma-separated implementations to run")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cpu: the table above, each row in a fresh process; cuda: the --presets")
    parser.add_argument("--presets", default=",".join(CUDA_PRESETS), help=f"with --device cuda: comma-separated subset of {', '.join(CUDA_PRESETS)}")
    parser.add_argument("--json", help="with --device cuda: also write the rows to this JSON file")
    parser.add_argument("--head", help="CPU: a local checkpoint whose LM head (H and V from it) serves as student and teacher head, e.g. the real SmolLM2 (tools.real_checkpoint)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device == "cuda":
        cuda_main(args.presets.split(","), args.rows.split(","), args.reps or 5, args.json)
        return
    args.reps = args.reps or 3
    token_counts = [int(n) for n in args.tokens.split(",")]
    chunks = [int(c) for c in args.chunk_sizes.split(",")]

    if args.worker:
        print(json.dumps(worker(args.worker, token_counts[0], chunks[0], args.reps, args.head)))
        return

    from abkd.fused import DEFAULT_CHUNK_SIZE

    rows = []
    naive_mib_per_token = None
    plan = []
    for tokens in token_counts:
        plan.append(("naive", tokens, 0))
        plan.append(("matmul-floor", tokens, 0))
        plan += [("fused", tokens, c) for c in chunks]
        plan.append(("fused-eager", tokens, DEFAULT_CHUNK_SIZE))
        if _liger_available():
            plan.append(("liger-jsd", tokens, 1024))
    plan = [item for item in plan if item[0] in args.rows.split(",")]
    for impl, tokens, chunk in plan:
        if impl == "naive" and naive_mib_per_token and naive_mib_per_token * tokens > args.max_naive_gib * 1024:
            result = f"skipped: projected {naive_mib_per_token * tokens / 1024:.0f} GiB"
        else:
            result = _run_worker(impl, tokens, chunk, args.reps, args.head)
        if impl == "naive" and isinstance(result, dict):
            naive_mib_per_token = result["above_mib"] / tokens
        rows.append((impl, tokens, chunk, result))
        summary = result if isinstance(result, str) else f"{result['time_s']:.2f} s"
        print(f"  done {impl} N={tokens} chunk={chunk}: {summary}", file=sys.stderr)

    shape = f"the LM head of {args.head}" if args.head else f"H={H}, V={V}"
    print(f"\n{shape}, float32, divergence ab(alpha={ALPHA}, beta={BETA}), forward+backward, {os.cpu_count()} CPUs")
    print(f"{'implementation':<25}{'N':>6}{'peak RSS MiB':>14}{'above floor MiB':>17}{'best s':>10}{'warm-up s':>11}")
    for impl, tokens, chunk, result in rows:
        label = f"{impl} (chunk {chunk})" if impl.startswith("fused") or impl == "liger-jsd" else impl
        if isinstance(result, str):
            print(f"{label:<25}{tokens:>6}  {result}")
        else:
            print(f"{label:<25}{tokens:>6}{result['peak_mib']:>14.0f}{result['above_mib']:>17.0f}{result['time_s']:>10.2f}{result['warmup_s']:>11.1f}")

    def find(impl, tokens, chunk=None):
        for r_impl, r_tokens, r_chunk, result in rows:
            if r_impl == impl and r_tokens == tokens and (chunk is None or r_chunk == chunk) and isinstance(result, dict):
                return result
        return None

    naive, floor = find("naive", TARGET_TOKENS), find("matmul-floor", TARGET_TOKENS)
    fused = find("fused", TARGET_TOKENS, DEFAULT_CHUNK_SIZE)
    if naive and floor and fused:
        print(f"\nTargets at N={TARGET_TOKENS}, fused chunk {DEFAULT_CHUNK_SIZE} (the default):")
        memory_ratio = fused["above_mib"] / naive["above_mib"]
        time_ratio = fused["time_s"] / floor["time_s"]
        print(f"  memory above floor {memory_ratio:.1%} of naive (target <= 10%): {'met' if memory_ratio <= 0.10 else 'NOT met'}")
        print(f"  time {time_ratio:.2f}x the matmul floor (target <= 1.25x): {'met' if time_ratio <= 1.25 else 'NOT met'}")
        print(f"  time {fused['time_s']:.2f} s vs naive {naive['time_s']:.2f} s (target: below): {'met' if fused['time_s'] < naive['time_s'] else 'NOT met'}")


if __name__ == "__main__":
    main()
