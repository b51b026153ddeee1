#!/usr/bin/env bash
# PromptKD with DKD (decoupled KD, Zhao et al. CVPR 2022; the target class is the teacher's prediction)
# on one dataset, one run per seed, then the base/new/HM table averaged over the seeds.
# Needs the dataset's teacher prompts (train_teacher).
# Usage: bash scripts/clip/train_dkd.sh [DATASET] [DATA_ROOT] [GPU_NUM]   (DRY_RUN=1 prints the commands)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/defaults.sh"

DKD_ALPHA=1.0
DKD_BETA=8.0
train_seeds dkd --distill dkd --dkd-alpha "${DKD_ALPHA}" --dkd-beta "${DKD_BETA}"
summarize
