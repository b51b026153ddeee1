#!/usr/bin/env bash
# Vanilla KD on CIFAR-100 (Hinton et al., 2015) as ABKD's standard_classification/train_kd.sh runs it:
# 1 * CE + KD_WEIGHT * T^2 KL at T = 4, KD_WEIGHT 2. (RepDistiller's setting, 0.1 * CE + 0.9 * KD, is the
# default of train_student --distill kd.)
# Usage: bash scripts/cifar/train_kd.sh TEACHER STUDENT GPU [KD_WEIGHT]   (DRY_RUN=1 prints the command)
#   e.g. bash scripts/cifar/train_kd.sh resnet110 resnet44 1
set -euo pipefail
[[ $# -ge 3 && $# -le 4 ]] || { echo "usage: $0 TEACHER STUDENT GPU [KD_WEIGHT]" >&2; exit 2; }
TEACHER=$1
STUDENT=$2
GPU=$3
KD_WEIGHT=${4:-2}
KD_T=4
CE_WEIGHT=1
source "$(dirname "${BASH_SOURCE[0]}")/defaults.sh"

train_student --distill kd --kd_T "${KD_T}" --ce-weight "${CE_WEIGHT}" --kd-weight "${KD_WEIGHT}"
