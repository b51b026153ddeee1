#!/usr/bin/env bash
# Short SFT of GPT-2 medium (0.3B) on Dolly that initialises its KD and AB runs: they read <save>/best (lowest validation loss).
# Usage: bash scripts/gpt2/init/init_medium.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM]
set -euo pipefail
METHOD=init
source "$(dirname "${BASH_SOURCE[0]}")/../defaults.sh"
CKPT_NAME="gpt2-medium"
SEED=11  # ABKD's init_medium.sh
EVAL_BATCH_SIZE=8
finetune
