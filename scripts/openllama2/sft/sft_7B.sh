#!/usr/bin/env bash
# LoRA SFT of OpenLLaMA-7B on Dolly: the teacher of the OpenLLaMA-3B KD/AB/DistiLLM runs, which
# merge this adapter (<save>/best) into checkpoints/openllama2-7B. ZeRO-3 partitions the 7B weights.
# Usage: bash scripts/openllama2/sft/sft_7B.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM]
# No OpenLLaMA here? SmolLM2-135M-Instruct, a real Llama model without a download: see scripts/openllama2/defaults.sh.
set -euo pipefail
METHOD=sft
source "$(dirname "${BASH_SOURCE[0]}")/../defaults.sh"

CKPT_NAME="openllama2-7B"
DS_CONFIG="${REPO_ROOT}/configs/deepspeed/ds_config_zero3.json"
finetune
