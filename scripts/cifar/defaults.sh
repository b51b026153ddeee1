#!/usr/bin/env bash
# Defaults of the CIFAR-100 launchers (sourced by scripts/cifar/*.sh after they read TEACHER, STUDENT and
# GPU). TEACHER is a zoo name, read from TEACHER_DIR/<name>_vanilla/ckpt_epoch_240.pth, or a checkpoint
# file; GPU is the number of processes torchrun starts; runs from the repository root. Each launcher sets
# the loss weights and temperature of the reference script it mirrors (ABKD's standard_classification/
# train_*.sh, mdistiller for DKD). `train_student ARGS...` starts standard_classification.train_student
# with the teacher, student and data, or prints it with DRY_RUN=1.
source "$(dirname "${BASH_SOURCE[0]}")/../launch.sh"

DATA_FOLDER=${DATA_FOLDER:-data/cifar100}
TEACHER_DIR=${TEACHER_DIR:-save/models}
DEEPSPEED_CONFIG=configs/deepspeed/ds_config.json
cd "${REPO_ROOT}"
TEACHER_PATH=${TEACHER}
[[ -f "${TEACHER}" ]] || TEACHER_PATH="${TEACHER_DIR}/${TEACHER}_vanilla/ckpt_epoch_240.pth"

train_student() {
    local args=(--path_t "${TEACHER_PATH}" --model_s "${STUDENT}" "$@"
                --data-folder "${DATA_FOLDER}" --deepspeed_config "${DEEPSPEED_CONFIG}")
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
        print_command standard_classification.train_student "${args[@]}"
    else
        torchrun --standalone --nproc_per_node "${GPU}" -m standard_classification.train_student "${args[@]}"
    fi
}
