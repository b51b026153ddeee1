#!/usr/bin/env bash
# LoRA SFT of OpenLLaMA-3B on Dolly: the SFT baseline that its distilled runs are compared with.
# Data: processed_data/dolly/full/openllama2/ from tools.process_data_dolly with the OpenLLaMA tokenizer.
# Usage: bash scripts/openllama2/sft/sft_3B.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM]
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
CKPT_NAME="openllama2-3B"
CKPT="${BASE_PATH}/checkpoints/${CKPT_NAME}/"
DATA_DIR="${BASE_PATH}/processed_data/dolly/full/openllama2/"
SAVE_PATH="${BASE_PATH}/results/openllama2/train/sft/${CKPT_NAME}-lora"
# LoRA adapters
LORA_R=16
LORA_ALPHA=32
LORA_DROPOUT=0.1
# hyper-parameters: micro-batches of 4 sequences for the large models, 16 per optimizer step and GPU
LR=0.0001
BATCH_SIZE=4
GRAD_ACC=4
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
    --model-type llama \
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
