#!/usr/bin/env bash
# POCL curriculum distillation of OPT-0.1B (OPT-125M) from the SFT'd OPT-2.7B on Dolly;
# needs init/init_0.1B.sh (student) and sft/sft_2.7B.sh (teacher).
# Usage: bash scripts/opt/pocl/train_0.1B_2.7B.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM] [--type tfkl (default)|tjsd|tsrkl|trkl|ttvd|tsfkl|fkl|rkl|jsd|tvd|sfkl|srkl|ab]
set -euo pipefail
METHOD=pocl
source "$(dirname "${BASH_SOURCE[0]}")/../defaults.sh"
CKPT_NAME="opt-0.1B"
SAVE_PATH="${BASE_PATH}/results/opt/train/pocl/${TYPE}/0.1B_2.7B"
finetune
