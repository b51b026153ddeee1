#!/usr/bin/env bash
# Decoupled KD on CIFAR-100 (mdistiller's CFG.DKD): CE + warm-up(20 epochs) * T^2 (TCKD + DKD_BETA NCKD), T = 4.
# DKD_BETA defaults to mdistiller's value for the pair (train_student's DKD_NCKD_WEIGHTS, else 8).
# DISTILL=abdkd runs ABKD's train_dkd.sh variant: NCKD is D_AB at AB_ALPHA, AB_BETA (default 0.5, 0.5).
# Usage: bash scripts/cifar/train_dkd.sh TEACHER STUDENT GPU [DKD_BETA]   (DRY_RUN=1 prints the command)
set -euo pipefail
[[ $# -ge 3 && $# -le 4 ]] || { echo "usage: $0 TEACHER STUDENT GPU [DKD_BETA]" >&2; exit 2; }
TEACHER=$1
STUDENT=$2
GPU=$3
DISTILL=${DISTILL:-dkd}
source "$(dirname "${BASH_SOURCE[0]}")/defaults.sh"

AB=()
[[ "${DISTILL}" == abdkd ]] && AB=(--ab_alpha "${AB_ALPHA:-0.5}" --ab_beta "${AB_BETA:-0.5}")
train_student --distill "${DISTILL}" "${AB[@]}" ${4:+--dkd_beta "$4"} --dkd_alpha 1 --dkd_warmup 20 --kd_T 4 --ce-weight 1 --kd-weight 1
