#!/usr/bin/env bash
# ABKD (alpha-beta divergence) of OPT-0.1B from the SFT'd OPT-2.7B on Dolly;
# needs init/init_0.1B.sh (student) and sft/sft_2.7B.sh (teacher).
# Usage: bash scripts/opt/ab/train_0.1B_2.7B.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM]
set -euo pipefail
METHOD=ab
source "$(dirname "${BASH_SOURCE[0]}")/../defaults.sh"
CKPT_NAME="opt-0.1B"
SAVE_PATH="${BASE_PATH}/results/opt/train/ab/0.1B_2.7B/a${AB_ALPHA}_b${AB_BETA}"
finetune
