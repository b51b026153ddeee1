#!/usr/bin/env bash
# ABKD on CIFAR-100, as ABKD's standard_classification/train_ab.sh: CE + KD_WEIGHT * D_AB at T = 4
# (no T^2 on D_AB), swept over (alpha, beta). For every alpha+beta from START_AB to END_AB and every
# alpha from START_ALPHA to END_ALPHA (both in steps of 0.1, ends included), beta = (alpha+beta) - alpha
# and one student is distilled. Outputs go to save/student_model/S_<student>_T_<teacher>_ab_a<alpha>_b<beta>_... .
# Usage: bash scripts/cifar/train_ab.sh START_AB END_AB START_ALPHA END_ALPHA TEACHER STUDENT GPU KD_WEIGHT
#   e.g. bash scripts/cifar/train_ab.sh 1.1 1.1 0.8 0.8 resnet56 resnet20 1 64   (DRY_RUN=1 prints the commands)
set -euo pipefail
[[ $# -eq 8 ]] || { echo "usage: $0 START_AB END_AB START_ALPHA END_ALPHA TEACHER STUDENT GPU KD_WEIGHT" >&2; exit 2; }
TEACHER=$5
STUDENT=$6
GPU=$7
KD_WEIGHT=$8
KD_T=4
CE_WEIGHT=1
STEP=0.1
source "$(dirname "${BASH_SOURCE[0]}")/defaults.sh"

SUMS=$(grid "$1" "$2" "${STEP}")
ALPHAS=$(grid "$3" "$4" "${STEP}")
for ab in ${SUMS}; do
    for alpha in ${ALPHAS}; do
        beta=$(LC_ALL=C awk -v ab="${ab}" -v alpha="${alpha}" 'BEGIN { printf "%g", ab - alpha }')
        train_student --distill ab --ab_alpha "${alpha}" --ab_beta "${beta}" --kd_T "${KD_T}" \
            --ce-weight "${CE_WEIGHT}" --kd-weight "${KD_WEIGHT}"
    done
done
