#!/usr/bin/env bash
# Evaluate one or more checkpoints on the five instruction-following sets (dolly, self-inst, vicuna,
# sinst, uinst): sampled answers at temperature 1 under five seeds, ROUGE-L as mean ± std.
# With several models it also writes SAVE/comparison.csv and SAVE/comparison.png.
# Usage: bash scripts/gpt2/eval/run_eval.sh [BASE_PATH]
set -euo pipefail

BASE_PATH=${1:-$(pwd)}
# Comma-separated model directories and/or glob patterns (expanded by the evaluator, keep the quotes);
# here GPT-2 base after SFT, KD and every alpha-beta run of the ab sweep.
TRAIN="${BASE_PATH}/results/gpt2/train"
MODEL_PATHS="${TRAIN}/sft/gpt2-base/best,${TRAIN}/kd/0.1B_1.5B/best,${TRAIN}/ab/0.1B_1.5B/*/best"
DATA_DIR="${BASE_PATH}/data"  # holds <set>/valid.jsonl
SAVE="${BASE_PATH}/results/gpt2/eval_main"
EVAL_SETS="dolly,self-inst,vicuna,sinst,uinst"
SEEDS="10,20,30,40,50"
EVAL_BATCH_SIZE=16
MAX_PROMPT_LENGTH=256
MAX_NEW_TOKENS=256

python -m distillation_llm.evaluate \
    --model-path "${MODEL_PATHS}" \
    --data-dir "${DATA_DIR}" \
    --eval-sets "${EVAL_SETS}" \
    --seeds "${SEEDS}" \
    --eval-batch-size "${EVAL_BATCH_SIZE}" \
    --max-prompt-length "${MAX_PROMPT_LENGTH}" \
    --max-new-tokens "${MAX_NEW_TOKENS}" \
    --save "${SAVE}"
