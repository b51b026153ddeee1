#!/usr/bin/env bash
# PromptKD with DKD (decoupled KD, Zhao et al. CVPR 2022) on one dataset as ABKD's
# scripts/promptkd/base2new_train_dkd.sh runs it: KD weight 100, TCKD weight 1, NCKD weight 0.5 and 1,
# one-epoch warm-up, the ground-truth class as DKD's target; one run per seed and weight, then the
# base/new/HM table averaged over the seeds. Needs the dataset's teacher prompts (train_teacher).
# Usage: bash scripts/clip/train_dkd.sh [DATASET] [DATA_ROOT] [GPU_NUM]   (DRY_RUN=1 prints the commands)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/defaults.sh"

KD_WEIGHT=100.0
DKD_ALPHA=1.0
DKD_WARMUP=1
for beta in 0.5 1.0; do
    train_seeds "dkd/beta${beta}" --distill dkd --kd-weight "${KD_WEIGHT}" --dkd-alpha "${DKD_ALPHA}" --dkd-beta "${beta}" \
        --dkd-warmup "${DKD_WARMUP}"
done
summarize
