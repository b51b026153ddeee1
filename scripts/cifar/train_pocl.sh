#!/usr/bin/env bash
# POCL's curriculum (published for LLMs; its classification extension: abkd/curriculum.py): the initialised student and the
# teacher rank the training images (CE, forward KL at T = 4, RRF k = 60), then KD as train_kd.sh in 4 Baby Step stages of
# the 240 epochs, T rising 2 -> 4 and the KD weight 0.7 -> 1 x KD_WEIGHT.
# Usage: bash scripts/cifar/train_pocl.sh TEACHER STUDENT GPU [KD_WEIGHT]   (DRY_RUN=1 prints the commands)
set -euo pipefail
[[ $# -ge 3 && $# -le 4 ]] || { echo "usage: $0 TEACHER STUDENT GPU [KD_WEIGHT]" >&2; exit 2; }
TEACHER=$1
STUDENT=$2
GPU=$3
source "$(dirname "${BASH_SOURCE[0]}")/defaults.sh"
RANKING="save/pocl/S_${STUDENT}_T_${TEACHER##*/}/ranking.jsonl"
run_module standard_classification.rank_difficulty --path_t "${TEACHER_PATH}" --model_s "${STUDENT}" --data-folder "${DATA_FOLDER}" --kd-temperature 4 --ranking "${RANKING}"
train_student --distill kd --kd_T 4 --ce-weight 1 --kd-weight "${4:-2}" --curriculum pocl --ranking "${RANKING}" --num-stages 4
