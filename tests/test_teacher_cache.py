"""The offline teacher (issue 18): `tools.cache_teacher_logits` caches the teacher's top K on every
response token, and `finetune --teacher-cache` distils from it without loading the teacher.

With K = V the cached (K + 1)-bucket distribution is the teacher's whole distribution, so a run
from the cache must train exactly as a run with the online teacher; a cache made for other data,
another tokenizer, length or temperature is refused; an interrupted build, run again, ends with
the files of an uninterrupted one."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from abkd.losses import DIVERGENCES
from abkd.run import ResumeMismatch, resume_changes
from distillation_llm import finetune
from distillation_llm.arguments import args_record, parse_args
from distillation_llm.checks import run_checks
from distillation_llm.data import IGNORE_INDEX, InstructionCollator, load_processed
from distillation_llm.teacher_cache import TeacherCache
from tools import cache_teacher_logits

MAX_LENGTH, MAX_PROMPT_LENGTH = 96, 64


def _process(root, tokenizer_dir, dev_num=8):
    from conftest import write_instruction_jsonl

    from tools import process_data_dolly

    write_instruction_jsonl(root / "raw" / "raw.jsonl", 80, seed=4)
    out = root / f"processed-{dev_num}"
    process_data_dolly.main([
        "--data-dir", str(root / "raw"), "--processed-data-dir", str(out), "--model-path", str(tokenizer_dir),
        "--max-prompt-length", str(MAX_PROMPT_LENGTH), "--max-length", str(MAX_LENGTH), "--dev-num", str(dev_num),
    ])
    return out


@pytest.fixture(scope="module")
def processed_dir(tmp_path_factory, tiny_tokenizer_dir):
    return _process(tmp_path_factory.mktemp("cache-data"), tiny_tokenizer_dir)  # 72 train, 8 valid


def _build(out, data, teacher, *extra):
    cache_teacher_logits.main(["--teacher-model-path", str(teacher), "--data-dir", str(data), "--out", str(out), "--batch-size", "8", *map(str, extra)])
    return out


@pytest.fixture(scope="module")
def full_cache(tmp_path_factory, processed_dir, tiny_gpt2_teacher_dir, tiny_tokenizer):
    """K = V in float32: the whole teacher distribution."""
    out = tmp_path_factory.mktemp("cache") / "full"
    return _build(out, processed_dir, tiny_gpt2_teacher_dir, "--top-k", len(tiny_tokenizer), "--dtype", "float32", "--temperatures", "1,2")


@pytest.fixture(scope="module")
def topk_cache(tmp_path_factory, processed_dir, tiny_gpt2_teacher_dir):
    out = tmp_path_factory.mktemp("cache") / "k16"
    return _build(out, processed_dir, tiny_gpt2_teacher_dir, "--top-k", 16, "--temperatures", "1,2", "--shard-size", 16)


def test_the_cache_holds_the_teachers_top_k_and_tail_mass(topk_cache, processed_dir, tiny_gpt2_teacher_dir, tiny_tokenizer):
    """Recomputed here example by example, unpadded, in float64 from the teacher's own forward (on
    every third example of each split, and the first of each shard; the token counts on all)."""
    import datasets
    from transformers import AutoModelForCausalLM

    meta = json.loads((topk_cache / "meta.json").read_text())
    assert meta["top_k"] == 16 and meta["temperatures"] == [1.0, 2.0] and meta["dtype"] == "float16"
    assert [len(split["shards"]) for split in meta["splits"].values()] == [5, 1]  # 72 train examples in shards of 16, 8 valid
    data = datasets.load_from_disk(str(processed_dir))
    teacher = AutoModelForCausalLM.from_pretrained(tiny_gpt2_teacher_dir).eval().double()
    cache = TeacherCache.open(topk_cache)
    vocab = len(tiny_tokenizer)
    tokens = 0
    for split in ("train", "valid"):
        for number, row in enumerate(data[split]):
            sequence = (row["prompt_ids"] + row["response_ids"])[:MAX_LENGTH]
            positions = range(max(len(row["prompt_ids"]) - 1, 0), len(sequence) - 1)
            tokens += len(positions)
            if number % 3 and number % 16:
                assert cache.rows([row["id"]], [len(positions)])["teacher_top_ids"].shape == (len(positions), 16)
                continue
            with torch.no_grad():
                logits = teacher(torch.tensor([sequence])).logits[0, list(positions), :vocab]
            cached = cache.rows([row["id"]], [len(positions)])
            top_ids, top_logits = cached["teacher_top_ids"].long(), cached["teacher_top_logits"].double()
            expected, _ = logits.topk(16, dim=-1)
            # The stored ids are the top 16 (ties aside: their logits are the 16 largest) ...
            torch.testing.assert_close(logits.gather(-1, top_ids), expected, rtol=0, atol=1e-5)
            # ... the logits minus the row maximum, in float16 ...
            torch.testing.assert_close(top_logits, expected - expected[:, :1], rtol=1e-3, atol=1e-3)
            for index, temperature in enumerate((1.0, 2.0)):
                log_p = torch.log_softmax(logits / temperature, dim=-1)
                tail = torch.log1p(-log_p.gather(-1, top_ids).exp().sum(-1))
                torch.testing.assert_close(cached["teacher_tail_log_mass"][:, index].double(), tail, rtol=1e-4, atol=1e-5)
    assert meta["splits"]["train"]["tokens"] + meta["splits"]["valid"]["tokens"] == tokens
    # Each shard is an Arrow file that `datasets` opens as it is.
    shard = datasets.Dataset.from_file(str(topk_cache / meta["splits"]["train"]["shards"][0]["file"]))
    assert len(shard) == 16 and shard[0]["id"] == data["train"][0]["id"]


def test_an_interrupted_build_resumes_to_the_same_files(tmp_path, monkeypatch, processed_dir, tiny_gpt2_teacher_dir, topk_cache):
    args = ("--top-k", 16, "--temperatures", "1,2", "--shard-size", 16)
    calls, teacher_rows = [], cache_teacher_logits.teacher_rows

    def failing(*arguments, **kwargs):  # the 4th teacher batch is the second of shard 2: shard 1 is complete
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return teacher_rows(*arguments, **kwargs)

    monkeypatch.setattr(cache_teacher_logits, "teacher_rows", failing)
    out = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        _build(out, processed_dir, tiny_gpt2_teacher_dir, *args)
    assert not (out / "meta.json").exists() and (out / "train" / "00000.json").is_file() and not (out / "train" / "00001.json").exists()
    with pytest.raises(FileNotFoundError, match="unfinished build"):
        TeacherCache.open(out)
    monkeypatch.setattr(cache_teacher_logits, "teacher_rows", teacher_rows)
    _build(out, processed_dir, tiny_gpt2_teacher_dir, *args)

    def files(root):
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}

    assert files(out) == files(topk_cache)
    for name in files(out) - {"meta.json"}:
        assert (out / name).read_bytes() == (topk_cache / name).read_bytes(), name
    resumed, uninterrupted = (json.loads((root / "meta.json").read_text()) for root in (out, topk_cache))
    assert resumed.pop("build")["resumed_shards"] == 1 and uninterrupted.pop("build")["resumed_shards"] == 0
    assert resumed == uninterrupted


def test_a_folder_holding_another_cache_is_refused(tmp_path, processed_dir, tiny_gpt2_teacher_dir, topk_cache):
    out = tmp_path / "cache"
    shutil.copytree(topk_cache, out)
    for extra in (("--top-k", 32, "--temperatures", "1,2"), ("--top-k", 16, "--temperatures", "1")):
        with pytest.raises(SystemExit, match="holds a teacher cache built with other settings .they differ in: (top_k|temperatures)"):
            _build(out, processed_dir, tiny_gpt2_teacher_dir, *extra, "--shard-size", 16)
    assert (out / "meta.json").read_bytes() == (topk_cache / "meta.json").read_bytes()


# float32 on every device: the cache is built in float32, and on CUDA the default config would train
# (and run the online teacher) in bf16.
FP32_CONFIG = Path(__file__).parent / "data" / "ds_config_fp32.json"


def _argv(save, processed, student, *extra):
    return [
        "--model-path", str(student), "--data-dir", str(processed), "--save", str(save), "--do-train", "--batch-size", "4", "--lr", "5e-3",
        "--deepspeed_config", str(FP32_CONFIG),
        "--log-interval", "1", "--seed", "3", "--max-length", str(MAX_LENGTH), "--max-prompt-length", str(MAX_PROMPT_LENGTH), "--total-iters", "3",
        *map(str, extra),
    ]


RUNS = {
    "fkl": ("--type", "kd", "--do-valid"),
    "ab": ("--type", "ab", "--ab_alpha", 0.2, "--ab_beta", 0.7, "--kd-temperature", 2),
    "srkl": ("--type", "srkl", "--kd-ratio", 0.7),
}


@pytest.mark.parametrize("divergence", list(RUNS))
def test_training_from_a_full_cache_equals_the_online_teacher(divergence, tmp_path, monkeypatch, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, full_cache):
    """Dropout on: the online teacher runs in eval mode, as the cache's did, and the student's masks are the same.

    The cache's teacher ran on other batches (other padding), so its log-probabilities differ from
    the online teacher's by float32 rounding (~1e-6 absolute, one ulp); Adam divides each step by
    sqrt(v), which amplifies such differences on parameters whose gradient is near 0. Measured: the
    online run with its teacher's hidden states perturbed by 1e-7 relative noise ends 8.8e-6 away
    from itself after these 3 steps. The loss and gradients themselves are compared tightly, batch
    by batch, in the next test."""
    finetune.main(_argv(tmp_path / "online", processed_dir, tiny_gpt2_dir, *RUNS[divergence], "--teacher-model-path", tiny_gpt2_teacher_dir))
    loaded = []
    load_causal_lm = finetune.load_causal_lm
    monkeypatch.setattr(finetune, "load_causal_lm", lambda path, **kwargs: loaded.append(path) or load_causal_lm(path, **kwargs))
    finetune.main(_argv(tmp_path / "cached", processed_dir, tiny_gpt2_dir, *RUNS[divergence], "--teacher-cache", full_cache))
    assert [str(path) for path in loaded] == [str(tiny_gpt2_dir)]  # only the student: no teacher weights read
    online, cached = (load_file(tmp_path / run / "3" / "model.safetensors") for run in ("online", "cached"))
    assert max((online[k] - load_file(tiny_gpt2_dir / "model.safetensors")[k]).abs().max() for k in online) > 1e-4
    assert max((online[k] - cached[k]).abs().max().item() for k in online) <= 5e-5
    log = (tmp_path / "cached" / "log.txt").read_text()
    assert "the teacher is not loaded" in log
    if "--do-valid" in RUNS[divergence]:
        online_log = (tmp_path / "online" / "log.txt").read_text()
        valid = [line.split("valid ")[-1] for text in (online_log, log) for line in text.splitlines() if "valid_kd" in line]
        assert len(valid) == 2 and valid[0] == valid[1]


@pytest.mark.parametrize("full_logits", [False, True], ids=["fused", "full-logits"])
@pytest.mark.parametrize("name", DIVERGENCES)
def test_every_divergence_from_a_full_cache_equals_the_online_loss(name, full_logits, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, tiny_tokenizer, full_cache):
    """Loss, its parts and every gradient of one batch, on the fused and the full-logits path."""
    from distillation_llm.models import load_causal_lm
    from distillation_llm.objective import Objective

    params = {"ab": {"alpha": 0.2, "beta": 0.7}, "jsd": {"lam": 0.1}, "sfkl": {"lam": 0.1}, "srkl": {"lam": 0.1}}.get(name, {})
    student = load_causal_lm(tiny_gpt2_dir).eval()  # no dropout: the two passes must see the same network
    teacher = load_causal_lm(tiny_gpt2_teacher_dir).eval()
    cache = TeacherCache.open(full_cache)
    train = load_processed(processed_dir)[0]["train"]
    collate = cache.collator(InstructionCollator(tiny_tokenizer.pad_token_id, MAX_LENGTH))
    batch = collate([train[i] for i in range(6)])
    results = []
    for source in ({"teacher": teacher}, {"teacher": None, "teacher_cache": cache}):
        objective = Objective(student, divergence=name, params=params, kd_ratio=0.6, temperature=2.0, vocab=len(tiny_tokenizer), full_logits=full_logits, **source)
        student.zero_grad()
        out = objective(batch)
        out.loss.backward()
        results.append((out, {n: p.grad.clone() for n, p in student.named_parameters()}))
    (online, online_grads), (cached, cached_grads) = results
    for a, b in zip(online, cached):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
    for key in online_grads:
        torch.testing.assert_close(cached_grads[key], online_grads[key], rtol=1e-5, atol=1e-7)


def test_buckets_follow_the_label_positions(topk_cache, processed_dir, tiny_tokenizer):
    cache = TeacherCache.open(topk_cache)
    train = load_processed(processed_dir)[0]["train"]
    batch = cache.collator(InstructionCollator(tiny_tokenizer.pad_token_id, MAX_LENGTH))([train[i] for i in (3, 0, 5)])
    buckets = cache.buckets(batch, 2.0)
    mask = batch["labels"] != IGNORE_INDEX
    assert buckets.ids.shape == (*mask.shape, 16) and buckets.log_probs.shape == (*mask.shape, 17)
    assert buckets.ids.dtype == torch.int64 and buckets.log_probs.dtype == torch.float32
    torch.testing.assert_close(buckets.log_probs.exp().sum(-1), torch.ones(mask.shape))
    # Example 0's rows land on its own label positions, in order.
    single = cache.rows([train[0]["id"]], [int(mask[1].sum())])
    assert torch.equal(buckets.ids[1][mask[1]], single["teacher_top_ids"].long())
    with pytest.raises(ValueError, match="not 3"):
        cache.buckets(batch, 3.0)


def _checked(argv, tokenizer):
    args = parse_args([str(arg) for arg in argv])
    run_checks(args, tokenizer, warn=lambda message: None)


def test_a_cache_for_other_data_tokenizer_length_or_temperature_is_refused(
    tmp_path, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, tiny_tokenizer, tiny_tokenizer_dir, topk_cache
):
    base = _argv(tmp_path / "run", processed_dir, tiny_gpt2_dir, "--type", "kd", "--teacher-cache", topk_cache)
    _checked(base, tiny_tokenizer)  # the cache fits this run
    _checked([*base, "--do-valid", "--kd-temperature", 2], tiny_tokenizer)
    other_data = _process(tmp_path, tiny_tokenizer_dir, dev_num=12)
    with pytest.raises(ValueError, match=f"--teacher-cache {topk_cache} was built for another dataset .* than --data-dir {other_data}"):
        _checked([*base, "--data-dir", other_data], tiny_tokenizer)
    with pytest.raises(ValueError, match="at temperatures 1, 2, but this run distils at 1.5: build it with --temperatures 1.5"):
        _checked([*base, "--kd-temperature", 1.5], tiny_tokenizer)
    pocl = ("--curriculum", "pocl", "--ranking", tmp_path / "ranking.jsonl", "--num-stages", 3)
    with pytest.raises(ValueError, match="distils at 1.5: build it with --temperatures 1,1.5,2"):
        _checked([*base, *pocl], tiny_tokenizer)
    with pytest.raises(ValueError, match="cut to 96 tokens, but this run's --max-length is 80"):
        _checked([*base, "--max-length", 80], tiny_tokenizer)
    _checked([*base, "--max-length", 512], tiny_tokenizer)  # the data is already cut to 96: same positions
    other_tokenizer = tmp_path / "other-tokenizer-cache"
    shutil.copytree(topk_cache, other_tokenizer)
    meta = json.loads((other_tokenizer / "meta.json").read_text())
    (other_tokenizer / "meta.json").write_text(json.dumps({**meta, "tokenizer_fingerprint": "0" * 64}))
    with pytest.raises(ValueError, match="was built with another tokenizer"):
        _checked([*base, "--teacher-cache", other_tokenizer], tiny_tokenizer)
    train_only = tmp_path / "train-only"
    _build(train_only, processed_dir, tiny_gpt2_teacher_dir, "--top-k", 4, "--splits", "train")
    with pytest.raises(ValueError, match="has no valid split .* build it with --splits train,valid"):
        _checked([*base, "--teacher-cache", train_only, "--do-valid"], tiny_tokenizer)
    (train_only / "meta.json").unlink()
    with pytest.raises(SystemExit):
        parse_args([str(arg) for arg in (*base, "--teacher-cache", train_only)])
    with pytest.raises(FileNotFoundError, match="unfinished build"):
        TeacherCache.open(train_only)


def test_resume_refuses_another_cache(tmp_path, processed_dir, tiny_gpt2_dir, topk_cache, full_cache):
    first = args_record(parse_args(_argv(tmp_path, processed_dir, tiny_gpt2_dir, "--type", "kd", "--teacher-cache", topk_cache)))
    moved = tmp_path / "moved"
    shutil.copytree(full_cache, moved)  # another cache, now where the first one was found
    second = args_record(parse_args(_argv(tmp_path, processed_dir, tiny_gpt2_dir, "--type", "kd", "--teacher-cache", moved)))
    second["teacher_cache"] = first["teacher_cache"]
    with pytest.raises(ResumeMismatch, match="--teacher-cache-meta"):
        resume_changes(first, second, allow_changes=True)


@pytest.mark.parametrize("method", ["gkd", "imitkd", "distillm", "mixed-jsd", "adaptive-sfkl"])
def test_student_generated_methods_refuse_the_cache(method, tmp_path, capsys, processed_dir, tiny_gpt2_dir, topk_cache):
    argv = _argv(tmp_path, processed_dir, tiny_gpt2_dir, "--type", method, "--do-valid", "--teacher-cache", topk_cache)
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert "trains on the student's own samples" in capsys.readouterr().err
    parse_args([*argv, "--no-student-gen"])  # on the dataset alone the cache serves


def test_the_cache_replaces_the_teacher_flags(tmp_path, capsys, processed_dir, tiny_gpt2_dir, tiny_gpt2_teacher_dir, topk_cache):
    for extra, message in (
        (("--type", "kd", "--teacher-model-path", tiny_gpt2_teacher_dir), "replaces the teacher"),
        (("--type", "sft"), "trains the student alone: drop --teacher-cache"),
    ):
        with pytest.raises(SystemExit):
            parse_args(_argv(tmp_path, processed_dir, tiny_gpt2_dir, *extra, "--teacher-cache", topk_cache))
        assert message in capsys.readouterr().err


def test_tail_log_mass_is_minus_infinity_without_a_tail():
    logits = torch.randn(3, 7)
    _, ids = logits.topk(7, dim=-1)
    assert torch.all(cache_teacher_logits.tail_log_mass(logits, ids, 2.0) == -math.inf)
    _, ids = logits.topk(2, dim=-1)
    expected = torch.log1p(-torch.softmax(logits / 2.0, -1).gather(-1, ids).sum(-1))
    torch.testing.assert_close(cache_teacher_logits.tail_log_mass(logits, ids, 2.0), expected)


def test_launchers_build_the_cache_once_and_pass_it(tmp_path):
    """TEACHER_CACHE=... on an LLM launcher: the cache command (until the cache is complete), then
    finetune with --teacher-cache and without the teacher; POCL caches every stage's temperature."""
    from test_scripts import SCRIPTS, printed_commands

    from distillation_llm.arguments import build_parser
    from distillation_llm.checks import kd_temperatures
    from distillation_llm.teacher_cache import temperature_index

    cache = tmp_path / "cache"
    for script, extra in ((SCRIPTS / "gpt2" / "ab" / "train_0.1B_1.5B.sh", ()), (SCRIPTS / "gpt2" / "pocl" / "train_0.1B_1.5B.sh", ("--type", "ab"))):
        commands = printed_commands(script, tmp_path, *extra, env={"TEACHER_CACHE": str(cache), "CACHE_TOP_K": "64"})
        modules = [module for module, _ in commands]
        assert modules[0] == "tools.cache_teacher_logits" and modules[-1] == "distillation_llm.finetune", modules
        built = cache_teacher_logits.build_parser().parse_args(commands[0][1])
        trained = build_parser().parse_args(commands[-1][1])
        assert Path(built.out) == Path(trained.teacher_cache) == cache and trained.teacher_model_path is None and built.top_k == 64
        assert Path(built.data_dir) == Path(trained.data_dir) and built.max_length == trained.max_length
        assert all(temperature_index(built.temperatures, t) is not None for t in kd_temperatures(trained))
    cache.mkdir()
    (cache / "meta.json").write_text("{}")
    commands = printed_commands(SCRIPTS / "gpt2" / "ab" / "train_0.1B_1.5B.sh", tmp_path, env={"TEACHER_CACHE": str(cache)})
    assert [module for module, _ in commands] == ["distillation_llm.finetune"]


