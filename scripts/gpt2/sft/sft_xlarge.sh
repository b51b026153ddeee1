#!/usr/bin/env bash
# SFT of GPT-2 xlarge (1.5B) on Dolly: the teacher of every GPT-2 KD/AB run (they read <save>/best).
# Usage: bash scripts/gpt2/sft/sft_xlarge.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM]
set -euo pipefail
METHOD=sft
source "$(dirname "${BASH_SOURCE[0]}")/../defaults.sh"
CKPT_NAME="gpt2-xlarge"
LR=0.00005 BATCH_SIZE=2 EPOCHS=10 EVAL_BATCH_SIZE=8
DS_CONFIG="${REPO_ROOT}/configs/deepspeed/ds_config_zero2.json"
finetune
