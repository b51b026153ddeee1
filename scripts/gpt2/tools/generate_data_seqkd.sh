#!/usr/bin/env bash
# SeqKD data for the GPT-2 students: the SFT'd GPT-2 xlarge answers every Dolly training prompt and the
# answers are saved as a processed dataset (train = the teacher's answers, valid copied) for --type seqkd.
# The seqkd launchers run this same step (the tool does nothing when the dataset already exists); run it
# alone to make the data once before several runs or nodes. Needs sft/sft_xlarge.sh to have run.
# Usage: bash scripts/gpt2/tools/generate_data_seqkd.sh [BASE_PATH]
#   DRY_RUN=1 prints the command instead of running it
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../launch.sh"

BASE_PATH=${1:-$(pwd)}
TEACHER_CKPT_NAME="gpt2-xlarge"
TEACHER_CKPT="${BASE_PATH}/results/gpt2/train/sft/${TEACHER_CKPT_NAME}/best/"
DATA_DIR="${BASE_PATH}/processed_data/dolly/full/gpt2/"
SEQKD_DATA_DIR="${BASE_PATH}/processed_data/dolly/seqkd/${TEACHER_CKPT_NAME}/"
# the settings of the seqkd launchers (sampling at temperature 1, as MiniLLM/DistiLLM)
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
    --do-sample \
    --top-k 0 \
    --top-p 1.0 \
    --temperature 1.0 \
    --batch-size "${GEN_BATCH_SIZE}" \
    --seed "${GEN_SEED}"
