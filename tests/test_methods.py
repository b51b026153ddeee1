"""The --type registry (distillation_llm/methods.py): what each method trains on and with, how it
selects best/, the POCL kd-ratio bug, and activation checkpointing of the student."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from abkd.losses import DIVERGENCES
from abkd.pocl import BabyStepScheduler
from distillation_llm import arguments, finetune, methods
from distillation_llm.data import InstructionCollator
from distillation_llm.methods import METHODS, Method, lookup
from distillation_llm.models import enable_gradient_checkpointing, load_causal_lm
from distillation_llm.objective import Objective
from distillation_llm.sources import AdaptiveThreshold, DatasetSource, StudentGeneratedSource


@pytest.fixture(scope="module")
def processed_dir(tmp_path_factory, tiny_tokenizer_dir):
    from conftest import write_instruction_jsonl

    from tools import process_data_dolly

    root = tmp_path_factory.mktemp("methods-data")
    write_instruction_jsonl(root / "raw" / "raw.jsonl", 24, seed=5)
    out = root / "processed"
    process_data_dolly.main([
        "--data-dir", str(root / "raw"), "--processed-data-dir", str(out), "--model-path", str(tiny_tokenizer_dir),
        "--max-prompt-length", "48", "--max-length", "64", "--dev-num", "4",
    ])
    return out


def _parse(processed_dir, student, teacher, *extra):
    argv = ["--model-path", str(student), "--data-dir", str(processed_dir), "--save", "unused", "--total-iters", "1",
            "--max-length", "64", "--max-prompt-length", "48", "--do-valid"]
    return arguments.parse_args(argv + (["--teacher-model-path", str(teacher)] if teacher else []) + [str(x) for x in extra])


# What the papers and reference launchers specify, written independently of the registry.
EXPECTED = {
    # --type: (divergence, batch source)
    "sft": (None, "dataset"), "init": (None, "dataset"), "kd": ("fkl", "dataset"), "fkl": ("fkl", "dataset"),
    "rkl": ("rkl", "dataset"), "jsd": ("jsd", "dataset"), "tvd": ("tvd", "dataset"), "sfkl": ("sfkl", "dataset"),
    "srkl": ("srkl", "dataset"), "ab": ("ab", "dataset"), "seqkd": (None, "seqkd"), "imitkd": ("fkl", "student"),
    "gkd": ("jsd", "student"), "distillm": ("srkl", "adaptive"), "adaptive-srkl": ("srkl", "adaptive"),
    "adaptive-sfkl": ("sfkl", "adaptive"),
    # POCL's tempered losses (POCL finetune.py get_distil_loss): the divergence at --temperature-kld.
    "tfkl": ("fkl", "dataset"), "trkl": ("rkl", "dataset"), "tjsd": ("jsd", "dataset"), "ttvd": ("tvd", "dataset"),
    "tsfkl": ("sfkl", "dataset"), "tsrkl": ("srkl", "dataset"),
    # DistiLLM's own names (DistiLLM finetune.py): lm = SFT, mixed-fkl = ImitKD's path, mixed-jsd = GKD's.
    "lm": (None, "dataset"), "mixed-fkl": ("fkl", "student"), "mixed-jsd": ("jsd", "student"),
    # MiniLLM: reverse KL by policy gradient on rounds of teacher-mixed rollouts (DistiLLM train_minillm.py).
    "minillm": ("rkl", "rollout"),
}


def test_distillm_type_names_train_what_distillm_trains(processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir):
    """DistiLLM's `--type mixed-jsd --mixed-alpha a` is our GKD and `mixed-fkl --mixed-alpha 1.0`
    our ImitKD: same divergence parameters and the same probability of student samples."""
    args = _parse(processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, "--type", "mixed-jsd", "--mixed-alpha", "0.3")
    assert METHODS["mixed-jsd"].params(args) == METHODS["gkd"].params(args) == {"lam": pytest.approx(0.9)}
    assert METHODS["mixed-jsd"].student_probability(args) == 0.3 == METHODS["gkd"].student_probability(args)
    args = _parse(processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, "--type", "mixed-fkl", "--mixed-alpha", "1.0")
    assert METHODS["mixed-fkl"].student_probability(args) == 1.0 == METHODS["imitkd"].student_probability(args)
    assert METHODS["lm"].divergence is None and METHODS["lm"].source == "dataset"


def test_every_type_has_its_divergence_and_source():
    assert set(METHODS) == set(EXPECTED)
    for name, (divergence, source) in EXPECTED.items():
        assert (METHODS[name].divergence, METHODS[name].source) == (divergence, source), name
        assert divergence is None or divergence in DIVERGENCES


def test_unknown_and_excluded_types_are_errors_naming_the_valid_ones():
    with pytest.raises(ValueError, match=r"--type kl: supported values are sft, init, kd, .*, tsrkl$"):
        lookup("kl")
    with pytest.raises(ValueError, match=r"--type substring-of-kd"):
        lookup("substring-of-kd")  # exact match only


def test_divergence_parameters_follow_the_flags(processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir):
    args = _parse(processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, "--type", "gkd", "--gkd-beta", "0.3")
    assert METHODS["gkd"].params(args) == {"lam": pytest.approx(0.7)}  # GKD's beta is the teacher's weight
    args = _parse(processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, "--type", "tsrkl", "--skew-alpha", "0.25")
    assert METHODS["tsrkl"].params(args) == {"lam": 0.25}
    args = _parse(processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, "--type", "ab", "--ab_alpha", "0.2", "--ab_beta", "0.7")
    assert METHODS["ab"].params(args) == {"alpha": 0.2, "beta": 0.7}


@pytest.mark.parametrize(
    "kind, extra, source, probability",
    [
        ("kd", (), DatasetSource, None),
        ("imitkd", (), StudentGeneratedSource, 1.0),
        ("gkd", ("--mixed-alpha", "0.35"), StudentGeneratedSource, 0.35),
        ("distillm", ("--init-threshold", "0.2"), StudentGeneratedSource, 0.2),
        ("distillm", ("--no-student-gen",), DatasetSource, None),  # the reference without --student-gen
        ("gkd", ("--student-gen",), StudentGeneratedSource, 0.5),
    ],
)
def test_build_source_asks_the_registry(processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, tiny_tokenizer, kind, extra, source, probability):
    args = _parse(processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, "--type", kind, "--gen-top-p", "0.9", *extra)
    built = finetune.build_source(args, InstructionCollator(tiny_tokenizer.pad_token_id, 64), None, tiny_tokenizer)
    assert type(built) is source
    if probability is not None:
        assert built.probability == pytest.approx(probability)
        assert built.settings.top_p == 0.9 and built.settings.max_new_tokens == 64 - 48
        assert isinstance(built.threshold, AdaptiveThreshold) == (kind == "distillm")


def test_selection_rule_per_method():
    metrics = {"rougeL": 30.0, "valid_loss": 2.0}
    assert finetune.selection(metrics, SimpleNamespace(type="kd", eval_gen=True)) == ("rougeL", -30.0)
    assert finetune.selection(metrics, SimpleNamespace(type="init", eval_gen=True)) == ("valid_loss", 2.0)
    assert finetune.selection(metrics, SimpleNamespace(type="kd", eval_gen=False)) == ("valid_loss", 2.0)


def test_a_new_method_is_one_row(monkeypatch, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, tiny_tokenizer):
    row = Method("half-rkl", "reverse KL on student samples half of the time", "rkl", source="student", student_probability=lambda args: 0.5)
    monkeypatch.setitem(methods.METHODS, "half-rkl", row)
    args = _parse(processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, "--type", "half-rkl")
    built = finetune.build_source(args, InstructionCollator(tiny_tokenizer.pad_token_id, 64), None, tiny_tokenizer)
    assert isinstance(built, StudentGeneratedSource) and built.probability == 0.5
    assert "--type half-rkl" in row.describe(args) and "rkl()" in row.describe(args)
    with pytest.raises(SystemExit):  # its requirements come with it: a teacher
        _parse(processed_dir, tiny_gpt2_dir, None, "--type", "half-rkl")


def test_student_sampling_needs_room_only_when_it_samples(processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, capsys):
    with pytest.raises(SystemExit):
        _parse(processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, "--type", "gkd", "--max-prompt-length", "64")
    assert "--type gkd samples up to --max-length - --max-prompt-length new tokens" in capsys.readouterr().err
    args = _parse(processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, "--type", "gkd", "--max-prompt-length", "64", "--no-student-gen")
    assert METHODS["gkd"].source_kind(args.student_gen) == "dataset"


# ---------------------------------------------------------------------------------------------
# POCL stages set temperature and kd-ratio through the objective; without a divergence the loss
# stays plain cross-entropy (it used to become 0.3 x CE on the full-logits path).
# ---------------------------------------------------------------------------------------------


def _batch(tokenizer):
    rows = [
        {"id": 0, "prompt_ids": tokenizer("Name a colour.")["input_ids"], "response_ids": tokenizer(" Red, like a fox.")["input_ids"] + [tokenizer.eos_token_id]},
        {"id": 1, "prompt_ids": tokenizer("Count to three:")["input_ids"], "response_ids": tokenizer(" one two three")["input_ids"] + [tokenizer.eos_token_id]},
    ]
    return InstructionCollator(tokenizer.pad_token_id, 64)(rows)


@pytest.mark.parametrize("fused", [True, False])
def test_pocl_stage_keeps_sft_a_plain_cross_entropy(tiny_gpt2_dir, tiny_tokenizer, fused):
    student = load_causal_lm(tiny_gpt2_dir)
    objective = Objective(student, None, None, {}, kd_ratio=0.5, temperature=1.0, vocab=len(tiny_tokenizer), full_logits=not fused)
    curriculum = BabyStepScheduler(list(range(8)), num_stages=4, kd_ratio=(0.7, 1.0), temperature=(1.0, 2.0))
    data = SimpleNamespace(select=lambda: None)
    finetune.apply_stage(curriculum, objective, data, SimpleNamespace(info=lambda message: None))
    batch = _batch(tiny_tokenizer)
    with torch.no_grad():
        loss = objective(batch).loss
        logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        ce = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
    assert objective.kd_ratio == 0.0 and objective.temperature == 1.0
    torch.testing.assert_close(loss, ce, rtol=1e-5, atol=1e-6)


def test_pocl_stage_sets_a_divergence_objective(tiny_gpt2_dir, tiny_gpt2_teacher_dir, tiny_tokenizer):
    student, teacher = load_causal_lm(tiny_gpt2_dir), load_causal_lm(tiny_gpt2_teacher_dir)
    objective = Objective(student, teacher, "fkl", {}, kd_ratio=0.5, temperature=1.0, vocab=len(tiny_tokenizer))
    curriculum = BabyStepScheduler(list(range(8)), num_stages=4, kd_ratio=(0.7, 1.0), temperature=(1.0, 2.0))
    curriculum.stage = 3
    finetune.apply_stage(curriculum, objective, SimpleNamespace(select=lambda: None), SimpleNamespace(info=lambda message: None))
    assert (objective.kd_ratio, objective.temperature) == (1.0, 2.0)
    out = objective(_batch(tiny_tokenizer))
    torch.testing.assert_close(out.loss, out.kd)  # kd-ratio 1: the divergence alone


def test_arguments_are_not_changed_by_a_run(processed_dir, tiny_gpt2_dir):
    args = _parse(processed_dir, tiny_gpt2_dir, None, "--type", "sft")
    before = dict(vars(args))
    finetune.main([
        "--model-path", str(tiny_gpt2_dir), "--data-dir", str(processed_dir), "--save", str(processed_dir.parent / "run"),
        "--total-iters", "1", "--max-length", "64", "--max-prompt-length", "48", "--do-train", "--type", "sft", "--batch-size", "2",
    ])
    assert dict(vars(arguments.parse_args([
        "--model-path", str(tiny_gpt2_dir), "--data-dir", str(processed_dir), "--save", "unused", "--total-iters", "1",
        "--max-length", "64", "--max-prompt-length", "48", "--do-valid", "--type", "sft",
    ]))) == before
    import json

    written = json.loads((processed_dir.parent / "run" / "args.json").read_text())
    assert "zero_stage" not in written and "divergence" not in written
    assert written["method"] == {"divergence": None, "params": {}, "source": "dataset", "selection": "rougeL"}


# ---------------------------------------------------------------------------------------------
# --gradient-checkpointing
# ---------------------------------------------------------------------------------------------


def _loss_and_grads(model, batch, checkpointing: bool, seed: int = 0):
    if checkpointing:
        enable_gradient_checkpointing(model)
    model.train()
    objective = Objective(model, None, None, {}, kd_ratio=0.0, temperature=1.0, vocab=model.get_output_embeddings().weight.shape[0])
    torch.manual_seed(seed)
    loss = objective(batch).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _layer_forwards(model) -> list[int]:
    """Counts forward calls of each block's attention (recomputation in backward calls it again;
    hooks on the block itself stay outside transformers' checkpoint)."""
    from distillation_llm.models import unwrap

    counts = []
    blocks = [module for module in unwrap(model).modules() if type(module).__name__ in ("GPT2Block", "OPTDecoderLayer", "LlamaDecoderLayer")]
    for block in blocks:
        counts.append(0)
        index = len(counts) - 1
        attention = block.self_attn if hasattr(block, "self_attn") else block.attn
        attention.register_forward_hook(lambda module, inputs, output, index=index: counts.__setitem__(index, counts[index] + 1))
    return counts


