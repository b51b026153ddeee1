#!/usr/bin/env bash
# ITRD on CIFAR-100 (Miles et al., ICLR 2022) with ABKD's train_student.py defaults (it has no ITRD script):
# CE + KD_WEIGHT (default 1) * (2 L_corr + 1 L_mutual), Renyi order 1.5.
# Usage: bash scripts/cifar/train_itrd.sh TEACHER STUDENT GPU [KD_WEIGHT]   (DRY_RUN=1 prints the command)
set -euo pipefail
[[ $# -ge 3 && $# -le 4 ]] || { echo "usage: $0 TEACHER STUDENT GPU [KD_WEIGHT]" >&2; exit 2; }
TEACHER=$1
STUDENT=$2
GPU=$3
source "$(dirname "${BASH_SOURCE[0]}")/defaults.sh"

train_student --distill itrd --lambda_corr 2 --lambda_mutual 1 --alpha_it 1.5 --ce-weight 1 --kd-weight "${4:-1}"
