#!/usr/bin/env bash
# Tokenise Dolly (data/dolly/raw.jsonl) for the GPT-2 family: every GPT-2 size shares one tokenizer,
# so the output serves the teacher and all students.
# Usage: bash scripts/gpt2/tools/process_data_dolly.sh [BASE_PATH]   (DRY_RUN=1 prints the command)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../launch.sh"

BASE_PATH=${1:-$(pwd)}
MODEL_PATH="${BASE_PATH}/checkpoints/gpt2-large/"  # only its tokenizer is read
DATA_DIR="${BASE_PATH}/data/dolly/"
OUTPUT_DIR="${BASE_PATH}/processed_data/dolly/full/gpt2/"
MAX_PROMPT_LENGTH=256
MAX_LENGTH=512
DEV_NUM=1000
WORKERS=4

run_module tools.process_data_dolly \
    --data-dir "${DATA_DIR}" \
    --processed-data-dir "${OUTPUT_DIR}" \
    --model-path "${MODEL_PATH}" \
    --max-prompt-length "${MAX_PROMPT_LENGTH}" \
    --max-length "${MAX_LENGTH}" \
    --dev-num "${DEV_NUM}" \
    --data-process-workers "${WORKERS}"
