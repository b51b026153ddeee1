#!/usr/bin/env bash
# KD (forward KL) of GPT-2 large (0.7B) from the SFT'd GPT-2 xlarge (1.5B) on Dolly;
# needs init/init_large.sh (student) and sft/sft_xlarge.sh (teacher).
# Usage: bash scripts/gpt2/kd/kd_large.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM]
set -euo pipefail
METHOD=kd
source "$(dirname "${BASH_SOURCE[0]}")/../defaults.sh"
CKPT_NAME="gpt2-large"
SAVE_PATH="${BASE_PATH}/results/gpt2/train/kd/0.7B_1.5B"
EPOCHS=10 EVAL_BATCH_SIZE=16
finetune
