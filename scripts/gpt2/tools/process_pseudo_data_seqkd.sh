#!/usr/bin/env bash
# MiniLLM/DistiLLM had a step here that tokenised the teacher's generated text. There is nothing to
# convert in this project: tools.generate_data_seqkd already writes a processed dataset in the format of
# tools.process_data_dolly. This script only remakes that dataset with another decoding setting (greedy
# below, instead of the launchers' sampling), replacing it in place (--overwrite). The seqkd launchers
# check how the dataset was made: give their generation step the same flags, or they stop with
# "processed differently" rather than train on it.
# Usage: bash scripts/gpt2/tools/process_pseudo_data_seqkd.sh [BASE_PATH]
#   DRY_RUN=1 prints the command instead of running it
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../launch.sh"

BASE_PATH=${1:-$(pwd)}
TEACHER_CKPT_NAME="gpt2-xlarge"
TEACHER_CKPT="${BASE_PATH}/results/gpt2/train/sft/${TEACHER_CKPT_NAME}/best/"
DATA_DIR="${BASE_PATH}/processed_data/dolly/full/gpt2/"
SEQKD_DATA_DIR="${BASE_PATH}/processed_data/dolly/seqkd/${TEACHER_CKPT_NAME}/"
MAX_PROMPT_LENGTH=256
GEN_MAX_NEW_TOKENS=256
GEN_BATCH_SIZE=32
GEN_SEED=10

run_module tools.generate_data_seqkd \
    --model-path "${TEACHER_CKPT}" \
    --data-dir "${DATA_DIR}" \
    --processed-data-dir "${SEQKD_DATA_DIR}" \
    --max-prompt-length "${MAX_PROMPT_LENGTH}" \
    --max-new-tokens "${GEN_MAX_NEW_TOKENS}" \
    --no-do-sample \
    --top-k 0 \
    --top-p 1.0 \
    --temperature 1.0 \
    --batch-size "${GEN_BATCH_SIZE}" \
    --seed "${GEN_SEED}" \
    --overwrite
