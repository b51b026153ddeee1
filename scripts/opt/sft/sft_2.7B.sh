#!/usr/bin/env bash
# SFT of OPT-2.7B on Dolly: the teacher of every OPT KD/AB run (they read <save>/best).
# Usage: bash scripts/opt/sft/sft_2.7B.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM]
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
CKPT_NAME="opt-2.7B"
CKPT="${BASE_PATH}/checkpoints/${CKPT_NAME}/"
DATA_DIR="${BASE_PATH}/processed_data/dolly/full/opt/"
SAVE_PATH="${BASE_PATH}/results/opt/train/sft/${CKPT_NAME}"
# hyper-parameters
LR=0.00005
BATCH_SIZE=4
GRAD_ACC=2
EVAL_BATCH_SIZE=8
EPOCHS=10
MAX_LENGTH=512
MAX_PROMPT_LENGTH=256
SEED=10
DS_CONFIG="${REPO_ROOT}/configs/deepspeed/ds_config_zero2.json"

launch_module distillation_llm.finetune \
    --type sft \
    --model-path "${CKPT}" \
    --ckpt-name "${CKPT_NAME}" \
    --model-type opt \
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
