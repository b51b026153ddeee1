#!/usr/bin/env bash
# Evaluate one or more checkpoints on instruction-following sets (default all five: dolly, self-inst, vicuna,
# sinst, uinst): sampled answers at temperature 1 under five seeds, ROUGE-L as mean ± std. With several
# models it also writes SAVE/comparison.csv and SAVE/comparison.png. The eval_main_<set>.sh scripts run it on one set.
# Usage: bash scripts/gpt2/eval/run_eval.sh [BASE_PATH] [MODEL_PATHS] [EVAL_SETS] [SAVE]   (DRY_RUN=1 prints the command)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../launch.sh"

BASE_PATH=${1:-$(pwd)}
# Comma-separated model directories and/or glob patterns (expanded by the evaluator, keep the quotes);
# by default GPT-2 base after SFT, KD and every alpha-beta run of the ab sweep.
TRAIN="${BASE_PATH}/results/gpt2/train"
MODEL_PATHS=${2:-"${TRAIN}/sft/gpt2-base/best,${TRAIN}/kd/0.1B_1.5B/best,${TRAIN}/ab/0.1B_1.5B/*/best"}
EVAL_SETS=${3:-dolly,self-inst,vicuna,sinst,uinst}
SAVE=${4:-"${BASE_PATH}/results/gpt2/eval_main"}
DATA_DIR="${BASE_PATH}/data"  # holds <set>/valid.jsonl

run_module distillation_llm.evaluate --model-path "${MODEL_PATHS}" --data-dir "${DATA_DIR}" --eval-sets "${EVAL_SETS}" \
    --seeds 10,20,30,40,50 --eval-batch-size 16 --max-prompt-length 256 --max-new-tokens 256 --save "${SAVE}"
