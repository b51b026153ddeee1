#!/usr/bin/env bash
# LoRA SFT of OpenLLaMA-3B on Dolly: the SFT baseline that its distilled runs are compared with.
# Usage: bash scripts/openllama2/sft/sft_3B.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM]
# No OpenLLaMA on this machine? A real Llama-family model without a download: python -m tools.real_checkpoint smollm2-135m-instruct
# --out checkpoints/smollm2-135m-instruct (SmolLM2-135M-Instruct; set CKPT_NAME / TEACHER_CKPT_NAME to it, see README.md).
set -euo pipefail
METHOD=sft
source "$(dirname "${BASH_SOURCE[0]}")/../defaults.sh"

CKPT_NAME="openllama2-3B"
finetune
