#!/usr/bin/env bash
# PromptKD with ABKD as ABKD's base2new_train_ab.sh: KD_WEIGHT (default 100) * mean_B D_AB, for every
# (ab_alpha, ab_beta) of the grid START..END in steps of ALPHA_STEP/BETA_STEP (ends included), one run
# per seed, then the base/new/HM table. Needs the dataset's teacher prompts.
# Usage: bash scripts/clip/train_ab.sh [DATASET] [DATA_ROOT] [GPU_NUM] [ALPHA_START ALPHA_END BETA_START BETA_END] [KD_WEIGHT]
#   DRY_RUN=1 prints the commands instead of running them
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/defaults.sh"

KD_WEIGHT=${8:-100.0}
ALPHAS=$(grid "${4:-0.5}" "${5:-0.5}" "${ALPHA_STEP:-0.1}")
BETAS=$(grid "${6:-0.5}" "${7:-0.5}" "${BETA_STEP:-0.1}")
for alpha in ${ALPHAS}; do
    for beta in ${BETAS}; do
        train_seeds "ab/a${alpha}_b${beta}" --distill ab --ab_alpha "${alpha}" --ab_beta "${beta}" --kd-weight "${KD_WEIGHT}"
    done
done
summarize
