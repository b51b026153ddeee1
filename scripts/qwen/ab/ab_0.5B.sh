#!/usr/bin/env bash
# ABKD (alpha-beta divergence) of Qwen2.5-0.5B from Qwen2.5-7B on Dolly;
# needs sft/sft_7B.sh (the teacher's LoRA adapter).
# Usage: bash scripts/qwen/ab/ab_0.5B.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM]
set -euo pipefail
METHOD=ab
source "$(dirname "${BASH_SOURCE[0]}")/../defaults.sh"

CKPT_NAME="qwen2.5-0.5B"
SAVE_PATH="${BASE_PATH}/results/qwen/train/ab/0.5B_7B/a${AB_ALPHA}_b${AB_BETA}"
finetune
