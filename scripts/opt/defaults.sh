#!/usr/bin/env bash
# Defaults of the OPT launchers (sourced by scripts/opt/*/*.sh after they set METHOD): students
# initialised by init/, the teacher OPT-2.7B after sft/sft_2.7B.sh, loaded in fp16.
FAMILY=opt
MODEL_TYPE=opt
source "$(dirname "${BASH_SOURCE[0]}")/../llm.sh"

TEACHER_CKPT_NAME="opt-2.7B"
TEACHER_FP16=1
LR=0.00005
EPOCHS=10
if [[ "${METHOD}" == init ]]; then EPOCHS=3; fi
