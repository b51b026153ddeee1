#!/usr/bin/env bash
# PromptKD with KD (forward KL, as in the PromptKD paper) on one dataset, one run per seed, then the
# base/new/HM table averaged over the seeds. Needs the dataset's teacher prompts (train_teacher).
# Usage: bash base_to_new_classification/scripts/train_kd.sh [DATASET] [DATA_ROOT] [GPU_NUM]
#   DRY_RUN=1 prints the commands instead of running them
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/launch.sh"

DATASET=${1:-caltech101}
DATA_ROOT=${2:-${REPO_ROOT}/data/coop}
GPU_NUM=${3:-1}
MASTER_PORT=${MASTER_PORT:-2013}
NNODES=1
NODE_RANK=0
MASTER_ADDR=localhost
HOSTFILE=""

# models: Hugging Face CLIP directories and the teacher prompts from train_teacher
TEACHER_MODEL="${REPO_ROOT}/checkpoints/clip-vit-large-patch14"
STUDENT_MODEL="${REPO_ROOT}/checkpoints/clip-vit-base-patch16"
TEACHER_CKPT=${TEACHER_CKPT:-"${REPO_ROOT}/results/promptkd/teacher/${DATASET}/teacher_prompts.pt"}
# distillation and optimisation
KD_WEIGHT=1000.0
TEMPERATURE=1.0
EPOCHS=20
BATCH_SIZE=8
LR=0.005
SEEDS="10 20 30 40 50"
SAVE_ROOT="${REPO_ROOT}/results/promptkd/${DATASET}"

for seed in ${SEEDS}; do
    launch_module base_to_new_classification.train \
        --dataset "${DATASET}" --root "${DATA_ROOT}" \
        --teacher-model-path "${TEACHER_MODEL}" --student-model-path "${STUDENT_MODEL}" --teacher-ckpt "${TEACHER_CKPT}" \
        --distill kd --kd-weight "${KD_WEIGHT}" --temperature "${TEMPERATURE}" \
        --epochs "${EPOCHS}" --batch-size "${BATCH_SIZE}" --lr "${LR}" --seed "${seed}" \
        --save "${SAVE_ROOT}/kd/seed${seed}" --resume \
        --deepspeed_config "${REPO_ROOT}/configs/deepspeed/ds_config.json"
done
run_module base_to_new_classification.summarize "${SAVE_ROOT}"
