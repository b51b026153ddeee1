#!/usr/bin/env bash
# ABKD on CIFAR-100: a sweep over the alpha-beta divergence's (alpha, beta). For every alpha+beta
# from START_AB to END_AB and every alpha from START_ALPHA to END_ALPHA (both in steps of 0.1,
# ends included), beta = (alpha+beta) - alpha and one student is distilled with --distill ab.
# Usage: bash standard_classification/train_ab.sh START_AB END_AB START_ALPHA END_ALPHA TEACHER STUDENT GPU KD_WEIGHT
#   e.g. bash standard_classification/train_ab.sh 1.0 1.2 0.7 0.9 resnet56 resnet20 1 0.9
# TEACHER is a zoo name, read from $TEACHER_DIR/<name>_vanilla/ckpt_epoch_240.pth, or a checkpoint
# file; GPU is the number of processes torchrun starts. Runs from the repository root; outputs go
# to save/student_model/S_<student>_T_<teacher>_ab_a<alpha>_b<beta>_... . DRY_RUN=1 prints the commands.
set -euo pipefail

if [[ $# -ne 8 ]]; then
    echo "usage: $0 START_AB END_AB START_ALPHA END_ALPHA TEACHER STUDENT GPU KD_WEIGHT" >&2
    exit 2
fi
START_AB=$1
END_AB=$2
START_ALPHA=$3
END_ALPHA=$4
TEACHER=$5
STUDENT=$6
GPU=$7
KD_WEIGHT=$8
STEP=0.1
KD_T=4
CE_WEIGHT=0.1
DATA_FOLDER=${DATA_FOLDER:-data/cifar100}
TEACHER_DIR=${TEACHER_DIR:-save/models}
DEEPSPEED_CONFIG=configs/deepspeed/ds_config.json

cd "$(dirname "${BASH_SOURCE[0]}")/.."
TEACHER_PATH=${TEACHER}
[[ -f "${TEACHER}" ]] || TEACHER_PATH="${TEACHER_DIR}/${TEACHER}_vanilla/ckpt_epoch_240.pth"

# START END -> START, START + STEP, ... <= END (computed as START + i * STEP, printed with %g).
grid() {
    LC_ALL=C awk -v start="$1" -v end="$2" -v step="${STEP}" 'BEGIN {
        if (start + 0 > end + 0) { printf "train_ab.sh: start %s > end %s\n", start, end > "/dev/stderr"; exit 1 }
        for (i = 0; start + i * step <= end + 1e-9; i++) printf "%g\n", start + i * step
    }'
}

run() {
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
        printf 'python -m %q' "$1"; shift; printf ' %q' "$@"; printf '\n'
    else
        torchrun --standalone --nproc_per_node "${GPU}" -m "$@"
    fi
}

for ab in $(grid "${START_AB}" "${END_AB}"); do
    for alpha in $(grid "${START_ALPHA}" "${END_ALPHA}"); do
        beta=$(LC_ALL=C awk -v ab="${ab}" -v alpha="${alpha}" 'BEGIN { printf "%g", ab - alpha }')
        run standard_classification.train_student --path_t "${TEACHER_PATH}" --model_s "${STUDENT}" \
            --distill ab --ab_alpha "${alpha}" --ab_beta "${beta}" --kd_T "${KD_T}" \
            --ce-weight "${CE_WEIGHT}" --kd-weight "${KD_WEIGHT}" \
            --data-folder "${DATA_FOLDER}" --deepspeed_config "${DEEPSPEED_CONFIG}"
    done
done
