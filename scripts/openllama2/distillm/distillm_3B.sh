#!/usr/bin/env bash
# DistiLLM of OpenLLaMA-3B from OpenLLaMA-7B on Dolly; needs sft/sft_7B.sh (the teacher's LoRA adapter).
# Usage: bash scripts/openllama2/distillm/distillm_3B.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM]
# No OpenLLaMA here? SmolLM2-135M-Instruct, a real Llama model without a download: see scripts/openllama2/defaults.sh.
set -euo pipefail
METHOD=distillm
source "$(dirname "${BASH_SOURCE[0]}")/../defaults.sh"

CKPT_NAME="openllama2-3B"
SAVE_PATH="${BASE_PATH}/results/openllama2/train/distillm/3B_7B"
finetune
