#!/usr/bin/env bash
# SFT of GPT-2 large (0.7B) on Dolly without a teacher: the "SFT w/o KD" baseline.
# Usage: bash scripts/gpt2/sft/sft_large.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM]
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
CKPT="${BASE_PATH}/checkpoints/${CKPT_NAME}/"
DATA_DIR="${BASE_PATH}/processed_data/dolly/full/gpt2/"
SAVE_PATH="${BASE_PATH}/results/gpt2/train/sft/${CKPT_NAME}"
# hyper-parameters
LR=0.0005
BATCH_SIZE=8
GRAD_ACC=1
EVAL_BATCH_SIZE=16
EPOCHS=20
MAX_LENGTH=512
MAX_PROMPT_LENGTH=256
SEED=10
DS_CONFIG="${REPO_ROOT}/configs/deepspeed/ds_config.json"

launch_module distillation_llm.finetune \
    --type sft \
    --model-path "${CKPT}" \
    --ckpt-name "${CKPT_NAME}" \
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
