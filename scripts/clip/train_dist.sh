#!/usr/bin/env bash
# PromptKD with DIST (Huang et al., NeurIPS 2022): KD_WEIGHT (default 1) * tau^2 (inter- + intra-class relation), no / C.
# ABKD's trainer lists DIST but cannot run it (an undefined `Dist` with unset options), so nothing here is a reference
# setting: tau, beta, gamma are its DIST class's defaults (1, 1, 1) and the weight is a choice. One run per seed.
# Usage: bash scripts/clip/train_dist.sh [DATASET] [DATA_ROOT] [GPU_NUM] [KD_WEIGHT]   (DRY_RUN=1 prints the commands)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/defaults.sh"

train_seeds dist --distill dist --dist_tau 1.0 --dist_beta 1.0 --dist_gamma 1.0 --kd-weight "${4:-1.0}"
summarize
