#!/usr/bin/env bash
# Decoupled KD on CIFAR-100 (Zhao et al., CVPR 2022): CE + warm-up * T^2 (DKD_ALPHA TCKD + DKD_BETA NCKD)
# at T = 4 with a 20-epoch linear warm-up. The paper's CIFAR betas depend on the pair (8 for
# resnet32x4 -> resnet8x4, 2 for resnet56 -> resnet20, 6 for wrn_40_2 -> wrn_16_2).
# Usage: bash scripts/cifar/train_dkd.sh TEACHER STUDENT GPU [DKD_ALPHA] [DKD_BETA]   (DRY_RUN=1 prints the command)
#   e.g. bash scripts/cifar/train_dkd.sh resnet56 resnet20 1 1.0 2.0
set -euo pipefail
[[ $# -ge 3 && $# -le 5 ]] || { echo "usage: $0 TEACHER STUDENT GPU [DKD_ALPHA] [DKD_BETA]" >&2; exit 2; }
TEACHER=$1
STUDENT=$2
GPU=$3
DKD_ALPHA=${4:-1.0}
DKD_BETA=${5:-8.0}
DKD_WARMUP=20
source "$(dirname "${BASH_SOURCE[0]}")/defaults.sh"

train_student --distill dkd --dkd_alpha "${DKD_ALPHA}" --dkd_beta "${DKD_BETA}" --dkd_warmup "${DKD_WARMUP}" \
    --ce-weight 1.0 --kd-weight 1.0
