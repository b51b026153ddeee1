#!/usr/bin/env bash
# CRD on CIFAR-100 (Tian et al., ICLR 2020) as RepDistiller's run_cifar_distill.sh: CE + 0.8 CRD, 16384 negatives,
# tau 0.07, bank momentum 0.5, 128-d embeddings; ADD_WEIGHT=1 is its CRD+KD run (-a 1: KD at T = 4 beside CRD).
# Usage: bash scripts/cifar/train_crd.sh TEACHER STUDENT GPU [MODE]   MODE: exact (default) or relax; DRY_RUN=1 prints it
set -euo pipefail
[[ $# -ge 3 && $# -le 4 ]] || { echo "usage: $0 TEACHER STUDENT GPU [MODE]" >&2; exit 2; }
TEACHER=$1
STUDENT=$2
GPU=$3
source "$(dirname "${BASH_SOURCE[0]}")/defaults.sh"

train_student --distill crd --nce_k 16384 --nce_t 0.07 --nce_m 0.5 --feat_dim 128 --mode "${4:-exact}" --kd_T 4 \
    --ce-weight 1 --kd-weight 0.8 --add-weight "${ADD_WEIGHT:-0}"
