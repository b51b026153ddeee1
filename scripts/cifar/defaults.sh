#!/usr/bin/env bash
# Defaults of the CIFAR-100 launchers (sourced by scripts/cifar/*.sh after they read TEACHER, STUDENT and
# GPU). TEACHER is a zoo name, read from TEACHER_DIR/<name>_vanilla/ckpt_epoch_240.pth, or a checkpoint
# file. GPU is what ABKD's scripts call gpu_id: the CUDA device id(s) the run uses (CUDA_VISIBLE_DEVICES, e.g.
# 0 or 0,1); torchrun starts NPROC processes, one per id unless set. PRECISION=bf16 opts into bf16 autocast
# (default fp32, the reference's). Runs from the repository root. Each launcher sets the loss weights and
# temperature of the reference script it mirrors (ABKD's standard_classification/train_*.sh, mdistiller for
# DKD). `train_student ARGS...` starts standard_classification.train_student with the teacher, student and
# data, or prints it with DRY_RUN=1.
source "$(dirname "${BASH_SOURCE[0]}")/../launch.sh"

[[ "${GPU}" =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "$(basename "$0"): GPU must be CUDA device ids (0 or 0,1), got '${GPU}'" >&2; exit 2; }
export CUDA_VISIBLE_DEVICES="${GPU}"
NPROC=${NPROC:-$(awk -F, '{ print NF }' <<< "${GPU}")}
PRECISION=${PRECISION:-fp32}
DATA_FOLDER=${DATA_FOLDER:-data/cifar100}
TEACHER_DIR=${TEACHER_DIR:-save/models}
DEEPSPEED_CONFIG=configs/deepspeed/ds_config.json
cd "${REPO_ROOT}"
TEACHER_PATH=${TEACHER}
[[ -f "${TEACHER}" ]] || TEACHER_PATH="${TEACHER_DIR}/${TEACHER}_vanilla/ckpt_epoch_240.pth"

train_student() {
    local args=(--path_t "${TEACHER_PATH}" --model_s "${STUDENT}" "$@"
                --data-folder "${DATA_FOLDER}" --precision "${PRECISION}" --deepspeed_config "${DEEPSPEED_CONFIG}")
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
        print_command standard_classification.train_student "${args[@]}"
    else
        torchrun --standalone --nproc_per_node "${NPROC}" -m standard_classification.train_student "${args[@]}"
    fi
}
