#!/usr/bin/env bash
# KD (forward KL) of Qwen2.5-1.5B from Qwen2.5-7B on Dolly, the student training LoRA adapters.
# The teacher is checkpoints/qwen2.5-7B with the LoRA adapter of sft/sft_7B.sh merged in (run that
# first); the student starts from checkpoints/qwen2.5-1.5B: finetune cannot continue a student adapter,
# so there is no init run.
# Usage: bash scripts/qwen/kd/kd_1.5B.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM]
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
CKPT_NAME="qwen2.5-1.5B"
CKPT="${BASE_PATH}/checkpoints/${CKPT_NAME}/"
TEACHER_CKPT_NAME="qwen2.5-7B"
TEACHER_CKPT="${BASE_PATH}/checkpoints/${TEACHER_CKPT_NAME}/"
TEACHER_PEFT_PATH="${BASE_PATH}/results/qwen/train/sft/${TEACHER_CKPT_NAME}-lora/best/"
DATA_DIR="${BASE_PATH}/processed_data/dolly/full/qwen/"
SAVE_PATH="${BASE_PATH}/results/qwen/train/kd/1.5B_7B"
# LoRA adapters of the student
LORA_R=16
LORA_ALPHA=32
LORA_DROPOUT=0.1
# hyper-parameters: micro-batches of 4 sequences for the large models, 16 per optimizer step and GPU
LR=0.0001
BATCH_SIZE=4
GRAD_ACC=4
EVAL_BATCH_SIZE=8
EPOCHS=10
KD_RATIO=0.5
MAX_LENGTH=512
MAX_PROMPT_LENGTH=256
SEED=10
DS_CONFIG="${REPO_ROOT}/configs/deepspeed/ds_config_zero2.json"

launch_module distillation_llm.finetune \
    --type kd \
    --model-path "${CKPT}" \
    --ckpt-name "${CKPT_NAME}" \
    --teacher-model-path "${TEACHER_CKPT}" \
    --teacher-ckpt-name "${TEACHER_CKPT_NAME}-sft" \
    --teacher-peft-path "${TEACHER_PEFT_PATH}" \
    --model-type qwen2 \
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
    --max-length "${MAX_LENGTH}" \
    --max-prompt-length "${MAX_PROMPT_LENGTH}" \
    --peft lora \
    --peft-lora-r "${LORA_R}" \
    --peft-lora-alpha "${LORA_ALPHA}" \
    --peft-lora-dropout "${LORA_DROPOUT}" \
    --do-train \
    --do-valid \
    --save-interval 0 \
    --eval-interval 0 \
    --log-interval 10 \
    --save "${SAVE_PATH}" \
    --seed "${SEED}" \
    --deepspeed_config "${DS_CONFIG}"
