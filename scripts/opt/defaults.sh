#!/usr/bin/env bash
# Defaults of the OPT launchers (sourced by scripts/opt/*/*.sh after they set METHOD): students
# initialised by init/, the teacher OPT-2.7B after sft/sft_2.7B.sh; DistiLLM's OPT scripts (every KD
# method with the LM loss; 20 epochs, 10 for the 1.3B student).
FAMILY=opt
MODEL_TYPE=opt
source "$(dirname "${BASH_SOURCE[0]}")/../llm.sh"

TEACHER_CKPT_NAME="opt-2.7B"
LM_METHODS="ab kd gkd distillm imitkd seqkd minillm"
PRETRAINED_STUDENT_METHODS="kd seqkd"  # DistiLLM's OPT kd_*/seqkd_* start from checkpoints/opt-*, not init/
SEQKD_TYPE=kd  # DistiLLM's OPT seqkd_*: --type kd with the teacher on the SeqKD data
if [[ "${METHOD}" != sft && "${METHOD}" != init ]]; then GRADIENT_CHECKPOINTING=1; fi  # as DistiLLM's OPT KD scripts
EVAL_BATCH_SIZE=8
RANK_TEMPERATURE=0.1  # POCL scripts/opt/tools/generate_data_dolly.sh
if [[ "${METHOD}" != pocl && "${METHOD}" != minillm ]]; then LR=0.00005; fi
EPOCHS=20
if [[ "${METHOD}" == init ]]; then EPOCHS=3; fi
