#!/usr/bin/env bash
# Every divergence of abkd.losses on CIFAR-100 in KD's place, with ABKD's KD recipe (train_kd.sh: CE + KD_WEIGHT (default
# 2) * T^2 D at T = 4): one run per name in DIVERGENCES (default all six); jsd at JSD_LAM, sfkl/srkl at SKEW_ALPHA (0.1).
# Usage: bash scripts/cifar/train_divergences.sh TEACHER STUDENT GPU [KD_WEIGHT]   (DRY_RUN=1 prints the commands)
set -euo pipefail
[[ $# -ge 3 && $# -le 4 ]] || { echo "usage: $0 TEACHER STUDENT GPU [KD_WEIGHT]" >&2; exit 2; }
TEACHER=$1
STUDENT=$2
GPU=$3
source "$(dirname "${BASH_SOURCE[0]}")/defaults.sh"

for name in ${DIVERGENCES:-fkl rkl jsd tvd sfkl srkl}; do
    train_student --distill "${name}" --jsd-lam "${JSD_LAM:-0.1}" --skew-alpha "${SKEW_ALPHA:-0.1}" --kd_T 4 --ce-weight 1 --kd-weight "${4:-2}"
done
