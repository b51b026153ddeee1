"""Start-up checks of distillation_llm.finetune (issue #14): a run that would train on nothing, on
ids of another tokenizer, or with flags that cannot work stops at once with one `error:` line."""

import json

import pytest
from conftest import tiny_corpus, write_instruction_jsonl

from distillation_llm import arguments, finetune
from distillation_llm.checks import check_startup
from distillation_llm.data import load_processed, tokenizer_fingerprint
from distillation_llm.models import load_tokenizer


@pytest.fixture(scope="module")
def paths(tmp_path_factory, tiny_tokenizer_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir):
    from tools import process_data_dolly

    root = tmp_path_factory.mktemp("startup")
    write_instruction_jsonl(root / "raw" / "raw.jsonl", 16, seed=5)
    process_data_dolly.main([
        "--data-dir", str(root / "raw"), "--processed-data-dir", str(root / "data"), "--model-path", str(tiny_tokenizer_dir),
        "--max-prompt-length", "48", "--max-length", "64", "--dev-num", "4",
    ])
    return {"data": root / "data", "raw": root / "raw", "student": tiny_gpt2_dir, "teacher": tiny_gpt2_teacher_dir, "root": root}


def _argv(paths, save, *extra, teacher=True):
    argv = [
        "--model-path", paths["student"], "--data-dir", paths["data"], "--save", save, "--do-train", "--batch-size", "2",
        "--total-iters", "2", "--max-length", "64", "--max-prompt-length", "48",
    ]
    if teacher:
        argv += ["--teacher-model-path", paths["teacher"]]
    return [str(x) for x in (*argv, *extra)]


