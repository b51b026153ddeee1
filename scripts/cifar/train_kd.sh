#!/usr/bin/env bash
# Vanilla KD on CIFAR-100 as ABKD's train_kd.sh: CE + KD_WEIGHT (default 2) * T^2 KL at T = 4.
# (RepDistiller's 0.1 * CE + 0.9 * KD is the default of train_student --distill kd.)
# Usage: bash scripts/cifar/train_kd.sh TEACHER STUDENT GPU [KD_WEIGHT]   (DRY_RUN=1 prints the command)
set -euo pipefail
[[ $# -ge 3 && $# -le 4 ]] || { echo "usage: $0 TEACHER STUDENT GPU [KD_WEIGHT]" >&2; exit 2; }
TEACHER=$1
STUDENT=$2
GPU=$3
source "$(dirname "${BASH_SOURCE[0]}")/defaults.sh"

train_student --distill kd --kd_T 4 --ce-weight 1 --kd-weight "${4:-2}"
