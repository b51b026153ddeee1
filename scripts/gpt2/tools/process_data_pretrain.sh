#!/usr/bin/env bash
# Tokenise a pre-training corpus (data/openwebtext/data.txt, one document per line) into blocks of
# MAX_LENGTH tokens for the GPT-2 family's language-modelling loss.
# Usage: bash scripts/gpt2/tools/process_data_pretrain.sh [BASE_PATH]   (DRY_RUN=1 prints the command)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../launch.sh"

BASE_PATH=${1:-$(pwd)}
MODEL_PATH="${BASE_PATH}/checkpoints/gpt2-large/"  # only its tokenizer is read
DATA_DIR="${BASE_PATH}/data/openwebtext/"
MAX_LENGTH=512
OUTPUT_DIR="${BASE_PATH}/processed_data/openwebtext/gpt2/${MAX_LENGTH}/"
DEV_NUM=10000
WORKERS=4

run_module tools.process_data_pretrain \
    --data-dir "${DATA_DIR}" \
    --processed-data-dir "${OUTPUT_DIR}" \
    --model-path "${MODEL_PATH}" \
    --max-length "${MAX_LENGTH}" \
    --dev-num "${DEV_NUM}" \
    --data-process-workers "${WORKERS}"
