#!/usr/bin/env bash
# MiniLLM of GPT-2 medium (0.3B) from the SFT'd GPT-2 xlarge (1.5B) on Dolly (DistiLLM's scripts/gpt2/minillm/train_medium_xl.sh);
# needs init/ (student) and sft/ (teacher) first.
# Usage: bash scripts/gpt2/minillm/train_0.3B_1.5B.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM]
set -euo pipefail
METHOD=minillm
source "$(dirname "${BASH_SOURCE[0]}")/../defaults.sh"
CKPT_NAME="gpt2-medium"
SAVE_PATH="${BASE_PATH}/results/gpt2/train/minillm/0.3B_1.5B"
BATCH_SIZE=2 GRAD_ACC=2 ROLLOUT_CHUNK_SIZE=8
EVAL_BATCH_SIZE=32  # the reference parser's default (its MiniLLM scripts pass none)
finetune
