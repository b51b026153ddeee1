#!/usr/bin/env bash
# PromptKD with the alpha-beta divergence (ABKD) on one dataset: every (ab_alpha, ab_beta) of the grid
# START..END in steps of ALPHA_STEP/BETA_STEP (both ends included), one run per seed each, then the
# base/new/HM table averaged over the seeds. Needs the dataset's teacher prompts (train_teacher).
# Usage: bash scripts/clip/train_ab.sh [DATASET] [DATA_ROOT] [GPU_NUM] [ALPHA_START ALPHA_END BETA_START BETA_END]
#   DRY_RUN=1 prints the commands instead of running them
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/defaults.sh"

ALPHAS=$(grid "${4:-0.8}" "${5:-0.8}" "${ALPHA_STEP:-0.1}")
BETAS=$(grid "${6:-0.2}" "${7:-0.2}" "${BETA_STEP:-0.1}")
for alpha in ${ALPHAS}; do
    for beta in ${BETAS}; do
        train_seeds "ab/a${alpha}_b${beta}" --distill ab --ab_alpha "${alpha}" --ab_beta "${beta}"
    done
done
summarize