@pytest.mark.slow
def test_two_processes_build_the_same_cache(tmp_path, processed_dir, tiny_gpt2_teacher_dir, topk_cache):
    """torchrun: ranks take shards round-robin, rank 0 writes meta.json; the files equal one process's."""
    import os
    import socket
    import subprocess
    import sys

    from conftest import multiprocess_env

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "cache"
    repo = Path(__file__).resolve().parents[1]
    env = multiprocess_env(2, PYTHONPATH=os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])))
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port), "-m", "tools.cache_teacher_logits",
         "--teacher-model-path", str(tiny_gpt2_teacher_dir), "--data-dir", str(processed_dir), "--out", str(out), "--batch-size", "8",
         "--top-k", "16", "--temperatures", "1,2", "--shard-size", "16"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    meta = json.loads((out / "meta.json").read_text())
    assert meta.pop("build")["processes"] == 2
    expected = json.loads((topk_cache / "meta.json").read_text())
    expected.pop("build")
    assert meta == expected  # every shard's size and SHA-256 included


def _rebuild_argv(message: str) -> list[str]:
    """The arguments of the `python -m tools.cache_teacher_logits ...` command an error advises."""
    import shlex

    command = shlex.split(message.split("`")[1])
    assert command[:3] == ["python", "-m", "tools.cache_teacher_logits"]
    return command[3:]


