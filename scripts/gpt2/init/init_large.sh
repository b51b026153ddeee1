#!/usr/bin/env bash
# Short SFT of GPT-2 large (0.7B) on Dolly that initialises its KD and AB runs: they read <save>/best (lowest validation loss).
# Usage: bash scripts/gpt2/init/init_large.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM]
set -euo pipefail
METHOD=init
source "$(dirname "${BASH_SOURCE[0]}")/../defaults.sh"
CKPT_NAME="gpt2-large"
EVAL_BATCH_SIZE=8
finetune
