#!/usr/bin/env bash
# WTTM on CIFAR-100 (Zheng & Yang, ICLR 2024): CE + KD_WEIGHT * mean_B U(p) KL(p^TTM_L normalised || q), TTM weighted
# per sample by the power sum U(p) = sum_k p_k^TTM_L. No reference script gives per-pair values, so both are required.
# Usage: bash scripts/cifar/train_wttm.sh TEACHER STUDENT GPU KD_WEIGHT TTM_L   (DRY_RUN=1 prints the command)
set -euo pipefail
[[ $# -eq 5 ]] || { echo "usage: $0 TEACHER STUDENT GPU KD_WEIGHT TTM_L" >&2; exit 2; }
TEACHER=$1
STUDENT=$2
GPU=$3
source "$(dirname "${BASH_SOURCE[0]}")/defaults.sh"

train_student --distill wttm --ttm_l "$5" --ce-weight 1 --kd-weight "$4"
