#!/usr/bin/env bash
# PromptKD with each divergence of abkd.losses in KD's place (T^2 * batch mean / C, kd's reduction), KD weight as
# train_kd.sh (ABKD's base2new_train_kd.sh: 200 for fgvc_aircraft, oxford_flowers, dtd, else 1000): one run per name in
# DIVERGENCES (default all six; jsd at JSD_LAM, sfkl/srkl at SKEW_ALPHA, 0.1) and seed, then the base/new/HM table.
# Usage: bash scripts/clip/train_divergences.sh [DATASET] [DATA_ROOT] [GPU_NUM]   (DRY_RUN=1 prints the commands)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/defaults.sh"

case "${DATASET}" in
    fgvc_aircraft | oxford_flowers | dtd) KD_WEIGHT=200.0 ;;
    *) KD_WEIGHT=1000.0 ;;
esac
for name in ${DIVERGENCES:-fkl rkl jsd tvd sfkl srkl}; do
    train_seeds "${name}" --distill "${name}" --jsd-lam "${JSD_LAM:-0.1}" --skew-alpha "${SKEW_ALPHA:-0.1}" --kd-weight "${KD_WEIGHT}"
done
summarize
