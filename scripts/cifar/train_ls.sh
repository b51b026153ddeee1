#!/usr/bin/env bash
# Logit-standardised distillation on CIFAR-100 (Sun et al., CVPR 2024) as ABKD's
# standard_classification/train_ls.sh runs it: 0.1 * CE + 9 * T^2 KL between per-sample z-scored logits
# at T = 2 (--distill ls), or the alpha-beta divergence on them with DISTILL=abls (AB_ALPHA, AB_BETA).
# Usage: bash scripts/cifar/train_ls.sh TEACHER STUDENT GPU [KD_WEIGHT]   (DRY_RUN=1 prints the command)
#   e.g. bash scripts/cifar/train_ls.sh resnet32x4 resnet8x4 1
set -euo pipefail
[[ $# -ge 3 && $# -le 4 ]] || { echo "usage: $0 TEACHER STUDENT GPU [KD_WEIGHT]" >&2; exit 2; }
TEACHER=$1
STUDENT=$2
GPU=$3
KD_WEIGHT=${4:-9}
DISTILL=${DISTILL:-ls}
AB_ALPHA=${AB_ALPHA:-0.5}
AB_BETA=${AB_BETA:-0.5}
KD_T=2
CE_WEIGHT=0.1
source "$(dirname "${BASH_SOURCE[0]}")/defaults.sh"

train_student --distill "${DISTILL}" --ab_alpha "${AB_ALPHA}" --ab_beta "${AB_BETA}" --kd_T "${KD_T}" \
    --ce-weight "${CE_WEIGHT}" --kd-weight "${KD_WEIGHT}"
