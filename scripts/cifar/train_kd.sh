#!/usr/bin/env bash
# Vanilla KD on CIFAR-100 (Hinton et al., 2015): 0.1 * CE + KD_WEIGHT * T^2 KL at T = 4, CRD's setting.
# Usage: bash scripts/cifar/train_kd.sh TEACHER STUDENT GPU [KD_WEIGHT]   (DRY_RUN=1 prints the command)
#   e.g. bash scripts/cifar/train_kd.sh resnet32x4 resnet8x4 1
set -euo pipefail
[[ $# -ge 3 && $# -le 4 ]] || { echo "usage: $0 TEACHER STUDENT GPU [KD_WEIGHT]" >&2; exit 2; }
TEACHER=$1
STUDENT=$2
GPU=$3
KD_WEIGHT=${4:-0.9}
source "$(dirname "${BASH_SOURCE[0]}")/defaults.sh"

train_student --distill kd --ce-weight "${CE_WEIGHT}" --kd-weight "${KD_WEIGHT}"
