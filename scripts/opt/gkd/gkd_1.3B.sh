#!/usr/bin/env bash
# GKD of OPT-1.3B from the SFT'd OPT-2.7B on Dolly;
# needs init/init_1.3B.sh (student) and sft/sft_2.7B.sh (teacher).
# Usage: bash scripts/opt/gkd/gkd_1.3B.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM]
set -euo pipefail
METHOD=gkd
source "$(dirname "${BASH_SOURCE[0]}")/../defaults.sh"
CKPT_NAME="opt-1.3B"
DS_CONFIG="${REPO_ROOT}/configs/deepspeed/ds_config_zero2.json"
SAVE_PATH="${BASE_PATH}/results/opt/train/gkd/1.3B_2.7B"
EPOCHS=10
finetune
