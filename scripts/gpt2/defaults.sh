#!/usr/bin/env bash
# Defaults of the GPT-2 launchers (sourced by scripts/gpt2/*/*.sh after they set METHOD): students
# initialised by init/, the teacher GPT-2 xlarge (1.5B) after sft/sft_xlarge.sh; DistiLLM's GPT-2 recipe.
FAMILY=gpt2
MODEL_TYPE=gpt2
source "$(dirname "${BASH_SOURCE[0]}")/../llm.sh"

TEACHER_CKPT_NAME="gpt2-xlarge"
LR=0.0005
EPOCHS=20
case "${METHOD}" in
    init) EPOCHS=3 ;;
    ab) EPOCHS=10 ;;
esac
