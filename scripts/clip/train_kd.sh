#!/usr/bin/env bash
# PromptKD with KD (forward KL) on one dataset, one run per seed, then the base/new/HM table. KD weight as
# ABKD's base2new_train_kd.sh states it: 200 for fgvc_aircraft, oxford_flowers and dtd, else 1000.
# Usage: bash scripts/clip/train_kd.sh [DATASET] [DATA_ROOT] [GPU_NUM]   (DRY_RUN=1 prints the commands)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/defaults.sh"

train_seeds kd --distill kd --kd-weight "${KD_WEIGHT}"
summarize
