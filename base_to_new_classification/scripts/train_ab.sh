#!/usr/bin/env bash
# PromptKD with the alpha-beta divergence (ABKD) on one dataset: every (ab_alpha, ab_beta) of the grid
# START..END in steps of STEP (both ends included), one run per seed each, then the base/new/HM table
# averaged over the seeds. Needs the dataset's teacher prompts (train_teacher).
# Usage: bash base_to_new_classification/scripts/train_ab.sh [DATASET] [DATA_ROOT] [GPU_NUM] \
#            [ALPHA_START ALPHA_END BETA_START BETA_END]
#   DRY_RUN=1 prints the commands instead of running them
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/launch.sh"

DATASET=${1:-caltech101}
DATA_ROOT=${2:-${REPO_ROOT}/data/coop}
GPU_NUM=${3:-1}
ALPHA_START=${4:-0.8}
ALPHA_END=${5:-0.8}
BETA_START=${6:-0.2}
BETA_END=${7:-0.2}
ALPHA_STEP=${ALPHA_STEP:-0.1}
BETA_STEP=${BETA_STEP:-0.1}
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

# START END STEP -> START, START + STEP, ... <= END, one a line (START + i * STEP, printed with %g).
grid() {
    LC_ALL=C awk -v start="$1" -v end="$2" -v step="$3" 'BEGIN {
        number = "^[-+]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][-+]?[0-9]+)?$"
        if (start !~ number || end !~ number || step !~ number || step + 0 <= 0 || start + 0 > end + 0) {
            printf "train_ab.sh: bad grid START=%s END=%s STEP=%s (need numbers, START <= END, STEP > 0)\n", start, end, step > "/dev/stderr"
            exit 1
        }
        for (i = 0; start + i * step <= end + 1e-9 * step; i++) printf "%g\n", start + i * step
    }'
}
ALPHAS=$(grid "${ALPHA_START}" "${ALPHA_END}" "${ALPHA_STEP}")
BETAS=$(grid "${BETA_START}" "${BETA_END}" "${BETA_STEP}")

for alpha in ${ALPHAS}; do
    for beta in ${BETAS}; do
        for seed in ${SEEDS}; do
            launch_module base_to_new_classification.train \
                --dataset "${DATASET}" --root "${DATA_ROOT}" \
                --teacher-model-path "${TEACHER_MODEL}" --student-model-path "${STUDENT_MODEL}" --teacher-ckpt "${TEACHER_CKPT}" \
                --distill ab --ab_alpha "${alpha}" --ab_beta "${beta}" --kd-weight "${KD_WEIGHT}" --temperature "${TEMPERATURE}" \
                --epochs "${EPOCHS}" --batch-size "${BATCH_SIZE}" --lr "${LR}" --seed "${seed}" \
                --save "${SAVE_ROOT}/ab/a${alpha}_b${beta}/seed${seed}" --resume \
                --deepspeed_config "${REPO_ROOT}/configs/deepspeed/ds_config.json"
        done
    done
done
run_module base_to_new_classification.summarize "${SAVE_ROOT}"
