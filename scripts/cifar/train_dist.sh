#!/usr/bin/env bash
# DIST on CIFAR-100 (Huang et al., NeurIPS 2022): CE + KD_WEIGHT (default 1) * tau^2 (inter- + intra-class Pearson
# relation) at tau = 4, ABKD's train_student.py defaults (--dist_beta 1 --dist_gamma 1 --dist_tau 4 -r 1; no DIST script).
# Usage: bash scripts/cifar/train_dist.sh TEACHER STUDENT GPU [KD_WEIGHT]   (DRY_RUN=1 prints the command)
set -euo pipefail
[[ $# -ge 3 && $# -le 4 ]] || { echo "usage: $0 TEACHER STUDENT GPU [KD_WEIGHT]" >&2; exit 2; }
TEACHER=$1
STUDENT=$2
GPU=$3
source "$(dirname "${BASH_SOURCE[0]}")/defaults.sh"

train_student --distill dist --dist_beta 1 --dist_gamma 1 --dist_tau 4 --ce-weight 1 --kd-weight "${4:-1}"
