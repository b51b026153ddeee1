#!/usr/bin/env bash
# Fetch the CIFAR-100 teachers published with CRD (Tian et al., ICLR 2020; github.com/HobbitLong/RepDistiller),
# which the KD, DKD, LS and ABKD papers all distil from, into TEACHER_DIR/<name>_vanilla/ckpt_epoch_240.pth.
# They are {"model": state_dict, ...} files that standard_classification.models loads with strict=True
# (ResNet50_vanilla is the zoo's `resnet50`). Or train your own:
#   python -m standard_classification.train_teacher --model resnet56     (-> save/models/resnet56_vanilla/)
# Usage: bash scripts/fetch_pretrained_teachers.sh [TEACHER_DIR]     (default save/models)
# Offline, or with DRY_RUN=1, it only prints what to fetch and where to put it; existing files are kept.
set -euo pipefail

TEACHER_DIR=${1:-save/models}
BASE_URL=http://shape2prog.csail.mit.edu/repo
TEACHERS="resnet56 resnet110 resnet32x4 wrn_40_2 vgg13 ResNet50"

for name in ${TEACHERS}; do
    target="${TEACHER_DIR}/${name}_vanilla/ckpt_epoch_240.pth"
    url="${BASE_URL}/${name}_vanilla/ckpt_epoch_240.pth"
    if [[ -f "${target}" ]]; then
        echo "${target} exists; kept."
        continue
    fi
    if [[ "${DRY_RUN:-0}" == 1 ]] || ! command -v curl > /dev/null; then
        echo "fetch ${url} -> ${target}"
        continue
    fi
    mkdir -p "$(dirname "${target}")"
    if curl --fail --location --connect-timeout 10 --output "${target}.part" "${url}"; then
        mv "${target}.part" "${target}"
        echo "${target}"
    else
        rm -f "${target}.part"
        echo "Could not fetch ${url} (offline or moved?). Copy the file to ${target} by hand," >&2
        echo "or train the teacher with python -m standard_classification.train_teacher --model <name>." >&2
    fi
done