def _parse_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        arguments.parse_args(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def _startup(paths, tmp_path, *extra, teacher=True):
    """check_startup as finetune.main calls it: parsed arguments and the student's tokenizer; returns the warnings."""
    args = arguments.parse_args(_argv(paths, tmp_path / "run", *extra, teacher=teacher))
    warnings = []
    check_startup(args, load_tokenizer(args.model_path), warn=warnings.append)
    return warnings


def _startup_error(paths, tmp_path, *extra, teacher=True) -> str:
    with pytest.raises(SystemExit) as exit_info:
        _startup(paths, tmp_path, *extra, teacher=teacher)
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "\n" not in message
    return message


# 1. Runs that train on nothing --------------------------------------------------------------------


def test_max_length_below_every_prompt_is_refused_before_training(paths, tmp_path):
    train_size = len(load_processed(paths["data"])[0]["train"])
    with pytest.raises(SystemExit) as exit_info:
        finetune.main(_argv(paths, tmp_path / "run", "--type", "sft", "--max-length", "8", "--max-prompt-length", "4", teacher=False))
    message = str(exit_info.value.code)
    assert message.startswith("error: --max-length 8 cuts ") and "\n" not in message
    assert f"cuts {train_size} of the {train_size} training responses, and {train_size} examples keep no response token" in message
    assert "train on nothing" in message and "--max-length 64" in message  # what the data was processed with
    assert not (tmp_path / "run" / "2").exists()


def test_some_responses_cut_is_a_warning(paths, tmp_path):
    train = load_processed(paths["data"])[0]["train"]
    lengths = [len(p) + len(r) for p, r in zip(train["prompt_ids"], train["response_ids"])]
    max_length = max(len(p) for p in train["prompt_ids"]) + 1  # every example keeps a response token
    cut = sum(length > max_length for length in lengths)
    assert cut > 0
    warnings = _startup(paths, tmp_path, "--type", "sft", "--max-length", max_length, "--max-prompt-length", 4, teacher=False)
    assert [w for w in warnings if f"cuts {cut} of the {len(lengths)} training responses, and 0 examples" in w]


@pytest.mark.parametrize("flag", ["--epochs", "--total-iters"])
def test_zero_planned_steps_are_refused(paths, tmp_path, capsys, flag):
    argv = _argv(paths, tmp_path / "run", "--type", "sft", teacher=False)
    argv = argv[: argv.index("--total-iters")] + argv[argv.index("--total-iters") + 2 :] + [flag, "0"]
    assert f"{flag} 0 plans no training step" in _parse_error(capsys, argv)


def test_train_split_smaller_than_a_global_batch_is_refused(paths, tmp_path):
    message = _startup_error(paths, tmp_path, "--type", "sft", "--batch-size", 8, "--gradient-accumulation-steps", 2, teacher=False)
    assert "12 examples, fewer than one global batch of 16" in message and "no training step would run" in message


# 2. Data or teacher tokenised by another tokenizer ---------------------------------------------


@pytest.fixture(scope="module")
def other_tokenizer_dir(tmp_path_factory, tiny_tokenizer):
    """A tokenizer with the test tokenizer's class and vocabulary size but other tokens (trained on other text)."""
    from distillation_llm.toy import train_bpe_tokenizer

    out = tmp_path_factory.mktemp("other-tokenizer")
    other = train_bpe_tokenizer([text.upper() for text in tiny_corpus(seed=7)], out, vocab_size=len(tiny_tokenizer))
    assert len(other) == len(tiny_tokenizer) and other.get_vocab() != tiny_tokenizer.get_vocab()
    return out


def test_data_from_another_tokenizer_of_the_same_size_is_refused(paths, tmp_path, other_tokenizer_dir):
    from tools import process_data_dolly

    process_data_dolly.main([
        "--data-dir", str(paths["raw"]), "--processed-data-dir", str(tmp_path / "other"), "--model-path", str(other_tokenizer_dir),
        "--max-prompt-length", "48", "--max-length", "64", "--dev-num", "4",
    ])
    with pytest.raises(ValueError, match="tokenised with another tokenizer .* although both have"):
        load_processed(tmp_path / "other", load_tokenizer(paths["student"]))
    message = _startup_error(paths, tmp_path, "--type", "sft", "--data-dir", tmp_path / "other", teacher=False)
    assert "--data-dir" in message and "re-process the data" in message


def test_old_meta_without_fingerprint_warns_and_loads(paths, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(paths["data"], old)
    meta = json.loads((old / "meta.json").read_text())
    del meta["tokenizer_fingerprint"]
    (old / "meta.json").write_text(json.dumps(meta))
    warnings = []
    data, _ = load_processed(old, load_tokenizer(paths["student"]), warn=warnings.append)
    assert len(data["train"]) == 12
    assert len(warnings) == 1 and "no tokenizer fingerprint" in warnings[0]


def test_fingerprint_matches_the_training_tokenizer(paths, tiny_tokenizer_dir):
    from tools._common import load_tokenizer as processing_tokenizer

    # The training side sets a missing pad token; the fingerprint must not depend on it.
    meta = json.loads((paths["data"] / "meta.json").read_text())
    assert meta["tokenizer_fingerprint"] == tokenizer_fingerprint(load_tokenizer(paths["student"]))
    assert meta["tokenizer_fingerprint"] == tokenizer_fingerprint(processing_tokenizer(tiny_tokenizer_dir))


def test_teacher_with_another_tokenizer_is_one_line(paths, tmp_path, other_tokenizer_dir):
    from transformers import AutoTokenizer

    from distillation_llm.toy import make_causal_lm

    make_causal_lm("gpt2", tmp_path / "teacher", AutoTokenizer.from_pretrained(other_tokenizer_dir), hidden_size=32, num_layers=1, num_heads=2)
    with pytest.raises(SystemExit) as exit_info:
        finetune.main(_argv({**paths, "teacher": tmp_path / "teacher"}, tmp_path / "run", "--type", "kd"))
    message = str(exit_info.value.code)
    assert message.startswith("error: --teacher-model-path") and "student and teacher tokenizers differ" in message


# 3. Flags that cannot give a finite, non-zero loss ------------------------------------------------


@pytest.mark.parametrize("flag", ["--lr", "--kd-temperature", "--temperature-kld", "--lr-min", "--clip-grad"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_float_flags_are_refused(paths, tmp_path, capsys, flag, value):
    name = "--kd-temperature" if flag == "--temperature-kld" else flag
    assert f"{name} must be a finite number" in _parse_error(capsys, _argv(paths, tmp_path / "run", "--type", "kd", f"{flag}={value}"))


@pytest.mark.parametrize("alpha,beta", [(1e6, 0.0), (50.0, 50.0), (-30.0, 0.7), (0.5, -1e4)])
def test_ab_parameters_that_zero_the_loss_are_refused(paths, tmp_path, capsys, alpha, beta):
    err = _parse_error(capsys, _argv(paths, tmp_path / "run", "--type", "ab", "--ab_alpha", alpha, "--ab_beta", beta))
    assert "cannot tell apart probabilities below" in err and "[-1, 2]" in err


def test_ab_parameters_outside_the_safe_range_warn_at_start_up(paths, tmp_path):
    warnings = _startup(paths, tmp_path, "--type", "ab", "--ab_alpha", -5, "--ab_beta", 0)
    assert [w for w in warnings if w.startswith("warning: --ab_alpha -5 --ab_beta 0: ") and "floored at -10" in w]
    assert not [w for w in _startup(paths, tmp_path, "--type", "ab", "--ab_alpha", 0.2, "--ab_beta", 0.7) if "--ab_alpha" in w]


# 4. Output paths ----------------------------------------------------------------------------------


def test_save_on_a_file_is_refused(paths, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert f"--save {tmp_path / 'file'} is a file" in _parse_error(capsys, _argv(paths, tmp_path / "file", "--type", "kd"))
    under = tmp_path / "file" / "run"
    assert f"--save {under} lies under {tmp_path / 'file'}, which is a file" in _parse_error(capsys, _argv(paths, under, "--type", "kd"))
