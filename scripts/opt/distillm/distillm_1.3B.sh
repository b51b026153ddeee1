#!/usr/bin/env bash
# DistiLLM of OPT-1.3B from the SFT'd OPT-2.7B on Dolly: skew reverse KL, with the
# student's own samples (fresh or replayed from a buffer) at a probability that rises when the
# validation loss worsens.
# Needs init/init_1.3B.sh (student) and sft/sft_2.7B.sh (teacher) to have run.
# Usage: bash scripts/opt/distillm/distillm_1.3B.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM]
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
CKPT_NAME="opt-1.3B"
CKPT="${BASE_PATH}/results/opt/train/init/${CKPT_NAME}/best/"
TEACHER_CKPT_NAME="opt-2.7B"
TEACHER_CKPT="${BASE_PATH}/results/opt/train/sft/${TEACHER_CKPT_NAME}/best/"
DATA_DIR="${BASE_PATH}/processed_data/dolly/full/opt/"
SAVE_PATH="${BASE_PATH}/results/opt/train/distillm/1.3B_2.7B"
# DistiLLM's published recipe: the student-generated share starts at INIT_THRESHOLD and rises by 0.1 when the
# validation loss worsens by more than LOSS_EPS; CAPACITY generations per process in the replay buffer
SKEW_ALPHA=0.1
INIT_THRESHOLD=0.0
LOSS_EPS=0.1
CAPACITY=1000
REPLAY_RATIO=constant
# hyper-parameters
LR=0.00005
BATCH_SIZE=8
GRAD_ACC=1
EVAL_BATCH_SIZE=16
EPOCHS=10
KD_RATIO=1.0
MAX_LENGTH=512
MAX_PROMPT_LENGTH=256
SEED=10
DS_CONFIG="${REPO_ROOT}/configs/deepspeed/ds_config_zero2.json"
# validate, and so adapt the threshold, about EVALS_PER_EPOCH times an epoch (Dolly's train split: ~14k examples)
TRAIN_EXAMPLES=14000
EVALS_PER_EPOCH=10
GLOBAL_BATCH=$(( ${BATCH_SIZE} * ${GRAD_ACC} * ${GPU_NUM} * ${NNODES} ))
EVAL_INTERVAL=$(( (${TRAIN_EXAMPLES} - 1) / (${GLOBAL_BATCH} * ${EVALS_PER_EPOCH}) + 1 ))

launch_module distillation_llm.finetune \
    --type distillm \
    --model-path "${CKPT}" \
    --ckpt-name "${CKPT_NAME}-init" \
    --teacher-model-path "${TEACHER_CKPT}" \
    --teacher-ckpt-name "${TEACHER_CKPT_NAME}-sft" \
    --teacher-model-fp16 \
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
    --kd-ratio "${KD_RATIO}" \
    --skew-alpha "${SKEW_ALPHA}" \
    --init-threshold "${INIT_THRESHOLD}" \
    --loss-eps "${LOSS_EPS}" \
    --capacity "${CAPACITY}" \
    --replay-ratio "${REPLAY_RATIO}" \
    --max-length "${MAX_LENGTH}" \
    --max-prompt-length "${MAX_PROMPT_LENGTH}" \
    --do-train \
    --do-valid \
    --save-interval 0 \
    --eval-interval "${EVAL_INTERVAL}" \
    --log-interval 10 \
    --save "${SAVE_PATH}" \
    --seed "${SEED}" \
    --deepspeed_config "${DS_CONFIG}"
