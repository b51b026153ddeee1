#!/usr/bin/env bash
# POCL curriculum distillation of OPT-0.1B (OPT-125M) from the SFT'd OPT-2.7B on Dolly, in
# one run: the initialised student ranks the training data (reused when it already has), then the
# Baby Step scheduler trains 4 stages from easy to hard, raising temperature and kd-ratio.
# Needs init/init_0.1B.sh (student) and sft/sft_2.7B.sh (teacher) to have run.
# Usage: bash scripts/opt/pocl/train_0.1B_2.7B.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM] [--type fkl|rkl|jsd|tvd|sfkl|srkl|ab]
#   several nodes: NNODES, NODE_RANK, MASTER_ADDR (run on every node) or HOSTFILE (deepspeed launcher)
#   DRY_RUN=1 prints the commands instead of running them
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../launch.sh"

TYPE=fkl
POSITIONAL=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --type) TYPE=$2; shift 2 ;;
        *) POSITIONAL+=("$1"); shift ;;
    esac
done
BASE_PATH=${POSITIONAL[0]:-$(pwd)}
MASTER_PORT=${POSITIONAL[1]:-2012}
GPU_NUM=${POSITIONAL[2]:-1}
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
RANKING="${BASE_PATH}/results/opt/pocl/ranking/${CKPT_NAME}/ranking.jsonl"
SAVE_PATH="${BASE_PATH}/results/opt/train/pocl/${TYPE}/0.1B_2.7B"
# divergence parameters (used by --type ab / sfkl / srkl)
AB_ALPHA=${AB_ALPHA:-0.2}
AB_BETA=${AB_BETA:-0.7}
SKEW_ALPHA=0.1
# curriculum: POCL's GPT-2 schedule
NUM_STAGES=4
STAGE_EPOCHS=5
KD_TEMPERATURE_START=1.0
KD_TEMPERATURE_END=2.0
KD_RATIO_START=0.7
KD_RATIO_END=1.0
RRF_K=60
# hyper-parameters
LR=0.00005
BATCH_SIZE=8
GRAD_ACC=1
EVAL_BATCH_SIZE=16
MAX_LENGTH=512
MAX_PROMPT_LENGTH=256
SEED=10
DS_CONFIG="${REPO_ROOT}/configs/deepspeed/ds_config.json"

DIVERGENCE_ARGS=()
case "${TYPE}" in
    ab) DIVERGENCE_ARGS=(--ab_alpha "${AB_ALPHA}" --ab_beta "${AB_BETA}") ;;
    sfkl|srkl) DIVERGENCE_ARGS=(--skew-alpha "${SKEW_ALPHA}") ;;
    fkl|rkl|jsd|tvd) ;;
    *) echo "train_0.1B_2.7B.sh: --type ${TYPE} is not a POCL divergence (fkl, rkl, jsd, tvd, sfkl, srkl, ab)" >&2; exit 2 ;;
esac

run_module distillation_llm.curriculum rank \
    --model-path "${CKPT}" \
    --data-dir "${DATA_DIR}" \
    --ranking "${RANKING}" \
    --rrf-k "${RRF_K}" \
    --max-prompt-length "${MAX_PROMPT_LENGTH}" \
    --max-length "${MAX_LENGTH}" \
    --batch-size "${EVAL_BATCH_SIZE}" \
    --seed "${SEED}"

launch_module distillation_llm.finetune \
    --type "${TYPE}" \
    "${DIVERGENCE_ARGS[@]}" \
    --model-path "${CKPT}" \
    --ckpt-name "${CKPT_NAME}-init" \
    --teacher-model-path "${TEACHER_CKPT}" \
    --teacher-ckpt-name "${TEACHER_CKPT_NAME}-sft" \
    --model-type opt \
    --teacher-model-fp16 \
    --data-dir "${DATA_DIR}" \
    --curriculum pocl \
    --ranking "${RANKING}" \
    --num-stages "${NUM_STAGES}" \
    --stage-epochs "${STAGE_EPOCHS}" \
    --kd-temperature-start "${KD_TEMPERATURE_START}" \
    --kd-temperature-end "${KD_TEMPERATURE_END}" \
    --kd-ratio-start "${KD_RATIO_START}" \
    --kd-ratio-end "${KD_RATIO_END}" \
    --lr "${LR}" \
    --batch-size "${BATCH_SIZE}" \
    --gradient-accumulation-steps "${GRAD_ACC}" \
    --eval-batch-size "${EVAL_BATCH_SIZE}" \
    --max-length "${MAX_LENGTH}" \
    --max-prompt-length "${MAX_PROMPT_LENGTH}" \
    --do-train \
    --do-valid \
    --log-interval 10 \
    --save "${SAVE_PATH}" \
    --seed "${SEED}" \
    --deepspeed_config "${DS_CONFIG}"
