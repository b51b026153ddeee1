#!/usr/bin/env bash
# Short SFT of OPT-1.3B on Dolly that initialises its KD and AB runs: they read <save>/best (lowest validation loss).
# Usage: bash scripts/opt/init/init_1.3B.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM]
set -euo pipefail
METHOD=init
source "$(dirname "${BASH_SOURCE[0]}")/../defaults.sh"
CKPT_NAME="opt-1.3B"
DS_CONFIG="${REPO_ROOT}/configs/deepspeed/ds_config_zero2.json"
BATCH_SIZE=2
finetune
