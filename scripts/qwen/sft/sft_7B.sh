#!/usr/bin/env bash
# LoRA SFT of Qwen2.5-7B on Dolly: the teacher of the Qwen2.5-0.5B and Qwen2.5-1.5B KD/AB/DistiLLM runs, which
# merge this adapter (<save>/best) into checkpoints/qwen2.5-7B. ZeRO-3 partitions the 7B weights.
# Usage: bash scripts/qwen/sft/sft_7B.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM]
set -euo pipefail
METHOD=sft
source "$(dirname "${BASH_SOURCE[0]}")/../defaults.sh"

CKPT_NAME="qwen2.5-7B"
DS_CONFIG="${REPO_ROOT}/configs/deepspeed/ds_config_zero3.json"
finetune
