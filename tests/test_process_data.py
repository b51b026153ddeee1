"""tools.process_data_dolly and tools.process_data_pretrain on files written here and on the shared evaluation sets."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_EVAL, write_instruction_jsonl
from datasets import load_from_disk
from llama_like_tokenizer import train_llama_like_tokenizer

from tools import process_data_dolly, process_data_pretrain

REPO = Path(__file__).resolve().parents[1]

# The Alpaca/MiniLLM template, spelled out here rather than taken from distillation_llm.instructions.
NO_INPUT_HEADER = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
INPUT_HEADER = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
)


def expected_prompt(row: dict) -> str:
    if row.get("input"):
        return f"{INPUT_HEADER}### Instruction:\n{row['instruction']}\n\n### Input:\n{row['input']}\n\n### Response:\n"
    return f"{NO_INPUT_HEADER}### Instruction:\n{row['instruction']}\n\n### Response:\n"


def write_rows(path: Path, rows: list) -> Path:
    """One line per row: dicts as JSON, strings written verbatim (for malformed lines)."""
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def command_line(tokenizer_dir, source, out, options) -> list[str]:
    return ["--input", str(source), "--processed-data-dir", str(out), "--model-path", str(tokenizer_dir), *map(str, options)]


def dolly(tokenizer_dir, source, out, *options) -> dict:
    """Run the tool in-process as its command line would; returns meta."""
    return process_data_dolly.process(process_data_dolly.parse_args(command_line(tokenizer_dir, source, out, options)))


def dolly_error(tokenizer_dir, source, out, *options) -> str:
    """The message `main` exits with."""
    with pytest.raises(SystemExit) as exit_info:
        process_data_dolly.main(command_line(tokenizer_dir, source, out, options))
    return str(exit_info.value.code)


def pretrain(tokenizer_dir, source, out, *options) -> dict:
    return process_data_pretrain.process(process_data_pretrain.parse_args(command_line(tokenizer_dir, source, out, options)))


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def decode(tokenizer, ids) -> str:
    return tokenizer.decode(list(ids), clean_up_tokenization_spaces=False)


HAND_ROWS = [
    {"instruction": "Name a colour of the sky.", "output": "Blue."},
    {"instruction": "Add the numbers.", "input": "two and three", "output": "five"},
    {"instruction": "Give two animals.", "output": ["a dog and a cat", "a bird and a fish"]},
]


# process_data_dolly ---------------------------------------------------------------------------


def test_splits_prompts_responses_and_references(tmp_path, tiny_tokenizer_dir, tiny_tokenizer):
    rows = write_instruction_jsonl(tmp_path / "generated.jsonl", 20, seed=1) + HAND_ROWS
    source = write_rows(tmp_path / "raw.jsonl", rows)

    meta = dolly(tiny_tokenizer_dir, source, tmp_path / "out", "--dev-num", 5)

    dataset = load_from_disk(str(tmp_path / "out"))
    assert set(dataset) == {"train", "valid"}
    assert (len(dataset["train"]), len(dataset["valid"])) == (18, 5)
    assert meta["counts"] == {
        "train": 18, "valid": 5, "kept": 23, "prompt_truncated": 0, "response_truncated": 0, "skipped_invalid": 0, "skipped_too_long": 0,
        "duplicates": 0, "train_dropped_as_in_valid": 0,
    }
    features = dataset["train"].features
    assert (features["id"].dtype, features["prompt_ids"].feature.dtype, features["response_ids"].feature.dtype) == ("int64", "int32", "int32")
    assert dataset["train"].cache_files, "the saved splits should be memory-mapped Arrow files"
    ids = list(dataset["train"]["id"]) + list(dataset["valid"]["id"])
    assert sorted(ids) == list(range(23)) and ids[:18] == sorted(ids[:18]) and ids[18:] == sorted(ids[18:])
    # DistiLLM's split: the valid examples are the file's first --dev-num lines, in order.
    assert list(dataset["valid"]["id"]) == [0, 1, 2, 3, 4] and list(dataset["train"]["id"]) == list(range(5, 23))

    eos = tiny_tokenizer.eos_token_id
    for split in dataset.values():
        for example in split:
            row = rows[example["id"]]
            references = row["output"] if isinstance(row["output"], list) else [row["output"]]
            assert example["prompt"] == expected_prompt(row)
            assert decode(tiny_tokenizer, example["prompt_ids"]) == expected_prompt(row)
            assert example["response_ids"][-1] == eos and eos not in example["response_ids"][:-1]
            assert decode(tiny_tokenizer, example["response_ids"][:-1]) == references[0]
            assert example["references"] == references
    by_id = {example["id"]: example for split in dataset.values() for example in split}
    assert by_id[21]["prompt"].count("### Input:\ntwo and three\n\n") == 1
    assert by_id[22]["references"] == ["a dog and a cat", "a bird and a fish"]

    meta_on_disk = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta_on_disk == meta
    assert (meta["vocab_size"], meta["eos_token_id"], meta["pad_token_id"]) == (len(tiny_tokenizer), eos, tiny_tokenizer.pad_token_id)
    assert meta["format_version"] == 2 and meta["tokenizer"] == str(tiny_tokenizer_dir) and meta["source"] == str(source)
    assert (meta["max_length"], meta["max_prompt_length"]) == (512, 256)
    assert (meta["dev_split"], meta["dev_num"]) == ("first", 5)


def test_response_is_sliced_from_the_tokenised_prompt_and_response(tmp_path):
    """DistiLLM tokenises prompt + response together and takes what follows the prompt's tokens.
    With a SentencePiece-style tokenizer "Blue." alone starts with "▁Blue" (a space the text does
    not have after "### Response:\n"); in context it is "B", "lue"."""
    from transformers import AutoTokenizer

    tokenizer_dir = train_llama_like_tokenizer(tmp_path / "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    row = {"instruction": "Name a colour of the sky.", "output": "Blue."}
    source = write_rows(tmp_path / "raw.jsonl", [row])

    dolly(tokenizer_dir, source, tmp_path / "out", "--dev-num", 0)

    example = load_from_disk(str(tmp_path / "out"))["train"][0]
    prompt = expected_prompt(row)
    tokens = tokenizer.convert_ids_to_tokens
    assert tokens(encode(tokenizer, "Blue.")) == ["▁Blue", "."]  # what tokenising the response alone gives
    assert tokens(example["response_ids"]) == ["B", "lue", ".", "</s>"]
    assert example["prompt_ids"] == encode(tokenizer, prompt)
    # The training text is exactly prompt + response, and, as DistiLLM's training data, has no BOS.
    assert tokenizer.decode(example["prompt_ids"] + example["response_ids"][:-1]) == prompt + "Blue."
    assert tokenizer.bos_token_id not in example["prompt_ids"]


def test_random_dev_split_is_opt_in_and_seeded(tmp_path, tiny_tokenizer_dir):
    source = write_rows(tmp_path / "raw.jsonl", write_instruction_jsonl(tmp_path / "generated.jsonl", 20, seed=1))

    dolly(tiny_tokenizer_dir, source, tmp_path / "a", "--dev-num", 5, "--dev-split", "random", "--seed", 3)
    dolly(tiny_tokenizer_dir, source, tmp_path / "b", "--dev-num", 5, "--dev-split", "random", "--seed", 3)

    valid = list(load_from_disk(str(tmp_path / "a"))["valid"]["id"])
    assert valid == list(load_from_disk(str(tmp_path / "b"))["valid"]["id"])
    assert valid == sorted(random.Random(3).sample(range(20), 5)) and valid != [0, 1, 2, 3, 4]


def test_data_dir_reads_raw_jsonl_and_only_prompt_allows_missing_outputs(tmp_path, tiny_tokenizer_dir, tiny_tokenizer):
    rows = [{"instruction": "Write a poem about the moon."}, {"instruction": "List three rivers.", "output": "Nile"}]
    (tmp_path / "eval").mkdir()
    write_rows(tmp_path / "eval" / "raw.jsonl", rows)
    argv = ["--data-dir", str(tmp_path / "eval"), "--processed-data-dir", str(tmp_path / "out"), "--model-path", str(tiny_tokenizer_dir)]

    meta = process_data_dolly.process(process_data_dolly.parse_args([*argv, "--dev-num", "0", "--only-prompt"]))

    dataset = load_from_disk(str(tmp_path / "out"))
    assert list(dataset) == ["train"] and meta["counts"]["valid"] == 0
    assert list(dataset["train"]["response_ids"]) == [[], []]
    assert list(dataset["train"]["references"]) == [[], ["Nile"]]
    assert decode(tiny_tokenizer, dataset["train"][0]["prompt_ids"]) == expected_prompt(rows[0])


def test_long_prompts_keep_their_start_and_long_responses_lose_their_end(tmp_path, tiny_tokenizer_dir, tiny_tokenizer):
    long_instruction = "Describe " + " ".join(["the quick red fox and the slow blue bird"] * 8) + "."
    long_output = " ".join(["one two three four five six seven eight nine ten"] * 6)
    rows = [
        {"instruction": "Name a star.", "output": "the sun"},  # fits
        {"instruction": long_instruction, "output": "yes"},  # prompt truncated
        {"instruction": "Count to ten, six times.", "output": long_output},  # response truncated
        {"instruction": long_instruction, "input": "a fox", "output": long_output},  # both
    ]
    max_prompt, max_length = 56, 96
    prompt_lengths = [len(encode(tiny_tokenizer, expected_prompt(row))) for row in rows]
    response_lengths = [len(encode(tiny_tokenizer, row["output"])) + 1 for row in rows]
    # The rows must exercise what they claim to.
    assert prompt_lengths[0] <= max_prompt and prompt_lengths[0] + response_lengths[0] <= max_length
    assert prompt_lengths[1] > max_prompt and max_prompt + response_lengths[1] <= max_length
    assert prompt_lengths[2] <= max_prompt and prompt_lengths[2] + response_lengths[2] > max_length
    assert prompt_lengths[3] > max_prompt and max_prompt + response_lengths[3] > max_length
    source = write_rows(tmp_path / "long.jsonl", rows)

    meta = dolly(tiny_tokenizer_dir, source, tmp_path / "out", "--dev-num", 0, "--max-prompt-length", max_prompt, "--max-length", max_length)

    assert meta["counts"]["prompt_truncated"] == 2 and meta["counts"]["response_truncated"] == 2
    assert meta["counts"]["kept"] == 4 and meta["counts"]["skipped_too_long"] == 0
    train = load_from_disk(str(tmp_path / "out"))["train"]
    response_marker = encode(tiny_tokenizer, "### Response:\n")
    eos = tiny_tokenizer.eos_token_id
    for k, (row, example) in enumerate(zip(rows, train)):
        full_prompt = encode(tiny_tokenizer, expected_prompt(row))
        # DistiLLM keeps a long prompt's first tokens, so a cut prompt loses "### Response:".
        assert example["prompt_ids"] == full_prompt[:max_prompt]
        ends_with_marker = example["prompt_ids"][-len(response_marker) :] == response_marker
        assert ends_with_marker == (k in (0, 2))
        assert len(example["prompt_ids"]) + len(example["response_ids"]) <= max_length
        full_response = encode(tiny_tokenizer, row["output"]) + [eos]
        assert example["response_ids"] == full_response[: max_length - len(example["prompt_ids"])]
    assert train[2]["response_ids"][-1] != eos and len(train[2]["prompt_ids"]) + len(train[2]["response_ids"]) == max_length
    kept_text = decode(tiny_tokenizer, train[1]["prompt_ids"])
    assert expected_prompt(rows[1]).startswith(kept_text) and kept_text.startswith("Below is an instruction")
    assert "### Response:" not in kept_text

    # With no room left after a full-length prompt, those examples are skipped and reported by line.
    meta = dolly(tiny_tokenizer_dir, source, tmp_path / "tight", "--dev-num", 0, "--max-prompt-length", max_prompt, "--max-length", max_prompt)
    assert meta["counts"]["skipped_too_long"] == 2 and meta["counts"]["kept"] == 2
    assert [line for line, _ in meta["skipped_lines"]] == [2, 4]
    assert list(load_from_disk(str(tmp_path / "tight"))["train"]["id"]) == [0, 2]


def test_bad_lines_name_file_and_line_or_are_skipped(tmp_path, tiny_tokenizer_dir, capsys):
    good = {"instruction": "Name a bird.", "output": "a robin"}
    malformed = write_rows(tmp_path / "malformed.jsonl", [good, '{"instruction": "oops", "output": ', good])
    missing = write_rows(tmp_path / "missing.jsonl", [good, good, {"instruction": "no output here"}])

    message = dolly_error(tiny_tokenizer_dir, malformed, tmp_path / "a", "--dev-num", 0)
    assert message.startswith("error: ") and f"{malformed}:2:" in message and "malformed JSON" in message
    message = dolly_error(tiny_tokenizer_dir, missing, tmp_path / "b", "--dev-num", 0)
    assert f"{missing}:3:" in message and "'output'" in message
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

    both = write_rows(tmp_path / "both.jsonl", [good, "not json", good, {"input": "x", "output": "y"}, {"instruction": "z"}, good])
    capsys.readouterr()
    meta = dolly(tiny_tokenizer_dir, both, tmp_path / "c", "--dev-num", 0, "--skip-invalid")
    assert meta["counts"]["skipped_invalid"] == 3 and meta["counts"]["kept"] == 3
    assert [line for line, _ in meta["skipped_lines"]] == [2, 4, 5]
    assert "instruction" in meta["skipped_lines"][1][1] and "output" in meta["skipped_lines"][2][1]
    assert "skipped 3 invalid lines: 2, 4, 5" in capsys.readouterr().out
    assert list(load_from_disk(str(tmp_path / "c"))["train"]["id"]) == [0, 1, 2]


def test_cli_reports_errors_without_traceback(tmp_path, tiny_tokenizer_dir):
    source = write_rows(tmp_path / "broken.jsonl", [{"instruction": "a", "output": "b"}, "{"])
    command = [sys.executable, "-m", "tools.process_data_dolly", *command_line(tiny_tokenizer_dir, source, tmp_path / "out", [])]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode != 0
    assert f"error: {source}:2: malformed JSON" in result.stderr and "Traceback" not in result.stderr


def test_argument_errors_are_clear(tmp_path, tiny_tokenizer_dir):
    source = write_rows(tmp_path / "raw.jsonl", HAND_ROWS)
    assert "--model-path /no/such/tokenizer: no such directory" in dolly_error("/no/such/tokenizer", source, tmp_path / "out")
    assert "--dev-num 1000 exceeds the 3 examples kept" in dolly_error(tiny_tokenizer_dir, source, tmp_path / "out")
    assert "exceeds --max-length" in dolly_error(tiny_tokenizer_dir, source, tmp_path / "out", "--max-prompt-length", 64, "--max-length", 32)
    assert not (tmp_path / "out").exists()


def test_existing_output_is_kept_replaced_or_refused(tmp_path, tiny_tokenizer_dir, capsys):
    source = tmp_path / "raw.jsonl"
    write_instruction_jsonl(source, 12, seed=2)
    out = tmp_path / "processed" / "gpt2"
    first = dolly(tiny_tokenizer_dir, source, out, "--dev-num", 2, "--max-length", 64, "--max-prompt-length", 48)
    written = {path: path.stat().st_mtime_ns for path in out.rglob("*")}

    capsys.readouterr()
    again = dolly(tiny_tokenizer_dir, source, out, "--dev-num", 2, "--max-length", 64, "--max-prompt-length", 48)
    assert again == first and "nothing to do" in capsys.readouterr().out
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*")} == written

    message = dolly_error(tiny_tokenizer_dir, source, out, "--dev-num", 2, "--max-length", 32, "--max-prompt-length", 24)
    assert "already holds a dataset processed differently" in message and "--overwrite" in message
    assert json.loads((out / "meta.json").read_text())["max_length"] == 64

    replaced = dolly(tiny_tokenizer_dir, source, out, "--dev-num", 2, "--max-length", 32, "--max-prompt-length", 24, "--overwrite")
    assert replaced["fingerprint"] != first["fingerprint"]
    assert json.loads((out / "meta.json").read_text()) == replaced
    train = load_from_disk(str(out))["train"]
    assert max(len(p) + len(r) for p, r in zip(train["prompt_ids"], train["response_ids"])) == 32
    assert sorted(p.name for p in out.parent.iterdir()) == ["gpt2"], "no temporary directories may be left behind"

    # A folder that is not a processed dataset is never replaced, not even with --overwrite.
    other = tmp_path / "not-a-dataset"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert "holds no processed dataset" in dolly_error(tiny_tokenizer_dir, source, other, "--dev-num", 2, "--overwrite")
    assert (other / "notes.txt").read_text() == "keep me"


def test_interrupted_run_leaves_the_previous_dataset_and_no_partial_one(tmp_path, tiny_tokenizer_dir, monkeypatch):
    from datasets import DatasetDict

    source = write_rows(tmp_path / "raw.jsonl", HAND_ROWS)
    out = tmp_path / "processed" / "gpt2"
    first = dolly(tiny_tokenizer_dir, source, out, "--dev-num", 1)
    save_to_disk = DatasetDict.save_to_disk

    def save_then_interrupt(self, path, **kwargs):
        save_to_disk(self, path, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(DatasetDict, "save_to_disk", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        dolly(tiny_tokenizer_dir, source, out, "--dev-num", 2, "--overwrite")
    with pytest.raises(KeyboardInterrupt):
        dolly(tiny_tokenizer_dir, source, out.with_name("fresh"), "--dev-num", 1)

    assert sorted(p.name for p in out.parent.iterdir()) == ["gpt2"]
    assert json.loads((out / "meta.json").read_text()) == first
    assert len(load_from_disk(str(out))["valid"]) == 1


def test_parallel_workers_give_the_same_dataset(tmp_path, tiny_tokenizer_dir):
    source = tmp_path / "raw.jsonl"
    write_instruction_jsonl(source, 600, seed=4)  # several 256-example chunks
    options = ["--dev-num", 50, "--max-prompt-length", 40, "--max-length", 56]

    one = dolly(tiny_tokenizer_dir, source, tmp_path / "one", *options)
    two = dolly(tiny_tokenizer_dir, source, tmp_path / "two", *options, "--data-process-workers", 2)

    assert one == two
    assert one["counts"]["prompt_truncated"] > 0 and one["counts"]["response_truncated"] > 0
    first, second = load_from_disk(str(tmp_path / "one")), load_from_disk(str(tmp_path / "two"))
    for split in ("train", "valid"):
        assert first[split].to_dict() == second[split].to_dict()


def _shared(name: str) -> Path:
    path = SHARED_EVAL / name / "valid.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} is not available")
    return path


def test_shared_dolly_evaluation_set(tmp_path, tiny_tokenizer_dir):
    source = _shared("dolly")
    rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]

    meta = dolly(tiny_tokenizer_dir, source, tmp_path / "out", "--dev-num", 0)

    counts = meta["counts"]
    assert len(rows) == 500
    assert counts["kept"] + counts["skipped_invalid"] + counts["skipped_too_long"] == 500
    assert counts["train"] == counts["kept"] and counts["skipped_invalid"] == 0
    train = load_from_disk(str(tmp_path / "out"))["train"]
    for example in train.select(range(0, len(train), 50)):
        row = rows[example["id"]]
        assert example["references"] == [row["output"]]
        assert example["prompt"] == expected_prompt(row)


def test_shared_sinst_keeps_every_reference(tmp_path, tiny_tokenizer_dir):
    source = _shared("sinst")
    rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]

    meta = dolly(tiny_tokenizer_dir, source, tmp_path / "out", "--dev-num", 0, "--data-process-workers", 2)

    assert meta["counts"]["kept"] + meta["counts"]["skipped_too_long"] == len(rows)
    train = load_from_disk(str(tmp_path / "out"))["train"]
    references = dict(zip(train["id"], train["references"]))
    multi = [i for i, row in enumerate(rows) if len(row["output"]) > 1]
    assert multi, "sinst has examples with several references"
    assert all(references[i] == rows[i]["output"] for i in multi if i in references)
    assert sum(len(r) > 1 for r in references.values()) == sum(1 for i in multi if i in references) > 0


# process_data_pretrain ------------------------------------------------------------------------

MARKER = "<@x(x!>"


def test_pretrain_blocks(tmp_path, tiny_tokenizer_dir, tiny_tokenizer):
    documents = [
        f"the first line{MARKER}the second line",
        "a small red bird",
        "",
        "the dog and the cat are happy",
        "   ",
        f"one two three{MARKER}{MARKER}four five six seven eight nine ten",
        "the sun the moon and a star",
    ] * 5
    source = tmp_path / "data.txt"
    source.write_text("\n".join(documents) + "\n")
    texts = [doc.replace(MARKER, "\n") for doc in documents if doc.strip()]
    # The whole stream spelled as text: EOS after every document.
    stream_text = "".join(text + "<|endoftext|>" for text in texts)
    total_tokens = len(encode(tiny_tokenizer, stream_text))
    block = 16

    meta = pretrain(tiny_tokenizer_dir, source, tmp_path / "all", "--max-length", block, "--dev-num", 0)

    counts = meta["counts"]
    assert (counts["documents"], counts["empty_lines"], counts["tokens"]) == (25, 10, total_tokens)
    assert counts["blocks_train"] == total_tokens // block and counts["tokens_dropped"] == total_tokens % block
    assert counts["blocks_train"] * block + counts["tokens_dropped"] == counts["tokens"] and counts["blocks_valid"] == 0
    train = load_from_disk(str(tmp_path / "all"))["train"]
    assert train.features["input_ids"].feature.dtype == "int32"
    assert all(len(ids) == block for ids in train["input_ids"])
    flat = [token for ids in train["input_ids"] for token in ids]
    decoded = decode(tiny_tokenizer, flat)
    assert stream_text.startswith(decoded) and len(stream_text) > len(decoded)
    assert decoded.startswith("the first line\nthe second line<|endoftext|>a small red bird<|endoftext|>")
    assert "one two three\n\nfour five" in decoded and MARKER not in decoded
    assert flat.count(tiny_tokenizer.eos_token_id) == decoded.count("<|endoftext|>") >= 20

    meta = pretrain(tiny_tokenizer_dir, source, tmp_path / "split", "--max-length", block, "--dev-num", 3, "--data-process-workers", 2)
    split = load_from_disk(str(tmp_path / "split"))
    assert (meta["counts"]["blocks_train"], meta["counts"]["blocks_valid"]) == (len(split["train"]), 3) == (len(train) - 3, 3)
    held_out_and_kept = sorted(map(tuple, list(split["train"]["input_ids"]) + list(split["valid"]["input_ids"])))
    assert held_out_and_kept == sorted(map(tuple, train["input_ids"]))

    meta = pretrain(tiny_tokenizer_dir, source, tmp_path / "capped", "--max-length", block, "--dev-num", 1, "--max-docs", 4)
    assert meta["counts"]["documents"] == 4 and meta["counts"]["empty_lines"] == 2
    assert meta["counts"]["tokens"] == len(encode(tiny_tokenizer, "".join(text + "<|endoftext|>" for text in texts[:4])))


# Issue #14: late tracebacks and silent acceptance --------------------------------------------------


def test_invalid_utf8_names_file_and_line_or_is_skipped(tmp_path, tiny_tokenizer_dir):
    source = tmp_path / "raw.jsonl"
    good = [json.dumps(row).encode() + b"\n" for row in HAND_ROWS]
    source.write_bytes(good[0] + b'{"instruction": "caf\xe9", "output": "x"}\n' + good[1] + good[2])

    assert dolly_error(tiny_tokenizer_dir, source, tmp_path / "out", "--dev-num", 0) == (
        f"error: {source}:2: invalid UTF-8 (byte 0xe9 at column 21)"
    )
    meta = dolly(tiny_tokenizer_dir, source, tmp_path / "out", "--dev-num", 0, "--skip-invalid")
    assert meta["counts"]["skipped_invalid"] == 1 and meta["counts"]["kept"] == 3
    assert meta["skipped_lines"] == [[2, "invalid UTF-8 (byte 0xe9 at column 21)"]]


def test_pretrain_invalid_utf8_names_file_and_line(tmp_path, tiny_tokenizer_dir):
    source = tmp_path / "data.txt"
    source.write_bytes(b"a first document\n\nsecond \xff document\n")
    with pytest.raises(SystemExit) as exit_info:
        process_data_pretrain.main(command_line(tiny_tokenizer_dir, source, tmp_path / "out", ["--max-length", 4, "--dev-num", 0]))
    assert exit_info.value.code == f"error: {source}:3: invalid UTF-8 (byte 0xff at column 8)"


def test_nothing_left_because_every_prompt_is_too_long_says_so(tmp_path, tiny_tokenizer_dir):
    source = write_rows(tmp_path / "raw.jsonl", HAND_ROWS)
    message = dolly_error(tiny_tokenizer_dir, source, tmp_path / "out", "--max-prompt-length", 8, "--max-length", 8, "--dev-num", 0)
    assert message == (
        f"error: {source}: no example left to write: every one of the 3 prompts fills --max-length 8 (prompts are kept up to "
        "--max-prompt-length 8 tokens), leaving no room for a response; raise --max-length or lower --max-prompt-length"
    )


def test_duplicates_are_counted_and_never_on_both_sides_of_the_split(tmp_path, tiny_tokenizer_dir, capsys):
    rows = write_instruction_jsonl(tmp_path / "unique.jsonl", 10, seed=4)
    source = write_rows(tmp_path / "raw.jsonl", rows + rows[:6])  # 6 examples twice

    meta = dolly(tiny_tokenizer_dir, source, tmp_path / "out", "--dev-num", 5, "--seed", 1)
    dataset = load_from_disk(str(tmp_path / "out"))
    key = lambda example: (example["prompt"], tuple(example["references"]))  # noqa: E731
    valid = {key(example) for example in dataset["valid"]}
    train = [key(example) for example in dataset["train"]]
    assert not valid & set(train)
    counts = meta["counts"]
    assert counts["duplicates"] == 6 and counts["kept"] == 16 and counts["valid"] == 5
    dropped = 16 - 5 - len(train)
    # The valid split is lines 1-5; their copies on lines 11-15 leave train (line 16 copies line 6).
    assert dropped == 5 and counts["train_dropped_as_in_valid"] == dropped and counts["train"] == len(train) == 6
    out = capsys.readouterr().out
    assert "6 examples repeat an earlier one" in out and f"dropped {dropped} train examples that also occur in the valid split" in out


def test_pretrain_counts_duplicate_documents_and_keeps_valid_blocks_out_of_train(tmp_path, tiny_tokenizer_dir, tiny_tokenizer):
    text = "the quick red fox and the slow blue dog"
    block = len(encode(tiny_tokenizer, text + "<|endoftext|>"))
    source = tmp_path / "data.txt"
    source.write_text((text + "\n") * 6)  # every block is the same document

    meta = pretrain(tiny_tokenizer_dir, source, tmp_path / "out", "--max-length", block, "--dev-num", 2)
    counts = meta["counts"]
    assert counts["duplicate_documents"] == 5
    assert (counts["blocks_valid"], counts["blocks_train"], counts["blocks_train_dropped_as_in_valid"]) == (2, 0, 4)
    assert len(load_from_disk(str(tmp_path / "out"))["train"]) == 0


def test_lone_surrogates_and_non_string_fields_name_file_and_line(tmp_path, tiny_tokenizer_dir):
    """JSON's "\\ud800" decodes to a lone surrogate that no tokenizer can encode (before: a crash
    without file or line); `"input": 0` read as no input; both are refused, or skipped and counted."""
    source = tmp_path / "raw.jsonl"
    rows = [json.dumps(row) for row in HAND_ROWS]
    bad = [r'{"instruction": "Say \ud800 hi", "output": "x"}', '{"instruction": "Add.", "input": 0, "output": "1"}',
           '{"instruction": "A", "output": "ok \\udfff"}', '{"instruction": 7, "output": "x"}', '{"prompt": ["a"], "output": "x"}']
    messages = [
        "field 'instruction' holds a lone surrogate (U+D800 at character 5), which is not Unicode text",
        "field 'input' must be a string, got 0",
        "field 'output' holds a lone surrogate (U+DFFF at character 4)",
        "field 'instruction' must be a string, got 7",
        "field 'prompt' must be a string, got ['a']",
    ]
    for line, message in zip(bad, messages):
        source.write_text("\n".join([rows[0], line, rows[1]]) + "\n")
        assert dolly_error(tiny_tokenizer_dir, source, tmp_path / "out", "--dev-num", 0).startswith(f"error: {source}:2: {message}")
    source.write_text("\n".join([rows[0], *bad, rows[1], '{"instruction": "B", "input": null, "output": "y"}']) + "\n")
    meta = dolly(tiny_tokenizer_dir, source, tmp_path / "out", "--dev-num", 0, "--skip-invalid")
    assert meta["counts"]["skipped_invalid"] == len(bad) and meta["counts"]["kept"] == 3  # a null input is no input
    assert [line for line, _ in meta["skipped_lines"]] == list(range(2, 2 + len(bad)))
