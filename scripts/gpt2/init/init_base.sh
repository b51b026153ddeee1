#!/usr/bin/env bash
# Short SFT of GPT-2 base (0.1B) on Dolly that initialises its KD and AB runs: they read <save>/best (lowest validation loss).
# Usage: bash scripts/gpt2/init/init_base.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM]
set -euo pipefail
METHOD=init
source "$(dirname "${BASH_SOURCE[0]}")/../defaults.sh"
CKPT_NAME="gpt2-base"
EVAL_BATCH_SIZE=32
finetune
