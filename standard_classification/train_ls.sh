#!/usr/bin/env bash
# Logit-standardised distillation on CIFAR-100 (Sun et al., CVPR 2024): KD between per-sample
# z-scored logits, --distill ls, or the alpha-beta divergence on them with DISTILL=abls.
# Usage: bash standard_classification/train_ls.sh TEACHER STUDENT GPU [KD_WEIGHT]
#   e.g. bash standard_classification/train_ls.sh resnet32x4 resnet8x4 1 9
# z-scored logits have unit spread, so a lower temperature (2) and a larger KD weight (9) than
# vanilla KD are used by default. TEACHER is a zoo name (read from
# $TEACHER_DIR/<name>_vanilla/ckpt_epoch_240.pth) or a checkpoint file; GPU is the number of
# processes torchrun starts. AB_ALPHA/AB_BETA set the divergence for abls. DRY_RUN=1 prints the command.
set -euo pipefail

if [[ $# -lt 3 || $# -gt 4 ]]; then
    echo "usage: $0 TEACHER STUDENT GPU [KD_WEIGHT]" >&2
    exit 2
fi
TEACHER=$1
STUDENT=$2
GPU=$3
KD_WEIGHT=${4:-9}
DISTILL=${DISTILL:-ls}
AB_ALPHA=${AB_ALPHA:-0.8}
AB_BETA=${AB_BETA:-0.2}
KD_T=2
CE_WEIGHT=0.1
DATA_FOLDER=${DATA_FOLDER:-data/cifar100}
TEACHER_DIR=${TEACHER_DIR:-save/models}
DEEPSPEED_CONFIG=configs/deepspeed/ds_config.json

cd "$(dirname "${BASH_SOURCE[0]}")/.."
TEACHER_PATH=${TEACHER}
[[ -f "${TEACHER}" ]] || TEACHER_PATH="${TEACHER_DIR}/${TEACHER}_vanilla/ckpt_epoch_240.pth"

run() {
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
        printf 'python -m %q' "$1"; shift; printf ' %q' "$@"; printf '\n'
    else
        torchrun --standalone --nproc_per_node "${GPU}" -m "$@"
    fi
}

run standard_classification.train_student --path_t "${TEACHER_PATH}" --model_s "${STUDENT}" \
    --distill "${DISTILL}" --ab_alpha "${AB_ALPHA}" --ab_beta "${AB_BETA}" --kd_T "${KD_T}" \
    --ce-weight "${CE_WEIGHT}" --kd-weight "${KD_WEIGHT}" \
    --data-folder "${DATA_FOLDER}" --deepspeed_config "${DEEPSPEED_CONFIG}"
