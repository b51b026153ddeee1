#!/usr/bin/env bash
# Evaluate one checkpoint on the dolly set: sampled answers at temperature 1 under five seeds,
# ROUGE-L as mean ± std over them.
# Usage: bash scripts/gpt2/eval/eval_main_dolly.sh BASE_PATH MODEL_PATH
set -euo pipefail

BASE_PATH=${1:-$(pwd)}
MODEL_PATH=${2:?"usage: $0 BASE_PATH MODEL_PATH"}
EVAL_SET="dolly"
DATA_DIR="${BASE_PATH}/data"  # holds ${EVAL_SET}/valid.jsonl
SAVE="${BASE_PATH}/results/gpt2/eval_main/${EVAL_SET}"
SEEDS="10,20,30,40,50"
EVAL_BATCH_SIZE=16
MAX_PROMPT_LENGTH=256
MAX_NEW_TOKENS=256

python -m distillation_llm.evaluate \
    --model-path "${MODEL_PATH}" \
    --data-dir "${DATA_DIR}" \
    --eval-sets "${EVAL_SET}" \
    --seeds "${SEEDS}" \
    --eval-batch-size "${EVAL_BATCH_SIZE}" \
    --max-prompt-length "${MAX_PROMPT_LENGTH}" \
    --max-new-tokens "${MAX_NEW_TOKENS}" \
    --save "${SAVE}"
