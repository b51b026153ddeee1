#!/usr/bin/env bash
# MiniLLM of OPT-0.3B from the SFT'd OPT-2.7B on Dolly (DistiLLM's scripts/opt/minillm/train_0.3B_2.7B.sh);
# needs init/ (student) and sft/ (teacher) first.
# Usage: bash scripts/opt/minillm/train_0.3B_2.7B.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM]
set -euo pipefail
METHOD=minillm
source "$(dirname "${BASH_SOURCE[0]}")/../defaults.sh"
CKPT_NAME="opt-0.3B"
SAVE_PATH="${BASE_PATH}/results/opt/train/minillm/0.3B_2.7B"
BATCH_SIZE=8 GRAD_ACC=1 ROLLOUT_CHUNK_SIZE=8
EVAL_BATCH_SIZE=32  # the reference parser's default (its MiniLLM scripts pass none)
finetune
