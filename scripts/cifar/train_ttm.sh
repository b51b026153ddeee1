#!/usr/bin/env bash
# TTM on CIFAR-100 (Zheng & Yang, ICLR 2024) as ABKD's train_ttm.sh: CE + KD_WEIGHT * KL(p^TTM_L normalised || q), no T^2.
# Defaults KD_WEIGHT 76, TTM_L 0.1: the example in that script (wrn_40_2 -> wrn_40_1). DISTILL=abttm runs its alpha-beta
# variant at AB_ALPHA, AB_BETA (default 0.5, 0.5).
# Usage: bash scripts/cifar/train_ttm.sh TEACHER STUDENT GPU [KD_WEIGHT] [TTM_L]   (DRY_RUN=1 prints the command)
set -euo pipefail
[[ $# -ge 3 && $# -le 5 ]] || { echo "usage: $0 TEACHER STUDENT GPU [KD_WEIGHT] [TTM_L]" >&2; exit 2; }
TEACHER=$1
STUDENT=$2
GPU=$3
DISTILL=${DISTILL:-ttm}
source "$(dirname "${BASH_SOURCE[0]}")/defaults.sh"

AB=()
[[ "${DISTILL}" == abttm ]] && AB=(--ab_alpha "${AB_ALPHA:-0.5}" --ab_beta "${AB_BETA:-0.5}")
train_student --distill "${DISTILL}" "${AB[@]}" --ttm_l "${5:-0.1}" --ce-weight 1 --kd-weight "${4:-76}"
