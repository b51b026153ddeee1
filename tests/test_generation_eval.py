"""Generation, ROUGE-L / exact match, and the evaluation CLI on a tiny GPT-2 (CPU, no downloads)."""

import argparse
import csv
import json
import math
import os
import shlex
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import SHARED_EVAL, write_instruction_jsonl
from llama_like_tokenizer import train_llama_like_tokenizer
from rouge_score import rouge_scorer

from distillation_llm import evaluate as E
from distillation_llm import generation as G
from distillation_llm.generation import GenerationSettings, generate
from distillation_llm.instructions import load_instruction_jsonl
from distillation_llm.metrics import exact_match, max_over_references, normalize_answer, rouge_l, score_predictions

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [
    "Write a poem about the sun",
    "one two",
    "List the colors of a large red bird and a small green fish in the river",
    "a",
    "Explain the number seven to a happy dog",
    "Describe the moon",
]


def needs_shared(*sets):
    missing = [s for s in sets if not (SHARED_EVAL / s / "valid.jsonl").is_file()]
    return pytest.mark.skipif(bool(missing), reason=f"shared evaluation data absent: {missing}")


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir, local_files_only=True)


def steered_model(tiny_gpt2_dir, token_logits: dict[int, float]):
    """The tiny GPT-2 with every final hidden state replaced by a fixed unit vector u (ln_f weight 0,
    bias u) and the tied embedding of each token in `token_logits` set to logit * u: at every step,
    whatever the prompt, those tokens get the given logits and all others a logit near 0."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir, local_files_only=True)
    with torch.no_grad():
        u = torch.nn.functional.normalize(torch.randn(model.config.n_embd, generator=torch.Generator().manual_seed(0)), dim=0)
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(u)
        for token, logit in token_logits.items():
            model.transformer.wte.weight[token] = logit * u
    return model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models gain nothing from intra-op threads, which make them crawl on shared CPUs.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def the_sayer_dir(tmp_path_factory, tiny_gpt2_dir, tiny_tokenizer):
    """A saved model that samples " the" and EOS a third of the time each, so its answers overlap the
    references of `the_references` (ROUGE-L > 0) and are sometimes just " the" (exact match with "The.")."""
    (the,) = tiny_tokenizer(" the", add_special_tokens=False)["input_ids"]
    model = steered_model(tiny_gpt2_dir, {the: 6.0, tiny_tokenizer.eos_token_id: 6.0})
    out = tmp_path_factory.mktemp("the-sayer")
    model.save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    return out


def the_references(path: Path, n: int, seed: int) -> list[dict]:
    rows = write_instruction_jsonl(path, n, seed)
    for k, row in enumerate(rows):
        row["output"] = "The." if k % 2 else f"the {row['output']} the end"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return rows


# Metrics ----------------------------------------------------------------------------------------


def _perturb(text: str) -> str:
    words = text.split()
    kept = [w for i, w in enumerate(words) if i % 3 != 1]
    return " ".join(kept[len(kept) // 2 :] + ["indeed"] + kept[: len(kept) // 2])


@needs_shared("dolly")
def test_rouge_l_matches_rouge_score_on_dolly():
    examples, _ = load_instruction_jsonl(SHARED_EVAL / "dolly" / "valid.jsonl")
    outputs = [e.references[0] for e in examples[:31]]
    references = outputs[:30]
    predictions = [_perturb(r) for r in outputs[:15]] + outputs[16:31]  # then: the next line's output
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
    got = [rouge_l(pred, ref) for pred, ref in zip(predictions, references)]
    assert got == pytest.approx(expected, abs=1e-12)
    assert 0.2 < min(got[:15]) and max(got[:15]) < 1.0  # perturbed answers overlap partly
    assert rouge_l(references[0], references[0]) == 1.0
    scores = score_predictions(predictions, [[r] for r in references])
    assert scores["n"] == 30
    assert scores["rougeL"] == pytest.approx(100 * sum(expected) / 30)


@needs_shared("dolly")
def test_the_best_reference_counts():
    examples, _ = load_instruction_jsonl(SHARED_EVAL / "dolly" / "valid.jsonl")
    target, other = examples[3].references[0], examples[7].references[0]
    prediction = _perturb(target)
    assert max_over_references(rouge_l, prediction, [other, target]) == rouge_l(prediction, target) > rouge_l(prediction, other)
    scores = score_predictions([prediction, other], [[other, target], [target, other]])
    assert scores["rougeL"] == pytest.approx(50 * (rouge_l(prediction, target) + 1.0))
    assert scores["exact_match"] == 50.0  # `other` is its own second reference
    with pytest.raises(ValueError, match="at least one reference"):
        max_over_references(rouge_l, prediction, [])


@needs_shared("sinst")
def test_sinst_reference_lists():
    examples, _ = load_instruction_jsonl(SHARED_EVAL / "sinst" / "valid.jsonl")
    multi = next(e for e in examples if len(e.references) > 1)
    best = multi.references[-1]
    assert max_over_references(exact_match, best.upper() + "!", multi.references) == 1.0
    assert max_over_references(rouge_l, best, multi.references) == 1.0


def test_exact_match_normalisation_keeps_articles():
    # DistiLLM/ABKD rouge_metric.py: SQuAD normalisation without its removal of articles.
    assert exact_match("the cat", "cat") == 0.0
    assert exact_match("The Cat!", "the cat") == 1.0
    assert exact_match("  a DOG.", "a dog") == 1.0
    assert exact_match("cats", "cat") == 0.0
    assert normalize_answer("Theatre, then   the END") == "theatre then the end"
    assert score_predictions(["The Cat!", "dog"], [["cat"], ["a cat", "dog"]])["exact_match"] == 50.0


# Generation -------------------------------------------------------------------------------------


def test_greedy_is_deterministic_and_batches_keep_order(gpt2, tiny_tokenizer):
    settings = GenerationSettings(max_new_tokens=10)
    batched = generate(gpt2, tiny_tokenizer, PROMPTS, settings, batch_size=4, progress=False)
    again = generate(gpt2, tiny_tokenizer, PROMPTS, settings, batch_size=4, progress=False)
    one_by_one = [generate(gpt2, tiny_tokenizer, [p], settings, batch_size=1, progress=False) for p in PROMPTS]
    assert batched.token_ids == again.token_ids
    assert batched.token_ids == [out.token_ids[0] for out in one_by_one]
    assert batched.texts == [out.texts[0] for out in one_by_one]
    assert batched.texts == tiny_tokenizer.batch_decode(batched.token_ids, skip_special_tokens=True)
    assert all(0 < len(ids) <= 10 for ids in batched.token_ids)
    assert len(set(map(tuple, batched.token_ids))) > 1  # prompts were not mixed up into one answer


def test_sampling_follows_the_seed(gpt2, tiny_tokenizer):
    def sample(seed):
        settings = GenerationSettings(do_sample=True, temperature=3.0, max_new_tokens=12, seed=seed)
        return generate(gpt2, tiny_tokenizer, PROMPTS, settings, batch_size=4, progress=False).token_ids

    first = sample(1)
    assert sample(1) == first
    assert sample(2) != first
    greedy = generate(gpt2, tiny_tokenizer, PROMPTS, GenerationSettings(max_new_tokens=12), batch_size=4, progress=False)
    assert greedy.token_ids != first


def test_max_new_tokens_and_token_id_prompts(gpt2, tiny_tokenizer):
    ids = [tiny_tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    settings = GenerationSettings(do_sample=True, temperature=2.0, max_new_tokens=3)
    from_ids = generate(gpt2, tiny_tokenizer, ids, settings, batch_size=2, progress=False)
    from_text = generate(gpt2, tiny_tokenizer, PROMPTS, settings, batch_size=2, progress=False)
    assert from_ids.token_ids == from_text.token_ids
    assert all(len(t) <= 3 for t in from_ids.token_ids)


def test_long_prompts_keep_their_start(gpt2, tiny_tokenizer):
    # DistiLLM's PromptDataset: `prompt = data[:max_prompt_length]`.
    ids = [tiny_tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    limit = 5
    settings = GenerationSettings(max_new_tokens=6)
    out = generate(gpt2, tiny_tokenizer, PROMPTS, settings, max_prompt_length=limit, progress=False)
    assert out.prompt_truncated == sum(len(i) > limit for i in ids) > 0
    kept_starts = generate(gpt2, tiny_tokenizer, [i[:limit] for i in ids], settings, max_prompt_length=limit, progress=False)
    assert kept_starts.prompt_truncated == 0
    assert out.token_ids == kept_starts.token_ids
    assert G._prompt_ids(tiny_tokenizer, [list(range(10, 20))], 4)[0] == [[10, 11, 12, 13]]


def test_prompt_special_tokens(tmp_path, tiny_tokenizer, monkeypatch):
    """DistiLLM's evaluate_main.py encodes prompts with `tokenizer.encode(prompt)`: a BOS first for a
    tokenizer that adds one (OPT, LLaMA), nothing for GPT-2; the BOS survives truncation."""
    from transformers import AutoTokenizer

    llama_like = AutoTokenizer.from_pretrained(train_llama_like_tokenizer(tmp_path / "tokenizer"))
    bare = llama_like("Name a star.", add_special_tokens=False)["input_ids"]
    (with_bos,), _ = G._prompt_ids(llama_like, ["Name a star."], 256, add_special_tokens=True)
    assert with_bos == [llama_like.bos_token_id] + bare
    assert G._prompt_ids(llama_like, ["Name a star."], 256)[0] == [bare]  # training-data encoding
    (cut,), truncated = G._prompt_ids(llama_like, ["Name a star."], 2, add_special_tokens=True)
    assert cut == [llama_like.bos_token_id, bare[0]] and truncated == 1
    gpt2_style = tiny_tokenizer("Name a star.", add_special_tokens=False)["input_ids"]
    assert G._prompt_ids(tiny_tokenizer, ["Name a star."], 256, add_special_tokens=True)[0] == [gpt2_style]

    # The evaluation CLI asks for them by default; `finetune --eval-gen` (evaluate_model's default) does not.
    seen = []
    monkeypatch.setattr(E, "generate", lambda *a, **kw: seen.append(kw["add_special_tokens"]) or G.GenerationOutput(["x"], [[1]], 0))
    E.evaluate_model(None, tiny_tokenizer, [("p", ["x"])], GenerationSettings(), 1, 8)
    args = E.build_parser().parse_args(["--model-path", "m", "--data-dir", "d", "--save", "s"])
    off = E.build_parser().parse_args(["--model-path", "m", "--data-dir", "d", "--save", "s", "--no-prompt-special-tokens"])
    assert seen == [False] and args.prompt_special_tokens and not off.prompt_special_tokens


def test_no_repeat_ngram_size(tiny_gpt2_dir, tiny_tokenizer):
    """A model that always says " the": with DistiLLM's evaluation default (6) the six-fold " the"
    may be said once, so the seventh token must differ, and no 6-gram of prompt + answer repeats."""
    (the,) = tiny_tokenizer(" the", add_special_tokens=False)["input_ids"]
    parrot = steered_model(tiny_gpt2_dir, {the: 60.0})
    prompt = "Name a star."
    assert E.EVAL_GENERATION.no_repeat_ngram_size == 6
    settings = GenerationSettings(**{**vars(E.EVAL_GENERATION), "max_new_tokens": 20})
    (answer,) = generate(parrot, tiny_tokenizer, [prompt], settings, progress=False).token_ids
    assert answer[:6] == [the] * 6 and answer[6] != the
    text = tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"] + answer
    grams = [tuple(text[i : i + 6]) for i in range(len(text) - 5)]
    assert len(grams) == len(set(grams)) and len(answer) == 20
    unbanned = GenerationSettings(**{**vars(settings), "no_repeat_ngram_size": 0})
    assert generate(parrot, tiny_tokenizer, [prompt], unbanned, progress=False).token_ids == [[the] * 20]


def test_eos_stops_generation(tiny_gpt2_dir, tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    certain = steered_model(tiny_gpt2_dir, {eos: 60.0})
    for settings in (GenerationSettings(max_new_tokens=20), GenerationSettings(do_sample=True, max_new_tokens=20)):
        out = generate(certain, tiny_tokenizer, PROMPTS, settings, batch_size=3, progress=False)
        assert out.token_ids == [[] for _ in PROMPTS] and out.texts == ["" for _ in PROMPTS]

    # P(EOS) ~ 0.3 per step: answers of random length, each cut before its EOS, padding dropped.
    likely = steered_model(tiny_gpt2_dir, {eos: 5.1})
    out = generate(likely, tiny_tokenizer, PROMPTS * 3, GenerationSettings(do_sample=True, max_new_tokens=40), batch_size=6, progress=False)
    lengths = [len(ids) for ids in out.token_ids]
    assert max(lengths) < 40 and len(set(lengths)) > 2
    assert all(eos not in ids for ids in out.token_ids)


def test_model_state_and_tokenizer_restored(gpt2, tiny_tokenizer):
    gpt2.train()
    side = tiny_tokenizer.padding_side
    generate(gpt2, tiny_tokenizer, PROMPTS[:2], GenerationSettings(max_new_tokens=2), progress=False)
    assert gpt2.training and tiny_tokenizer.padding_side == side
    gpt2.eval()


def test_too_long_for_the_model_is_an_error(gpt2, tiny_tokenizer):
    with pytest.raises(ValueError, match="exceeds the model's 256 positions"):
        generate(gpt2, tiny_tokenizer, PROMPTS, GenerationSettings(max_new_tokens=300), progress=False)


def test_resolve_backend(monkeypatch, gpt2, tiny_tokenizer):
    monkeypatch.setattr(G, "_vllm_importable", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert G.resolve_backend("auto") == "vllm"
    assert G.resolve_backend("vllm") == "vllm"
    assert G.resolve_backend("hf") == "hf"
    with pytest.raises(ValueError, match="needs a model path"):
        generate(gpt2, tiny_tokenizer, PROMPTS, GenerationSettings(), backend="vllm", progress=False)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert G.resolve_backend("auto") == "hf"
    with pytest.raises(RuntimeError, match="no CUDA device"):
        G.resolve_backend("vllm")
    monkeypatch.setattr(G, "_vllm_importable", lambda: False)
    with pytest.raises(RuntimeError, match="vllm package is not installed"):
        G.resolve_backend("vllm")
    with pytest.raises(ValueError, match="valid: auto, hf, vllm"):
        G.resolve_backend("sglang")


def test_generation_flags():
    parser = argparse.ArgumentParser()
    G.add_generation_args(parser)
    settings = G.settings_from_args(parser.parse_args(["--top-p", "0.9", "--max-new-tokens", "7"]), seed=3)
    assert settings == GenerationSettings(do_sample=False, top_p=0.9, max_new_tokens=7, seed=3, no_repeat_ngram_size=0)
    evaluation = E.build_parser().parse_args(["--model-path", "m", "--data-dir", "d", "--save", "s"])
    assert G.settings_from_args(evaluation, 10) == GenerationSettings(
        do_sample=True, top_k=0, top_p=1.0, temperature=1.0, seed=10, no_repeat_ngram_size=6
    )
    lifted = E.build_parser().parse_args(["--model-path", "m", "--data-dir", "d", "--save", "s", "--no-repeat-ngram-size", "0"])
    assert lifted.no_repeat_ngram_size == 0
    with pytest.raises(ValueError, match="no_repeat_ngram_size"):
        GenerationSettings(no_repeat_ngram_size=-1)
    with pytest.raises(RuntimeError, match="no_repeat_ngram_size"):
        G.resolve_backend("vllm", no_repeat_ngram_size=6)
    greedy = E.build_parser().parse_args(["--model-path", "m", "--data-dir", "d", "--save", "s", "--no-do-sample"])
    assert not greedy.do_sample
    with pytest.raises(ValueError, match="temperature"):
        GenerationSettings(temperature=0.0)


# Evaluation CLI ---------------------------------------------------------------------------------


def _answers(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _mean_std(values):
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def test_evaluate_writes_answers_and_consistent_results(tmp_path, the_sayer_dir, capsys):
    data = tmp_path / "data"
    rows = {name: the_references(data / name / "valid.jsonl", 6, seed) for name, seed in (("dolly", 0), ("vicuna", 1))}
    save = tmp_path / "out"
    seeds = [1, 2]
    E.main([
        "--model-path", str(the_sayer_dir), "--data-dir", str(data), "--eval-sets", "dolly,vicuna", "--seeds", "1,2",
        "--max-examples", "4", "--max-new-tokens", "16", "--eval-batch-size", "3", "--save", str(save), "--no-progress",
    ])
    name = the_sayer_dir.name
    results = json.loads((save / name / "results.json").read_text())
    assert (save / "args.json").is_file() and not (save / "comparison.csv").exists()
    per_seed_avg = {metric: [0.0, 0.0] for metric in E.METRICS}
    exact_matches = []
    for set_name in ("dolly", "vicuna"):
        runs = []
        for seed in seeds:
            answers = _answers(save / name / set_name / f"seed{seed}" / "answers.jsonl")
            assert [a["line"] for a in answers] == [1, 2, 3, 4]
            assert [a["references"] for a in answers] == [[row["output"]] for row in rows[set_name][:4]]
            assert set(answers[0]) == {"line", "prompt", "generation", "references", "rougeL", "exact_match", "length", "stopped"}
            for a in answers:
                assert a["rougeL"] == pytest.approx(rouge_l(a["generation"], a["references"][0]))
                assert a["length"] <= 16
                assert a["stopped"] == (a["length"] < 16)  # stopped by EOS, not by the token budget
            runs.append({
                "rougeL": 100 * sum(a["rougeL"] for a in answers) / 4,
                "exact_match": 100 * sum(a["exact_match"] for a in answers) / 4,
                "length": sum(a["length"] for a in answers) / 4,
            })
        assert runs[0]["rougeL"] != runs[1]["rougeL"]  # two seeds sample two different answer sets
        assert max(run["rougeL"] for run in runs) > 0
        exact_matches.append(max(run["exact_match"] for run in runs))
        summary = results["sets"][set_name]
        assert summary["n"] == 4
        for metric in E.METRICS:
            mean, std = _mean_std([run[metric] for run in runs])
            assert summary[metric]["mean"] == pytest.approx(mean) and summary[metric]["std"] == pytest.approx(std)
            for k in range(2):
                per_seed_avg[metric][k] += runs[k][metric] / 2
    assert max(exact_matches) > 0  # an answer of just " the" matches "The."
    for metric in E.METRICS:
        mean, std = _mean_std(per_seed_avg[metric])
        assert results["avg"][metric]["mean"] == pytest.approx(mean) and results["avg"][metric]["std"] == pytest.approx(std)
    assert results["generation"]["do_sample"] and results["seeds"] == seeds
    table = capsys.readouterr().out
    assert "dolly" in table and "avg" in table and " ± " in table


@needs_shared("vicuna", "sinst")
def test_evaluate_on_shared_vicuna_and_sinst(tmp_path, tiny_gpt2_dir):
    save = tmp_path / "out"
    results = E.main([
        "--model-path", str(tiny_gpt2_dir), "--data-dir", str(SHARED_EVAL), "--eval-sets", "vicuna,sinst", "--seeds", "10",
        "--max-examples", "3", "--max-new-tokens", "8", "--max-prompt-length", "64", "--save", str(save), "--no-progress",
    ])
    name = tiny_gpt2_dir.name
    sinst, _ = load_instruction_jsonl(SHARED_EVAL / "sinst" / "valid.jsonl")
    answers = _answers(save / name / "sinst" / "seed10" / "answers.jsonl")
    assert [a["references"] for a in answers] == [e.references for e in sinst[:3]]
    assert len(_answers(save / name / "vicuna" / "seed10" / "answers.jsonl")) == 3
    assert set(results[name]["sets"]) == {"vicuna", "sinst"}


def test_several_models_are_compared(tmp_path, tiny_gpt2_dir):
    data = tmp_path / "data"
    write_instruction_jsonl(data / "dolly" / "valid.jsonl", 3)
    for parent in ("run-a", "run-b"):  # the same directory name twice: told apart by the parent
        (tmp_path / parent).mkdir()
        (tmp_path / parent / "best").symlink_to(tiny_gpt2_dir, target_is_directory=True)
    save = tmp_path / "out"
    E.main([
        "--model-path", str(tmp_path / "run-*" / "best"), "--data-dir", str(data), "--eval-sets", "dolly", "--seeds", "1",
        "--max-new-tokens", "4", "--save", str(save), "--no-progress",
    ])
    with (save / "comparison.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [row["model"] for row in table] == ["run-a/best", "run-b/best"]
    assert table[0]["dolly_rougeL"] == table[1]["dolly_rougeL"]  # same weights, same seed
    assert (save / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (save / "run-a" / "best" / "dolly" / "seed1" / "answers.jsonl").is_file()


def test_peft_adapter_is_merged(tmp_path, tiny_gpt2_dir, tiny_tokenizer):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir, local_files_only=True)
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["c_attn"], init_lora_weights=False, fan_in_fan_out=True))
    adapter = tmp_path / "adapter"
    lora.save_pretrained(adapter)
    data = tmp_path / "data"
    write_instruction_jsonl(data / "dolly" / "valid.jsonl", 3)
    E.main([
        "--model-path", str(tiny_gpt2_dir), "--peft-path", str(adapter), "--data-dir", str(data), "--eval-sets", "dolly",
        "--dtype", "float32", "--seeds", "1", "--no-do-sample", "--max-new-tokens", "5", "--save", str(tmp_path / "out"), "--no-progress",
    ])
    answers = _answers(tmp_path / "out" / "adapter" / "dolly" / "seed1" / "answers.jsonl")
    merged = lora.merge_and_unload()
    expected = generate(merged, tiny_tokenizer, [a["prompt"] for a in answers], GenerationSettings(max_new_tokens=5), progress=False)
    plain = generate(AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir, local_files_only=True), tiny_tokenizer,
                     [a["prompt"] for a in answers], GenerationSettings(max_new_tokens=5), progress=False)
    assert [a["generation"] for a in answers] == expected.texts != plain.texts


# Bad input --------------------------------------------------------------------------------------


def _run_error(argv) -> str:
    with pytest.raises(SystemExit) as error:
        E.main(argv)
    message = str(error.value.code)
    assert message.startswith("error: ")
    return message


@pytest.fixture
def good_data(tmp_path):
    data = tmp_path / "data"
    write_instruction_jsonl(data / "dolly" / "valid.jsonl", 3)
    return data


def _argv(model, data, save, sets="dolly"):
    return ["--model-path", str(model), "--data-dir", str(data), "--eval-sets", sets, "--save", str(save), "--no-progress"]


def test_missing_set(tmp_path, tiny_gpt2_dir, good_data):
    message = _run_error(_argv(tiny_gpt2_dir, good_data, tmp_path / "out", "dolly,uinst"))
    assert str(good_data / "uinst") in message
    (good_data / "uinst").mkdir()
    assert str(good_data / "uinst" / "valid.jsonl") in _run_error(_argv(tiny_gpt2_dir, good_data, tmp_path / "out", "dolly,uinst"))
    assert not (tmp_path / "out").exists()  # inputs are checked before anything is generated


def test_empty_set_file(tmp_path, tiny_gpt2_dir, good_data):
    empty = good_data / "vicuna" / "valid.jsonl"
    empty.parent.mkdir()
    empty.write_text("\n")
    message = _run_error(_argv(tiny_gpt2_dir, good_data, tmp_path / "out", "dolly,vicuna"))
    assert str(empty) in message and "no examples" in message


def test_line_without_output(tmp_path, tiny_gpt2_dir, good_data):
    path = good_data / "dolly" / "valid.jsonl"
    lines = path.read_text().splitlines()
    row = json.loads(lines[1])
    del row["output"]
    lines[1] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")
    message = _run_error(_argv(tiny_gpt2_dir, good_data, tmp_path / "out"))
    assert f"{path}:2" in message and "output" in message


def test_missing_model_path(tmp_path, tiny_gpt2_dir, good_data):
    missing = tmp_path / "checkpoints" / "gpt2-nowhere"
    message = _run_error(_argv(f"{tiny_gpt2_dir},{missing}", good_data, tmp_path / "out"))
    assert str(missing) in message
    assert "matches nothing" in _run_error(_argv(tmp_path / "nothing-*", good_data, tmp_path / "out"))
    (tmp_path / "not-a-model").mkdir()
    assert "no config.json" in _run_error(_argv(tmp_path / "not-a-model", good_data, tmp_path / "out"))


# Launchers --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["run_eval", "eval_main_dolly", "eval_main_self_inst", "eval_main_vicuna", "eval_main_sinst", "eval_main_uinst"])
def test_launchers(name, tmp_path):
    """Each evaluation launcher's dry run is one `distillation_llm.evaluate` command that its real
    parser accepts, on the set the script is named after (run_eval: all five), under BASE_PATH.
    (House rules of every launcher are checked in tests/test_scripts.py.)"""
    script = REPO / "scripts" / "gpt2" / "eval" / f"{name}.sh"
    argv = [str(tmp_path), str(tmp_path / "model")] if name.startswith("eval_main_") else [str(tmp_path)]
    env = {**os.environ, "DRY_RUN": "1"}
    out = subprocess.run(["bash", str(script), *argv], env=env, capture_output=True, text=True, check=True).stdout
    commands = [shlex.split(line) for line in out.splitlines() if "distillation_llm.evaluate" in line]
    assert len(commands) == 1, out
    words = commands[0]
    assert words[:3] == ["python", "-m", "distillation_llm.evaluate"]
    args = E.build_parser().parse_args(words[3:])
    expected_sets = name.removeprefix("eval_main_").replace("_", "-") if name.startswith("eval_main_") else "dolly,self-inst,vicuna,sinst,uinst"
    assert args.eval_sets == expected_sets
    assert args.data_dir == str(tmp_path / "data") and args.save.startswith(str(tmp_path))
    assert args.seeds == "10,20,30,40,50"


def test_peft_path_without_weights_is_an_error_not_a_hub_lookup(tmp_path, tiny_gpt2_dir, good_data, monkeypatch):
    """A folder holding only adapter_config.json used to be taken for a Hub repo id."""
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    message = _run_error(["--peft-path", "adapter", *_argv(tiny_gpt2_dir, good_data, tmp_path / "out")])
    assert "--peft-path adapter" in message and "adapter_model" in message


def test_a_model_without_tokenizer_files_or_with_foreign_weights_is_refused(tmp_path, tiny_gpt2_dir, tiny_llama_dir, good_data):
    """Before: 'prompt 0 is empty' (no tokenizer), and a randomly initialised model's scores (weights
    of another architecture) with exit 0."""
    import shutil

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_gpt2_dir / name, bare / name)
    message = _run_error(_argv(f"{tiny_gpt2_dir},{bare}", good_data, tmp_path / "out"))
    assert f"--model-path {bare}: no tokenizer files (none of tokenizer.json" in message
    assert not (tmp_path / "out").exists()  # refused before the first model is evaluated
    foreign = tmp_path / "foreign"
    shutil.copytree(tiny_llama_dir, foreign)
    shutil.copy(tiny_gpt2_dir / "model.safetensors", foreign / "model.safetensors")
    message = _run_error(_argv(foreign, good_data, tmp_path / "out2"))
    assert f"--model-path {foreign}: its weights do not fit the LlamaForCausalLM" in message and "model.embed_tokens.weight" in message
