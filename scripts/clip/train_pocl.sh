#!/usr/bin/env bash
# POCL's curriculum (published for LLMs; its classification extension: abkd/curriculum.py): per seed, the initialised student
# and the teacher rank the training images (CE, forward KL at T = 1, RRF k = 60), then KD as train_kd.sh in 4 Baby Step
# stages of 5 epochs, T rising 0.5 -> 1 and the KD weight 0.7 -> 1 x; then the base/new/HM table.
# Usage: bash scripts/clip/train_pocl.sh [DATASET] [DATA_ROOT] [GPU_NUM]   (DRY_RUN=1 prints the commands)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/defaults.sh"
for seed in ${SEEDS}; do
    ranking="${SAVE_ROOT}/pocl/ranking_seed${seed}.jsonl"
    run_module base_to_new_classification.rank_difficulty --dataset "${DATASET}" --root "${DATA_ROOT}" --teacher-model-path "${TEACHER_MODEL}" \
        --student-model-path "${STUDENT_MODEL}" --teacher-ckpt "${TEACHER_CKPT}" --kd-temperature "${TEMPERATURE}" --seed "${seed}" --ranking "${ranking}"
    SEEDS=${seed} train_seeds pocl --distill kd --kd-weight "${KD_WEIGHT}" --curriculum pocl --ranking "${ranking}" --num-stages 4
done
summarize
