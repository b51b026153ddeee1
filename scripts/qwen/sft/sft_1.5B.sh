#!/usr/bin/env bash
# LoRA SFT of Qwen2.5-1.5B on Dolly: the SFT baseline that its distilled runs are compared with.
# Usage: bash scripts/qwen/sft/sft_1.5B.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM]
set -euo pipefail
METHOD=sft
source "$(dirname "${BASH_SOURCE[0]}")/../defaults.sh"

CKPT_NAME="qwen2.5-1.5B"
finetune
