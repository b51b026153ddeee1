#!/usr/bin/env bash
# Decoupled KD on CIFAR-100 (Zhao et al., CVPR 2022): CE + warm-up * T^2 (DKD_ALPHA TCKD + DKD_BETA NCKD)
# at T = 4 with a 20-epoch linear warm-up. The paper's CIFAR betas depend on the pair (8 for
# resnet32x4 -> resnet8x4, 2 for resnet56 -> resnet20, 6 for wrn_40_2 -> wrn_16_2).
# Usage: bash standard_classification/train_dkd.sh TEACHER STUDENT GPU [DKD_ALPHA] [DKD_BETA]
#   e.g. bash standard_classification/train_dkd.sh resnet56 resnet20 1 1.0 2.0
# TEACHER is a zoo name, read from $TEACHER_DIR/<name>_vanilla/ckpt_epoch_240.pth, or a checkpoint
# file; GPU is the number of processes torchrun starts. DRY_RUN=1 prints the command.
set -euo pipefail

if [[ $# -lt 3 || $# -gt 5 ]]; then
    echo "usage: $0 TEACHER STUDENT GPU [DKD_ALPHA] [DKD_BETA]" >&2
    exit 2
fi
TEACHER=$1
STUDENT=$2
GPU=$3
DKD_ALPHA=${4:-1.0}
DKD_BETA=${5:-8.0}
DKD_WARMUP=20
KD_T=4
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
    --distill dkd --dkd_alpha "${DKD_ALPHA}" --dkd_beta "${DKD_BETA}" --dkd_warmup "${DKD_WARMUP}" --kd_T "${KD_T}" \
    --ce-weight 1.0 --kd-weight 1.0 --data-folder "${DATA_FOLDER}" --deepspeed_config "${DEEPSPEED_CONFIG}"
