#!/usr/bin/env bash
# GKD of OPT-0.1B from the SFT'd OPT-2.7B on Dolly;
# needs init/init_0.1B.sh (student) and sft/sft_2.7B.sh (teacher).
# Usage: bash scripts/opt/gkd/gkd_0.1B.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM]
set -euo pipefail
METHOD=gkd
source "$(dirname "${BASH_SOURCE[0]}")/../defaults.sh"
CKPT_NAME="opt-0.1B"
SAVE_PATH="${BASE_PATH}/results/opt/train/gkd/0.1B_2.7B"
finetune
