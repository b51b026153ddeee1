#!/usr/bin/env bash
# Vanilla KD on CIFAR-100 (Hinton et al., 2015): 0.1 * CE + KD_WEIGHT * T^2 KL at T = 4, CRD's setting.
# Usage: bash standard_classification/train_kd.sh TEACHER STUDENT GPU [KD_WEIGHT]
#   e.g. bash standard_classification/train_kd.sh resnet32x4 resnet8x4 1
# TEACHER is a zoo name, read from $TEACHER_DIR/<name>_vanilla/ckpt_epoch_240.pth, or a checkpoint
# file; GPU is the number of processes torchrun starts. DRY_RUN=1 prints the command.
set -euo pipefail

if [[ $# -lt 3 || $# -gt 4 ]]; then
    echo "usage: $0 TEACHER STUDENT GPU [KD_WEIGHT]" >&2
    exit 2
fi
TEACHER=$1
STUDENT=$2
GPU=$3
KD_WEIGHT=${4:-0.9}
KD_T=4
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
    --distill kd --kd_T "${KD_T}" --ce-weight "${CE_WEIGHT}" --kd-weight "${KD_WEIGHT}" \
    --data-folder "${DATA_FOLDER}" --deepspeed_config "${DEEPSPEED_CONFIG}"