@pytest.mark.parametrize("family", ["tiny_gpt2_dir", "tiny_opt_dir", "tiny_llama_dir"])
def test_gradient_checkpointing_recomputes_and_matches(request, family, tiny_tokenizer):
    directory = request.getfixturevalue(family)
    batch = _batch(tiny_tokenizer)
    plain, checkpointed = load_causal_lm(directory), load_causal_lm(directory)
    loss, grads = _loss_and_grads(plain, batch, checkpointing=False)
    counts = _layer_forwards(checkpointed)
    loss_ckpt, grads_ckpt = _loss_and_grads(checkpointed, batch, checkpointing=True)
    assert counts and all(count == 2 for count in counts), counts  # forward, then recomputed in backward
    torch.testing.assert_close(loss_ckpt, loss)
    assert grads_ckpt.keys() == grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_gradient_checkpointing_with_dropout_replays_the_masks(tiny_gpt2_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    batch = _batch(tiny_tokenizer)
    def load():
        return AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir, resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)

    loss, grads = _loss_and_grads(load(), batch, checkpointing=False, seed=7)
    loss_ckpt, grads_ckpt = _loss_and_grads(load(), batch, checkpointing=True, seed=7)
    loss_other_seed, _ = _loss_and_grads(load(), batch, checkpointing=True, seed=8)
    assert torch.isfinite(loss_ckpt) and all(torch.isfinite(g).all() for g in grads_ckpt.values())
    assert loss_other_seed != loss_ckpt  # dropout is on
    torch.testing.assert_close(loss_ckpt, loss)
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_load_student_enables_checkpointing_in_train_mode(processed_dir, tiny_opt_dir):
    args = _parse(processed_dir, tiny_opt_dir, None, "--type", "sft", "--gradient-checkpointing")
    student = finetune.load_student(args, torch.device("cpu"))
    assert student.training and student.is_gradient_checkpointing
    args = _parse(processed_dir, tiny_opt_dir, None, "--type", "sft")
    assert not finetune.load_student(args, torch.device("cpu")).is_gradient_checkpointing


