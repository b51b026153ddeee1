#!/usr/bin/env bash
# SFT of OPT-2.7B on Dolly: the teacher of every OPT KD/AB run (they read <save>/best).
# Usage: bash scripts/opt/sft/sft_2.7B.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM]
set -euo pipefail
METHOD=sft
source "$(dirname "${BASH_SOURCE[0]}")/../defaults.sh"
CKPT_NAME="opt-2.7B"
DS_CONFIG="${REPO_ROOT}/configs/deepspeed/ds_config_zero2.json"
BATCH_SIZE=4 EPOCHS=10 EVAL_BATCH_SIZE=8
finetune
