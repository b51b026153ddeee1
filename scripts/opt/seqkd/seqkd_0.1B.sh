#!/usr/bin/env bash
# SeqKD of OPT-0.1B from the SFT'd OPT-2.7B on Dolly: the teacher answers
# every training prompt once (tools.generate_data_seqkd; it does nothing when that dataset already
# exists), then the student learns those answers with cross-entropy (validation stays on Dolly's answers).
# Needs init/init_0.1B.sh (student) and sft/sft_2.7B.sh (teacher) to have run.
# Usage: bash scripts/opt/seqkd/seqkd_0.1B.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM]
#   several nodes: NNODES, NODE_RANK, MASTER_ADDR (run on every node) or HOSTFILE (deepspeed launcher)
#   (each node makes the SeqKD data unless it already exists under BASE_PATH)
#   DRY_RUN=1 prints the commands instead of running them
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
CKPT_NAME="opt-0.1B"
CKPT="${BASE_PATH}/results/opt/train/init/${CKPT_NAME}/best/"
TEACHER_CKPT_NAME="opt-2.7B"
TEACHER_CKPT="${BASE_PATH}/results/opt/train/sft/${TEACHER_CKPT_NAME}/best/"
DATA_DIR="${BASE_PATH}/processed_data/dolly/full/opt/"
SEQKD_DATA_DIR="${BASE_PATH}/processed_data/dolly/seqkd/${TEACHER_CKPT_NAME}/"
SAVE_PATH="${BASE_PATH}/results/opt/train/seqkd/0.1B_2.7B"
# teacher generation, the same in the three OPT seqkd launchers:
# the dataset is made once and reused (one made with other settings is refused, not trained on)
GEN_MAX_NEW_TOKENS=256
GEN_BATCH_SIZE=32
GEN_SEED=10
# hyper-parameters
LR=0.00005
BATCH_SIZE=8
GRAD_ACC=1
EVAL_BATCH_SIZE=16
EPOCHS=10
MAX_LENGTH=512
MAX_PROMPT_LENGTH=256
SEED=10
DS_CONFIG="${REPO_ROOT}/configs/deepspeed/ds_config.json"

run_module tools.generate_data_seqkd \
    --model-path "${TEACHER_CKPT}" \
    --data-dir "${DATA_DIR}" \
    --processed-data-dir "${SEQKD_DATA_DIR}" \
    --max-prompt-length "${MAX_PROMPT_LENGTH}" \
    --max-new-tokens "${GEN_MAX_NEW_TOKENS}" \
    --do-sample \
    --top-k 0 \
    --top-p 1.0 \
    --temperature 1.0 \
    --batch-size "${GEN_BATCH_SIZE}" \
    --seed "${GEN_SEED}"

launch_module distillation_llm.finetune \
    --type seqkd \
    --model-path "${CKPT}" \
    --ckpt-name "${CKPT_NAME}-init" \
    --model-type opt \
    --data-dir "${SEQKD_DATA_DIR}" \
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
