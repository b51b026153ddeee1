#!/usr/bin/env bash
# POCL curriculum distillation of OPT-0.3B (OPT-350M) from the SFT'd OPT-2.7B on Dolly, POCL's OPT experiment
# (POCL scripts/opt/pocl/train_0.3B_2.7B/t0-t3.sh, --type tjsd); needs sft/sft_2.7B.sh (teacher).
# Usage: bash scripts/opt/pocl/train_0.3B_2.7B.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM] [--type tjsd|tfkl|tsrkl|trkl|ttvd|tsfkl|fkl|rkl|jsd|tvd|sfkl|srkl|ab]
set -euo pipefail
METHOD=pocl
source "$(dirname "${BASH_SOURCE[0]}")/../defaults.sh"
if [[ -z "${TYPE_GIVEN}" ]]; then TYPE=tjsd; fi  # POCL's OPT run: tempered JSD x T^2
CKPT_NAME="opt-0.3B"
STAGE_DEV_NUM=1000,1000,1000,1000  # POCL's OPT t0-t3 keep --dev-num 1000 (its GPT-2 ones drop to 500)
SAVE_PATH="${BASE_PATH}/results/opt/train/pocl/${TYPE}/0.3B_2.7B"
EVAL_BATCH_SIZE=64
finetune
