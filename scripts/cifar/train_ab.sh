#!/usr/bin/env bash
# ABKD on CIFAR-100 as ABKD's train_ab.sh: CE + KD_WEIGHT * D_AB at T = 4 (no T^2), for every alpha+beta
# from START_AB to END_AB and alpha from START_ALPHA to END_ALPHA (steps of 0.1, ends included).
# Usage: bash scripts/cifar/train_ab.sh START_AB END_AB START_ALPHA END_ALPHA TEACHER STUDENT GPU KD_WEIGHT
#   e.g. bash scripts/cifar/train_ab.sh 1.1 1.1 0.8 0.8 resnet56 resnet20 1 64   (DRY_RUN=1 prints the commands)
set -euo pipefail
[[ $# -eq 8 ]] || { echo "usage: $0 START_AB END_AB START_ALPHA END_ALPHA TEACHER STUDENT GPU KD_WEIGHT" >&2; exit 2; }
TEACHER=$5
STUDENT=$6
GPU=$7
KD_WEIGHT=$8
source "$(dirname "${BASH_SOURCE[0]}")/defaults.sh"

SUMS=$(grid "$1" "$2" 0.1)  # assigned first: a bad grid stops the script (set -e)
ALPHAS=$(grid "$3" "$4" 0.1)
for ab in ${SUMS}; do
    for alpha in ${ALPHAS}; do
        beta=$(LC_ALL=C awk -v ab="${ab}" -v alpha="${alpha}" 'BEGIN { printf "%g", ab - alpha }')
        train_student --distill ab --ab_alpha "${alpha}" --ab_beta "${beta}" --kd_T 4 --ce-weight 1 --kd-weight "${KD_WEIGHT}"
    done
done
