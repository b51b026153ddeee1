"""ZeRO-3 partitions the student's LM head across ranks; the fused loss must still be used, and
give what ZeRO-1 (whole parameters on every rank) gives: the same loss and the same gradients.

The engines are real DeepSpeed engines (gloo on CPU, NCCL where a GPU is visible). With
`stage3_param_persistence_threshold` 0 every parameter, the head included, is partitioned and
released after each module's forward, so reading the head weight outside the head's own forward
would find an empty tensor.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import multiprocess_env
from deepspeed.utils import safe_get_full_grad

from abkd import engine as E
from distillation_llm.data import InstructionCollator
from distillation_llm.models import load_causal_lm
from distillation_llm.objective import Objective

ZERO3 = {"stage": 3, "stage3_param_persistence_threshold": 0, "stage3_prefetch_bucket_size": 0}


def _config(zero: dict) -> dict:
    return {
        "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "train_batch_size": 2 * E.world_size(),
        "zero_optimization": zero, "zero_allow_untested_optimizer": True, "steps_per_print": 10**9,
    }  # fmt: skip


def _batch(tokenizer, offset: int = 0) -> dict:
    texts = [("Name a colour.", " Red, like a fox."), ("Count to three:", " one two three"), ("Say hello.", " Hello there, friend.")]
    rows = [
        {"id": i, "prompt_ids": tokenizer(p)["input_ids"], "response_ids": tokenizer(r)["input_ids"] + [tokenizer.eos_token_id]}
        for i, (p, r) in enumerate(texts[offset : offset + 2])
    ]
    return InstructionCollator(tokenizer.pad_token_id, 64)(rows)


def loss_and_gradients(student_dir, teacher_dir, vocab: int, zero: dict, divergence: str | None, batch: dict, full_logits: bool = False):
    """One forward and backward of the objective through a DeepSpeed engine with `zero`; returns
    the loss, its parts and every parameter's full gradient (gathered across ranks)."""
    device = E.init_distributed()
    torch.manual_seed(0)
    student = load_causal_lm(student_dir).eval()  # eval: no dropout, so both stages see the same network
    teacher = load_causal_lm(teacher_dir).eval().requires_grad_(False).to(device) if divergence else None
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    engine = E.initialize(student, optimizer, None, _config(zero))
    params = {"alpha": 0.2, "beta": 0.7} if divergence == "ab" else {}
    objective = Objective(
        engine.module, teacher, divergence, params, kd_ratio=0.6, temperature=2.0, vocab=vocab,
        partitioned_parameters=zero["stage"] == 3, full_logits=full_logits,
    )
    assert objective.fused != full_logits
    out = objective({key: value.to(device) for key, value in batch.items()})
    engine.backward(out.loss)
    gradients = {name: safe_get_full_grad(param).detach().float().cpu().clone() for name, param in engine.module.named_parameters()}
    return out.loss.detach().cpu(), out.kd.cpu(), out.ce.cpu(), gradients


@pytest.mark.parametrize("divergence", ["ab", None])
def test_zero3_fused_loss_equals_zero1(tiny_gpt2_dir, tiny_gpt2_teacher_dir, tiny_tokenizer, divergence):
    batch, vocab = _batch(tiny_tokenizer), len(tiny_tokenizer)
    stage1 = loss_and_gradients(tiny_gpt2_dir, tiny_gpt2_teacher_dir, vocab, {"stage": 1}, divergence, batch)
    stage3 = loss_and_gradients(tiny_gpt2_dir, tiny_gpt2_teacher_dir, vocab, ZERO3, divergence, batch)
    full = loss_and_gradients(tiny_gpt2_dir, tiny_gpt2_teacher_dir, vocab, {"stage": 1}, divergence, batch, full_logits=True)
    for reference in (stage1, full):
        for got, want in zip(stage3[:3], reference[:3]):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert stage3[3].keys() == reference[3].keys()
        for name, gradient in reference[3].items():
            torch.testing.assert_close(stage3[3][name], gradient, rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
    head = "lm_head.weight" if "lm_head.weight" in stage3[3] else "transformer.wte.weight"
    assert stage3[3][head].abs().sum() > 0


WORKER = """
import os, sys, torch
sys.path.insert(0, {tests!r})
from test_zero3 import ZERO3, loss_and_gradients, _batch
from transformers import AutoTokenizer
from abkd import engine as E
tokenizer = AutoTokenizer.from_pretrained({student!r})
stage = int(sys.argv[1])
batch = _batch(tokenizer, offset=int(os.environ["RANK"]))  # each rank its own rows, as data parallelism does
loss, kd, ce, gradients = loss_and_gradients({student!r}, {teacher!r}, len(tokenizer), ZERO3 if stage == 3 else {{"stage": 1}}, "ab", batch)
losses = [None] * E.world_size()
torch.distributed.all_gather_object(losses, float(loss))
if E.rank() == 0:
    torch.save({{"losses": losses, "gradients": gradients}}, sys.argv[2])
"""


def test_two_process_zero3_equals_zero1(tmp_path, tiny_gpt2_dir, tiny_gpt2_teacher_dir):
    """Two ranks, each holding half of every parameter under ZeRO-3: per-rank losses and the
    averaged gradients equal ZeRO-1's."""
    from pathlib import Path

    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent), student=str(tiny_gpt2_dir), teacher=str(tiny_gpt2_teacher_dir)))
    results = {}
    for stage in (1, 3):
        out = tmp_path / f"stage{stage}.pt"
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(E._free_port()), str(script), str(stage), str(out)]
        done = subprocess.run(command, env=multiprocess_env(2), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-4000:]
        results[stage] = torch.load(out, weights_only=True)
    torch.testing.assert_close(torch.tensor(results[3]["losses"]), torch.tensor(results[1]["losses"]), rtol=1e-5, atol=1e-6)
    assert results[3]["losses"][0] != results[3]["losses"][1]  # the ranks saw different rows
    for name, gradient in results[1]["gradients"].items():
        torch.testing.assert_close(results[3]["gradients"][name], gradient, rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
