#!/usr/bin/env bash
# DistiLLM of Qwen2.5-1.5B from Qwen2.5-7B on Dolly; needs sft/sft_7B.sh (the teacher's LoRA adapter).
# Usage: bash scripts/qwen/distillm/distillm_1.5B.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM]
set -euo pipefail
METHOD=distillm
source "$(dirname "${BASH_SOURCE[0]}")/../defaults.sh"

CKPT_NAME="qwen2.5-1.5B"
SAVE_PATH="${BASE_PATH}/results/qwen/train/distillm/1.5B_7B"
finetune
