#!/usr/bin/env bash
# Decoupled KD on CIFAR-100 (Zhao et al., CVPR 2022): CE + warm-up * T^2 (TCKD + DKD_BETA NCKD) at T = 4
# with a 20-epoch linear warm-up (mdistiller's CFG.DKD). DKD_BETA defaults to mdistiller's value for the
# pair (2 for resnet56/resnet110 students, 6 for vgg13 and wrn_40_2 pairs, else 8; see
# standard_classification/train_student.py). DISTILL=abdkd runs ABKD's variant (its train_dkd.sh), whose
# NCKD is the alpha-beta divergence at AB_ALPHA, AB_BETA (default 0.5, 0.5).
# Usage: bash scripts/cifar/train_dkd.sh TEACHER STUDENT GPU [DKD_BETA]   (DRY_RUN=1 prints the command)
#   e.g. bash scripts/cifar/train_dkd.sh resnet56 resnet20 1
set -euo pipefail
[[ $# -ge 3 && $# -le 4 ]] || { echo "usage: $0 TEACHER STUDENT GPU [DKD_BETA]" >&2; exit 2; }
TEACHER=$1
STUDENT=$2
GPU=$3
DKD_BETA=(${4:+--dkd_beta "$4"})
DISTILL=${DISTILL:-dkd}
AB_ALPHA=${AB_ALPHA:-0.5}
AB_BETA=${AB_BETA:-0.5}
KD_T=4
DKD_ALPHA=1
DKD_WARMUP=20
source "$(dirname "${BASH_SOURCE[0]}")/defaults.sh"

AB=()
[[ "${DISTILL}" == abdkd ]] && AB=(--ab_alpha "${AB_ALPHA}" --ab_beta "${AB_BETA}")
train_student --distill "${DISTILL}" "${AB[@]}" --dkd_alpha "${DKD_ALPHA}" "${DKD_BETA[@]}" --dkd_warmup "${DKD_WARMUP}" \
    --kd_T "${KD_T}" --ce-weight 1 --kd-weight 1
