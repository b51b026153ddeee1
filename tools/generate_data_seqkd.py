"""SeqKD data: the teacher answers every training prompt, and the answers become the targets.

    python -m tools.generate_data_seqkd --model-path TEACHER --data-dir processed_data/dolly/full/gpt2 \
        --processed-data-dir processed_data/dolly/seqkd/gpt2-xlarge

Reads a processed dataset (`tools.process_data_dolly`), generates a response to each `train`
prompt with the teacher (issue 5's generator: vLLM on CUDA when installed, else Hugging Face),
and writes a dataset in the same format whose `response_ids` are the teacher's generation plus
EOS (references keep the original answers). The `valid` split is copied unchanged, so validation
still measures the real data. `--type seqkd` then trains on it with cross-entropy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from distillation_llm.data import load_processed, tokenizer_fingerprint
from distillation_llm.generation import GenerationSettings, add_generation_args, generate, resolve_backend, settings_from_args
from distillation_llm.models import load_causal_lm, load_tokenizer
from tools._common import ProcessingError, existing_output, fingerprint, save_atomically


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.generate_data_seqkd", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", required=True, help="local teacher checkpoint that generates the targets")
    parser.add_argument("--data-dir", required=True, help="processed dataset whose train prompts the teacher answers")
    parser.add_argument("--processed-data-dir", required=True, help="output directory for the SeqKD dataset")
    parser.add_argument("--max-prompt-length", type=int, default=256, help="prompts longer than this keep their first tokens for generation, as DistiLLM")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per generation batch")
    parser.add_argument("--seed", type=int, default=42, help="generation seed")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing SeqKD dataset made with other settings")
    add_generation_args(parser, GenerationSettings(do_sample=True, max_new_tokens=256))
    return parser


def generate_seqkd(args: argparse.Namespace) -> dict:
    import datasets

    tokenizer = load_tokenizer(args.model_path)
    data, source_meta = load_processed(args.data_dir, tokenizer)
    settings = settings_from_args(args, args.seed)
    out = Path(args.processed_data_dir)
    digest = fingerprint(source=source_meta.get("fingerprint"), teacher=str(Path(args.model_path).resolve()), generation=vars(settings), max_prompt_length=args.max_prompt_length)
    existing = existing_output(out, digest, args.overwrite)
    if existing is not None:
        print(f"{out} already holds this SeqKD dataset: nothing to do")
        return existing

    backend = resolve_backend(args.backend, settings.no_repeat_ngram_size)
    teacher = args.model_path if backend == "vllm" else load_causal_lm(args.model_path)
    train = data["train"]
    output = generate(teacher, tokenizer, [list(p) for p in train["prompt_ids"]], settings, batch_size=args.batch_size, max_prompt_length=args.max_prompt_length, backend=backend)
    eos = tokenizer.eos_token_id
    responses = [list(ids) + ([eos] if len(ids) < settings.max_new_tokens else []) for ids in output.token_ids]
    empty = sum(1 for ids in output.token_ids if not ids)
    generated = train.remove_columns("response_ids").add_column("response_ids", responses).cast(train.features)
    splits = {"train": generated, **({"valid": data["valid"]} if "valid" in data else {})}
    meta = {
        **source_meta,
        # The targets are the teacher's token ids (load_processed has checked that they mean what the source's do).
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "fingerprint": digest,
        "seqkd": {
            "teacher": str(Path(args.model_path).resolve()),
            "source": str(Path(args.data_dir).resolve()),
            "generation": vars(settings),
            "backend": backend,
            "prompts_truncated": output.prompt_truncated,
            "empty_responses": empty,
        },
    }
    save_atomically(datasets.DatasetDict(splits), meta, out)
    print(f"wrote {len(generated)} teacher-generated responses ({empty} empty, {output.prompt_truncated} prompts truncated) to {out}")
    return meta


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        generate_seqkd(args)
    except (ProcessingError, FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
