#!/usr/bin/env bash
# PromptKD with KD (forward KL, as in the PromptKD paper) on one dataset, one run per seed, then the
# base/new/HM table averaged over the seeds. Needs the dataset's teacher prompts (train_teacher).
# Usage: bash scripts/clip/train_kd.sh [DATASET] [DATA_ROOT] [GPU_NUM]   (DRY_RUN=1 prints the commands)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/defaults.sh"

train_seeds kd --distill kd
summarize
