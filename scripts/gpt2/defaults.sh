#!/usr/bin/env bash
# Defaults of the GPT-2 launchers (sourced by scripts/gpt2/*/*.sh after they set METHOD): students
# initialised by init/, the teacher GPT-2 xlarge (1.5B) after sft/sft_xlarge.sh. The values are those of
# the reference scripts (ABKD's for ab and the baselines, DistiLLM's for distillm, POCL's for pocl); each
# launcher sets what differs for its size (tests/data/reference_llm_launchers.json records them, tests/test_reference_llm_launchers.py compares).
FAMILY=gpt2
MODEL_TYPE=gpt2
source "$(dirname "${BASH_SOURCE[0]}")/../llm.sh"

TEACHER_CKPT_NAME="gpt2-xlarge"
LM_METHODS="ab distillm imitkd seqkd minillm"
if [[ "${METHOD}" != pocl && "${METHOD}" != minillm ]]; then LR=0.0005; fi
EPOCHS=20
if [[ "${METHOD}" == init ]]; then EPOCHS=3; fi