def _ids_of_shard(cache: TeacherCache, index: int) -> list[int]:
    """The example ids of shard `index` (of meta.json's list), in their stored order."""
    return [example_id for example_id, (chunk, _, _) in cache._where.items() if cache._chunks[chunk].shard == index]


def _example_rows(cache: TeacherCache, example_id: int) -> dict:
    _, _, tokens = cache._where[example_id]
    return cache.rows([example_id], [tokens])


def test_a_damaged_shard_is_refused_and_the_advised_command_rebuilds_it(tmp_path, topk_cache):
    """A shard changed in place (same size) is refused on first use by its SHA-256, a truncated
    one at open; the command the error names rebuilds exactly the damaged shards (before, a
    finished cache was never looked at again: 'nothing to do')."""
    out = tmp_path / "cache"
    shutil.copytree(topk_cache, out)
    meta = json.loads((out / "meta.json").read_text())
    changed, truncated = (meta["splits"]["train"]["shards"][i]["file"] for i in (1, 3))
    data = bytearray((out / changed).read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = b"\xff" * 8  # float16 0xffff is NaN
    (out / changed).write_bytes(bytes(data))
    cache = TeacherCache.open(out)  # sizes match: opening reads only the example index
    _example_rows(cache, _ids_of_shard(cache, 0)[0])  # shard 0 is intact
    with pytest.raises(ValueError, match=rf"shard {out / changed} does not match the SHA-256 recorded in meta.json") as error:
        _example_rows(cache, _ids_of_shard(cache, 1)[0])
    argv = _rebuild_argv(str(error.value))
    (out / truncated).write_bytes((out / truncated).read_bytes()[:-100])
    with pytest.raises(ValueError, match=rf"shard {out / truncated} has \d+ bytes \(\d+ bytes were written\): .*rebuild the damaged shards with `python -m tools.cache_teacher_logits"):
        TeacherCache.open(out)
    cache_teacher_logits.main(argv)
    for name in (changed, truncated):
        assert (out / name).read_bytes() == (topk_cache / name).read_bytes(), name
    repaired, original = (json.loads((root / "meta.json").read_text()) for root in (out, topk_cache))
    assert repaired.pop("build")["resumed_shards"] == len(original["splits"]["train"]["shards"]) + 1 - 2
    original.pop("build")
    assert repaired == original
    cache, reference = TeacherCache.open(out), TeacherCache.open(topk_cache)
    for example_id in reference._where:
        for key, value in _example_rows(cache, example_id).items():
            assert torch.equal(value, _example_rows(reference, example_id)[key]), (example_id, key)


def _rewrite_shard(cache_dir: Path, shard_index: int, edit) -> int:
    """Rewrite train shard `shard_index` as the builder writes shards, with `edit(top_logits,
    tails)` applied to its first example's rows, and record its new size and SHA-256 in meta.json
    (so that only the values are wrong). Returns that example's id."""
    from distillation_llm.teacher_cache import record_batch, shard_name

    meta = json.loads((cache_dir / "meta.json").read_text())
    cache = TeacherCache(cache_dir, meta)
    ids = _ids_of_shard(cache, shard_index)
    counts = [cache._where[i][2] for i in ids]
    rows = cache.rows(ids, counts)
    top_logits, tails = rows["teacher_top_logits"].float().clone(), rows["teacher_tail_log_mass"].clone()
    edit(top_logits[: counts[0]], tails[: counts[0]])
    name = shard_name("train", shard_index)
    batch = record_batch(ids, counts, rows["teacher_top_ids"], top_logits, tails, meta["dtype"])
    record = cache_teacher_logits.write_shard(cache_dir, name, [batch], meta["dtype"])
    meta["splits"]["train"]["shards"][shard_index] = record
    (cache_dir / "meta.json").write_text(json.dumps(meta))
    return ids[0]


@pytest.mark.parametrize("value,column,problem", [
    (float("nan"), "logits", r"1 non-finite top-K logit value\(s\) \(NaN or \+inf\)"),
    (float("inf"), "tails", r"1 non-finite tail log-mass value\(s\)"),
    (float("-inf"), "first", "a row whose largest top-K logit is not 0"),
])
def test_a_non_finite_cached_value_is_refused_naming_shard_and_example(value, column, problem, tmp_path, topk_cache):
    out = tmp_path / "cache"
    shutil.copytree(topk_cache, out)

    def edit(top_logits, tails):
        if column == "logits":
            top_logits[1, 3] = value
        elif column == "tails":
            tails[0, 1] = value
        else:
            top_logits[2, 0] = value

    example_id = _rewrite_shard(out, 2, edit)
    cache = TeacherCache.open(out)  # the hashes match: only the values are wrong
    with pytest.raises(ValueError, match=rf"shard {out / 'train' / '00002.arrow'}, example id {example_id}: {problem}.*: delete {out} and build it again"):
        _example_rows(cache, example_id)
    assert _example_rows(cache, _ids_of_shard(cache, 0)[0])["teacher_top_logits"].isfinite().all()


def test_a_minus_infinite_logit_past_the_first_is_a_zero_probability(tmp_path, topk_cache):
    """-inf below the largest logit is a probability of 0 (a logit under float16's range): kept."""
    out = tmp_path / "cache"
    shutil.copytree(topk_cache, out)

    def edit(top_logits, tails):
        top_logits[0, -1] = float("-inf")

    example_id = _rewrite_shard(out, 0, edit)
    assert _example_rows(TeacherCache.open(out), example_id)["teacher_top_logits"][0, -1] == float("-inf")


def test_the_builder_refuses_a_non_finite_teacher_output(tmp_path, monkeypatch, processed_dir, tiny_gpt2_teacher_dir):
    teacher_rows = cache_teacher_logits.teacher_rows

    def nan_tails(*args, **kwargs):
        top_ids, top_logits, tails = teacher_rows(*args, **kwargs)
        return top_ids, top_logits, tails * float("nan")

    monkeypatch.setattr(cache_teacher_logits, "teacher_rows", nan_tails)
    out = tmp_path / "cache"
    with pytest.raises(SystemExit, match=r"--teacher-model-path .*: \d+ non-finite tail log-mass value\(s\) \(NaN or \+inf\) on train examples \[\d+, .*\] \(shard train/00000.arrow\)"):
        _build(out, processed_dir, tiny_gpt2_teacher_dir, "--top-k", 4, "--shard-size", 16)
    assert not (out / "train" / "00000.arrow").exists()
