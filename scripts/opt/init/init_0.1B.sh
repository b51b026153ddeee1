#!/usr/bin/env bash
# Short SFT of OPT-0.1B on Dolly that initialises its KD and AB runs: they read <save>/best (lowest validation loss).
# Usage: bash scripts/opt/init/init_0.1B.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM]
set -euo pipefail
METHOD=init
source "$(dirname "${BASH_SOURCE[0]}")/../defaults.sh"
CKPT_NAME="opt-0.1B"
EVAL_BATCH_SIZE=16
finetune
