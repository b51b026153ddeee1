#!/usr/bin/env bash
# Logit standardisation on CIFAR-100 (Sun et al., CVPR 2024) as ABKD's train_ls.sh: 0.1 * CE + KD_WEIGHT
# (default 9) * T^2 KL between z-scored logits at T = 2; DISTILL=abls uses D_AB at AB_ALPHA, AB_BETA.
# Usage: bash scripts/cifar/train_ls.sh TEACHER STUDENT GPU [KD_WEIGHT]   (DRY_RUN=1 prints the command)
set -euo pipefail
[[ $# -ge 3 && $# -le 4 ]] || { echo "usage: $0 TEACHER STUDENT GPU [KD_WEIGHT]" >&2; exit 2; }
TEACHER=$1
STUDENT=$2
GPU=$3
source "$(dirname "${BASH_SOURCE[0]}")/defaults.sh"

train_student --distill "${DISTILL:-ls}" --ab_alpha "${AB_ALPHA:-0.5}" --ab_beta "${AB_BETA:-0.5}" --kd_T 2 \
    --ce-weight 0.1 --kd-weight "${4:-9}"