# The safe range of the alpha-beta divergence (issue #14) -------------------------------------------


def _flat_logits(seed: int, positions: int = 32, vocab: int = 400, scale: float = 1.0):
    """Logits like a fresh student's: no token near 10% of the mass."""
    import torch

    logits = torch.randn(positions, vocab, generator=torch.Generator().manual_seed(seed)) * scale
    assert torch.softmax(logits, -1).max() < 0.1
    return logits


@pytest.mark.parametrize("alpha,beta", [(1e6, 0.0), (50.0, 50.0), (-30.0, 0.7), (0.5, -1e4)])
def test_refused_ab_parameters_give_a_loss_of_exactly_zero(alpha, beta):
    from abkd.losses import divergence
    from distillation_llm.methods import AB_REFUSE_PROBABILITY, ab_resolution, check_ab_params

    assert ab_resolution(alpha, beta) >= AB_REFUSE_PROBABILITY
    with pytest.raises(ValueError, match="cannot tell apart probabilities below"):
        check_ab_params(alpha, beta)
    student, teacher = _flat_logits(0), _flat_logits(1)
    assert divergence("ab", student, teacher, alpha=alpha, beta=beta).abs().max().item() == 0.0


@pytest.mark.parametrize("alpha,beta", [(0.2, 0.7), (1.0, 0.0), (0.0, 1.0), (-1.0, 2.0), (2.0, -1.0), (-1.0, -1.0), (2.0, 2.0), (0.0, 0.0)])
def test_paper_range_is_safe_and_nonzero(alpha, beta):
    from abkd.losses import divergence
    from distillation_llm.methods import AB_WARN_PROBABILITY, ab_resolution, check_ab_params

    assert ab_resolution(alpha, beta) <= AB_WARN_PROBABILITY and check_ab_params(alpha, beta) is None
    values = divergence("ab", _flat_logits(0), _flat_logits(1), alpha=alpha, beta=beta)
    assert values.isfinite().all() and (values > 0).all()


