#!/usr/bin/env bash
# PromptKD with TTM as ABKD's base2new_train_ttm.sh: KD weight 1000, lr 0.005 (that script's own), T = 1, the teacher's
# probabilities to the power TTM_L (default 0.1, ABKD's --ttm_l); one run per seed, then the base/new/HM table.
# Usage: bash scripts/clip/train_ttm.sh [DATASET] [DATA_ROOT] [GPU_NUM] [TTM_L]   (DRY_RUN=1 prints the commands)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/defaults.sh"

LR=0.005
train_seeds ttm --distill ttm --ttm_l "${4:-0.1}" --kd-weight 1000.0
summarize
