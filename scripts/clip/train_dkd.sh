#!/usr/bin/env bash
# PromptKD with DKD as ABKD's base2new_train_dkd.sh: KD weight 100, NCKD weight 0.5 and 1, one-epoch
# warm-up, ground-truth target class; one run per seed and weight, then the base/new/HM table.
# Usage: bash scripts/clip/train_dkd.sh [DATASET] [DATA_ROOT] [GPU_NUM]   (DRY_RUN=1 prints the commands)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/defaults.sh"

for beta in 0.5 1.0; do
    train_seeds "dkd/beta${beta}" --distill dkd --kd-weight 100.0 --dkd-alpha 1.0 --dkd-beta "${beta}" --dkd-warmup 1
done
summarize