@pytest.mark.parametrize("alpha,beta", [(-5.0, 0.0), (10.0, 0.0), (4.0, 4.0)])
def test_between_safe_and_refused_warns(alpha, beta):
    from distillation_llm.methods import ab_resolution, check_ab_params

    message = check_ab_params(alpha, beta)
    assert message is not None and f"below {ab_resolution(alpha, beta):.2g}" in message


# ---------------------------------------------------------------------------------------------
# POCL's tempered losses (POCL pocl/losses.py): tem_forward_kl, tem_skewed_reverse_kl and
# tem_js_distance end in `distil_loss * temperature_kld ** 2`; tem_reverse_kl,
# tem_skewed_forward_kl and tem_tv_distance do not.
# ---------------------------------------------------------------------------------------------


def _pocl_reference(kind, student_logits, teacher_logits, mask, temperature, lam):
    """POCL's formulas, transcribed: token means over `mask` of its per-position sums."""
    log_q = F.log_softmax(student_logits / temperature, -1)
    log_p = F.log_softmax(teacher_logits / temperature, -1)
    q, p = log_q.exp(), log_p.exp()

    def mean(x):
        return (x * mask).sum() / mask.sum()

    if kind == "tfkl":  # -sum p log q: the cross-entropy, KL + H(p), times T^2
        return mean(-(p * log_q).sum(-1)) * temperature**2
    if kind == "trkl":
        return mean((q * (log_q - log_p)).sum(-1))
    if kind == "tsfkl":  # mixed = lam p + (1 - lam) q
        return mean(-(p * torch.log(lam * p + (1 - lam) * q)).sum(-1))
    log_m = torch.log((1 - lam) * p + lam * q)
    if kind == "tsrkl":
        return mean((q * (log_q - log_m)).sum(-1)) * temperature**2
    if kind == "tjsd":
        return (lam * mean((q * (log_q - log_m)).sum(-1)) + (1 - lam) * mean((p * (log_p - log_m)).sum(-1))) * temperature**2
    raise ValueError(kind)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("kind", ["tfkl", "tsrkl", "tjsd", "trkl", "tsfkl"])
