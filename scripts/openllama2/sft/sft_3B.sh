#!/usr/bin/env bash
# LoRA SFT of OpenLLaMA-3B on Dolly: the SFT baseline that its distilled runs are compared with.
# Usage: bash scripts/openllama2/sft/sft_3B.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM]
# No OpenLLaMA here? SmolLM2-135M-Instruct, a real Llama model without a download: see scripts/openllama2/defaults.sh.
set -euo pipefail
METHOD=sft
source "$(dirname "${BASH_SOURCE[0]}")/../defaults.sh"

CKPT_NAME="openllama2-3B"
finetune
