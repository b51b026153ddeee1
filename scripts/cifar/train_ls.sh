#!/usr/bin/env bash
# Logit standardisation with ABKD on CIFAR-100 as ABKD's train_ls.sh: 0.1 * CE + KD_WEIGHT (default 9) * T^2 D_AB
# between z-scored logits at T = 2 (--distill abls; ABKD's distiller_zoo/ls.py), for every alpha+beta from START_AB to
# END_AB and alpha from START_ALPHA to END_ALPHA (steps of 0.1, ends included). DISTILL=ls runs plain LS (Sun et al.,
# CVPR 2024: the KL, which D_AB is at alpha, beta = 1, 0) once, with the same weights and temperature.
# Usage: bash scripts/cifar/train_ls.sh START_AB END_AB START_ALPHA END_ALPHA TEACHER STUDENT GPU [KD_WEIGHT]
#        DISTILL=ls bash scripts/cifar/train_ls.sh TEACHER STUDENT GPU [KD_WEIGHT]     (DRY_RUN=1 prints the commands)
#   e.g. bash scripts/cifar/train_ls.sh 1.0 1.0 0.5 1.3 resnet32x4 resnet8x4 2
set -euo pipefail
DISTILL=${DISTILL:-abls}
[[ "${DISTILL}" == ls ]] && set -- 1 1 1 1 "$@"  # one grid point: plain LS has no alpha, beta
[[ "${DISTILL}" =~ ^(abls|ls)$ && $# -ge 7 && $# -le 8 ]] || {
    echo "usage: $0 START_AB END_AB START_ALPHA END_ALPHA TEACHER STUDENT GPU [KD_WEIGHT], or DISTILL=ls $0 TEACHER STUDENT GPU [KD_WEIGHT]" >&2; exit 2; }
TEACHER=$5
STUDENT=$6
GPU=$7
source "$(dirname "${BASH_SOURCE[0]}")/defaults.sh"

SUMS=$(grid "$1" "$2" 0.1)  # assigned first: a bad grid stops the script (set -e)
ALPHAS=$(grid "$3" "$4" 0.1)
for ab in ${SUMS}; do
    for alpha in ${ALPHAS}; do
        AB=()
        [[ "${DISTILL}" == abls ]] && AB=(--ab_alpha "${alpha}" --ab_beta "$(LC_ALL=C awk -v ab="${ab}" -v alpha="${alpha}" 'BEGIN { printf "%g", ab - alpha }')")
        train_student --distill "${DISTILL}" "${AB[@]}" --kd_T 2 --ce-weight 0.1 --kd-weight "${8:-9}"
    done
done
