#!/usr/bin/env bash
# Evaluate one checkpoint on the sinst set with run_eval.sh's settings, into results/gpt2/eval_main/sinst.
# Usage: bash scripts/gpt2/eval/eval_main_sinst.sh BASE_PATH MODEL_PATH   (DRY_RUN=1 prints the command)
set -euo pipefail

BASE_PATH=${1:-$(pwd)}
MODEL_PATH=${2:?"usage: $0 BASE_PATH MODEL_PATH"}
EVAL_SET="sinst"

bash "$(dirname "${BASH_SOURCE[0]}")/run_eval.sh" "${BASE_PATH}" "${MODEL_PATH}" "${EVAL_SET}" "${BASE_PATH}/results/gpt2/eval_main/${EVAL_SET}"
