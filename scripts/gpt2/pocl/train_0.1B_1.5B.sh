#!/usr/bin/env bash
# POCL curriculum distillation of GPT-2 base (0.1B) from the SFT'd GPT-2 xlarge (1.5B) on Dolly;
# needs init/init_base.sh (student) and sft/sft_xlarge.sh (teacher).
# Usage: bash scripts/gpt2/pocl/train_0.1B_1.5B.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM] [--type tfkl (default)|tjsd|tsrkl|trkl|ttvd|tsfkl|fkl|rkl|jsd|tvd|sfkl|srkl|ab]
set -euo pipefail
METHOD=pocl
source "$(dirname "${BASH_SOURCE[0]}")/../defaults.sh"
CKPT_NAME="gpt2-base"
SAVE_PATH="${BASE_PATH}/results/gpt2/train/pocl/${TYPE}/0.1B_1.5B"
finetune
