#!/usr/bin/env bash
# Grid search over (ab_alpha, ab_beta) for GPT-2 base (0.1B) distilled from GPT-2 xlarge (1.5B): runs
# train_0.1B_1.5B.sh once per grid point, one after the other, each saving to .../ab/0.1B_1.5B/a<alpha>_b<beta>.
# The grid includes both ends; set it with positional arguments 4-9 or the environment variables below.
# Usage: bash scripts/gpt2/ab/sweep_ab.sh [BASE_PATH] [MASTER_PORT] [GPU_NUM] \
#            [ALPHA_START ALPHA_END ALPHA_STEP BETA_START BETA_END BETA_STEP]
#   NNODES, NODE_RANK, MASTER_ADDR, HOSTFILE and DRY_RUN reach every run through the environment.
set -euo pipefail

BASE_PATH=${1:-$(pwd)}
MASTER_PORT=${2:-2012}
GPU_NUM=${3:-1}
ALPHA_START=${4:-${ALPHA_START:-0.1}}
ALPHA_END=${5:-${ALPHA_END:-0.5}}
ALPHA_STEP=${6:-${ALPHA_STEP:-0.1}}
BETA_START=${7:-${BETA_START:-0.5}}
BETA_END=${8:-${BETA_END:-0.9}}
BETA_STEP=${9:-${BETA_STEP:-0.1}}
TRAIN_SCRIPT="$(dirname "${BASH_SOURCE[0]}")/train_0.1B_1.5B.sh"

# START END STEP -> the values START, START + STEP, ... <= END, one a line. Computed as START + i * STEP
# (not by repeated addition) and printed with %g, so 0.1 0.3 0.1 gives 0.1 0.2 0.3.
grid() {
    LC_ALL=C awk -v start="$1" -v end="$2" -v step="$3" 'BEGIN {
        number = "^[-+]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][-+]?[0-9]+)?$"
        if (start !~ number || end !~ number || step !~ number || step + 0 <= 0 || start + 0 > end + 0) {
            printf "sweep_ab.sh: bad grid START=%s END=%s STEP=%s (need numbers, START <= END, STEP > 0)\n", start, end, step > "/dev/stderr"
            exit 1
        }
        for (i = 0; start + i * step <= end + 1e-9 * step; i++) printf "%g\n", start + i * step
    }'
}
ALPHAS=$(grid "${ALPHA_START}" "${ALPHA_END}" "${ALPHA_STEP}")
BETAS=$(grid "${BETA_START}" "${BETA_END}" "${BETA_STEP}")

for alpha in ${ALPHAS}; do
    for beta in ${BETAS}; do
        AB_ALPHA="${alpha}" AB_BETA="${beta}" bash "${TRAIN_SCRIPT}" "${BASE_PATH}" "${MASTER_PORT}" "${GPU_NUM}"
    done
done
