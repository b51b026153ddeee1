#!/usr/bin/env bash
# SeqKD of GPT-2 medium (0.3B) from the SFT'd GPT-2 xlarge (1.5B) on Dolly;
# needs init/init_medium.sh (student) and sft/sft_xlarge.sh (teacher).
# Usage: bash scripts/gpt2/seqkd/seqkd_medium.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM]
set -euo pipefail
METHOD=seqkd
source "$(dirname "${BASH_SOURCE[0]}")/../defaults.sh"
CKPT_NAME="gpt2-medium"
SAVE_PATH="${BASE_PATH}/results/gpt2/train/seqkd/0.3B_1.5B"
EVAL_BATCH_SIZE=32
finetune
