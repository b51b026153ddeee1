#!/usr/bin/env bash
# SeqKD of GPT-2 base (0.1B) from the SFT'd GPT-2 xlarge (1.5B) on Dolly: the teacher answers
# every training prompt once (tools.generate_data_seqkd; it does nothing when that dataset already
# exists), then the student learns those answers with cross-entropy (validation stays on Dolly's answers).
# Needs init/init_base.sh (student) and sft/sft_xlarge.sh (teacher) to have run.
# Usage: bash scripts/gpt2/seqkd/seqkd_base.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM]
#   several nodes: NNODES, NODE_RANK, MASTER_ADDR (run on every node) or HOSTFILE (deepspeed launcher)
#   (each node makes the SeqKD data unless it exists: run tools/generate_data_seqkd.sh once first)
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
CKPT_NAME="gpt2-base"
CKPT="${BASE_PATH}/results/gpt2/train/init/${CKPT_NAME}/best/"
TEACHER_CKPT_NAME="gpt2-xlarge"
TEACHER_CKPT="${BASE_PATH}/results/gpt2/train/sft/${TEACHER_CKPT_NAME}/best/"
DATA_DIR="${BASE_PATH}/processed_data/dolly/full/gpt2/"
SEQKD_DATA_DIR="${BASE_PATH}/processed_data/dolly/seqkd/${TEACHER_CKPT_NAME}/"
SAVE_PATH="${BASE_PATH}/results/gpt2/train/seqkd/0.1B_1.5B"
# teacher generation, the same in every GPT-2 seqkd launcher and tools/generate_data_seqkd.sh:
# the dataset is made once and reused (one made with other settings is refused, not trained on)
GEN_MAX_NEW_TOKENS=256
GEN_BATCH_SIZE=32
GEN_SEED=10
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
    --model-type gpt2 \
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
