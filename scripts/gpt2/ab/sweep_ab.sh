#!/usr/bin/env bash
# Grid search over (ab_alpha, ab_beta) for GPT-2 base (0.1B) distilled from GPT-2 xlarge (1.5B): runs
# train_0.1B_1.5B.sh once per grid point, one after the other, each saving to .../ab/0.1B_1.5B/a<alpha>_b<beta>.
# The grid includes both ends; set it with positional arguments 4-9 or the environment variables below.
# Usage: bash scripts/gpt2/ab/sweep_ab.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM] \
#            [ALPHA_START ALPHA_END ALPHA_STEP BETA_START BETA_END BETA_STEP]
#   NNODES, NODE_RANK, MASTER_ADDR, HOSTFILE and DRY_RUN reach every run through the environment.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../launch.sh"

BASE_PATH=${1:-$(pwd)}
MASTER_PORT=${2:-2012}
GPU_NUM=${3:-1}
ALPHAS=$(grid "${4:-${ALPHA_START:-0.1}}" "${5:-${ALPHA_END:-0.5}}" "${6:-${ALPHA_STEP:-0.1}}")
BETAS=$(grid "${7:-${BETA_START:-0.5}}" "${8:-${BETA_END:-0.9}}" "${9:-${BETA_STEP:-0.1}}")
TRAIN_SCRIPT="$(dirname "${BASH_SOURCE[0]}")/train_0.1B_1.5B.sh"

for alpha in ${ALPHAS}; do
    for beta in ${BETAS}; do
        AB_ALPHA="${alpha}" AB_BETA="${beta}" bash "${TRAIN_SCRIPT}" "${BASE_PATH}" "${MASTER_PORT}" "${GPU_NUM}"
    done
done