def test_pocl_tempered_losses_scale_by_t_squared_as_pocl(kind, fused, tiny_gpt2_dir, tiny_gpt2_teacher_dir, tiny_tokenizer):
    method = METHODS[kind]
    assert method.temperature_squared == (kind in ("tfkl", "tsrkl", "tjsd"))
    described = method.describe(SimpleNamespace(kd_ratio=0.5, kd_temperature=2.0, curriculum="none", student_gen=None, skew_alpha=0.1, jsd_lam=0.9))
    assert ("* T^2," in described) == method.temperature_squared
    lam, temperature, kd_ratio = 0.9, 2.0, 0.5
    params = {} if method.divergence in ("fkl", "rkl") else {"lam": lam}  # our lam is POCL's in each mixture
    student, teacher = load_causal_lm(tiny_gpt2_dir).eval(), load_causal_lm(tiny_gpt2_teacher_dir).eval()
    objective = Objective(
        student, teacher, method.divergence, params, kd_ratio=kd_ratio, temperature=temperature, vocab=len(tiny_tokenizer),
        full_logits=not fused, temperature_squared=method.temperature_squared,
    )
    batch = _batch(tiny_tokenizer)
    out = objective(batch)
    vocab = len(tiny_tokenizer)  # the common vocabulary; the tiny models pad their heads
    student_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[..., :vocab].float()
    with torch.no_grad():
        teacher_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[..., :vocab].float()
    mask = (batch["labels"] != -100).float()
    reference = _pocl_reference(kind, student_logits, teacher_logits, mask, temperature, lam)
    ce = F.cross_entropy(student_logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
    if kind in ("tfkl", "tsfkl"):  # ours is the KL: POCL's cross-entropy less (T^2 x) the teacher's entropy, same gradient
        log_p = F.log_softmax(teacher_logits / temperature, -1)
        entropy = ((-(log_p.exp() * log_p).sum(-1)) * mask).sum() / mask.sum() * (temperature**2 if kind == "tfkl" else 1.0)
        torch.testing.assert_close(out.kd, (reference - entropy).detach(), rtol=1e-4, atol=1e-5)
    else:
        torch.testing.assert_close(out.kd, reference.detach(), rtol=1e-4, atol=1e-5)
    # The weighted total and its gradient are POCL's (1 - kd_ratio) CE + kd_ratio x distil_loss.
    expected = (1 - kd_ratio) * ce + kd_ratio * reference
    student.zero_grad()
    out.loss.backward()
    ours = student.get_output_embeddings().weight.grad.clone()
    student.zero_grad()
    expected.backward()
    theirs = student.get_output_embeddings().weight.grad
    torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-6)
    if kind not in ("tfkl", "tsfkl"):
        torch.testing.assert_close(out.loss, expected.detach(), rtol=1e-4, atol=1e-5)
