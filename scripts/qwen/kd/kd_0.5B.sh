#!/usr/bin/env bash
# KD (forward KL) of Qwen2.5-0.5B from Qwen2.5-7B on Dolly; needs sft/sft_7B.sh (the teacher's LoRA adapter).
# Usage: bash scripts/qwen/kd/kd_0.5B.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM]
set -euo pipefail
METHOD=kd
source "$(dirname "${BASH_SOURCE[0]}")/../defaults.sh"

CKPT_NAME="qwen2.5-0.5B"
SAVE_PATH="${BASE_PATH}/results/qwen/train/kd/0.5B_7B"
finetune
