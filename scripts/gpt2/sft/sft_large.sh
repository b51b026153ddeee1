#!/usr/bin/env bash
# SFT of GPT-2 large (0.7B) on Dolly without a teacher: the "SFT w/o KD" baseline.
# Usage: bash scripts/gpt2/sft/sft_large.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM]
set -euo pipefail
METHOD=sft
source "$(dirname "${BASH_SOURCE[0]}")/../defaults.sh"
CKPT_NAME="gpt2-large"
LR=0.0001 EPOCHS=10 EVAL_BATCH_SIZE=8
finetune
