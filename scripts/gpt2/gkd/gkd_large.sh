#!/usr/bin/env bash
# GKD of GPT-2 large (0.7B) from the SFT'd GPT-2 xlarge (1.5B) on Dolly: generalised JSD (GKD_BETA)
# on the student's own samples in a fraction MIXED_ALPHA (lambda) of the batches, Dolly's answers otherwise.
# Needs init/init_large.sh (student) and sft/sft_xlarge.sh (teacher) to have run.
# Usage: bash scripts/gpt2/gkd/gkd_large.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM]
#   several nodes: NNODES, NODE_RANK, MASTER_ADDR (run on every node) or HOSTFILE (deepspeed launcher)
#   DRY_RUN=1 prints the command instead of running it
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../launch.sh"

BASE_PATH=${1:-$(pwd)}
MASTER_PORT=${2:-2012}
GPU_NUM=${3:-1}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-localhost}
HOSTFILE=${HOSTFILE:-}

# models and data
CKPT_NAME="gpt2-large"
CKPT="${BASE_PATH}/results/gpt2/train/init/${CKPT_NAME}/best/"
TEACHER_CKPT_NAME="gpt2-xlarge"
TEACHER_CKPT="${BASE_PATH}/results/gpt2/train/sft/${TEACHER_CKPT_NAME}/best/"
DATA_DIR="${BASE_PATH}/processed_data/dolly/full/gpt2/"
SAVE_PATH="${BASE_PATH}/results/gpt2/train/gkd/0.7B_1.5B"
# GKD: the student's samples with probability MIXED_ALPHA (lambda); the JSD mixes GKD_BETA of the teacher
MIXED_ALPHA=0.5
GKD_BETA=0.5
# hyper-parameters
LR=0.0005
BATCH_SIZE=8
GRAD_ACC=1
EVAL_BATCH_SIZE=16
EPOCHS=20
KD_RATIO=1.0
MAX_LENGTH=512
MAX_PROMPT_LENGTH=256
SEED=10
DS_CONFIG="${REPO_ROOT}/configs/deepspeed/ds_config.json"

launch_module distillation_llm.finetune \
    --type gkd \
    --model-path "${CKPT}" \
    --ckpt-name "${CKPT_NAME}-init" \
    --teacher-model-path "${TEACHER_CKPT}" \
    --teacher-ckpt-name "${TEACHER_CKPT_NAME}-sft" \
    --model-type gpt2 \
    --data-dir "${DATA_DIR}" \
    --lr "${LR}" \
    --batch-size "${BATCH_SIZE}" \
    --gradient-accumulation-steps "${GRAD_ACC}" \
    --eval-batch-size "${EVAL_BATCH_SIZE}" \
    --warmup-iters 0 \
    --lr-decay-style cosine \
    --weight-decay 1e-2 \
    --clip-grad 1.0 \
    --epochs "${EPOCHS}" \
    --kd-ratio "${KD_RATIO}" \
    --mixed-alpha "${MIXED_ALPHA}" \
    --gkd-beta "${GKD_BETA}" \
    --max-length "${MAX_LENGTH}" \
    --max-prompt-length "${MAX_PROMPT_LENGTH}" \
    --do-train \
    --do-valid \
    --save-interval 0 \
    --eval-interval 0 \
    --log-interval 10 \
    --save "${SAVE_PATH}" \
    --seed "${SEED}" \
    --deepspeed_config "${DS_CONFIG}"
