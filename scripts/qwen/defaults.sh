#!/usr/bin/env bash
# Defaults of the Qwen2.5 launchers (sourced by scripts/qwen/*/*.sh after they set METHOD): students train
# LoRA adapters from checkpoints/<name> (finetune cannot continue a student adapter, so there is no init
# run); the teacher is checkpoints/qwen2.5-7B with the adapter of sft/sft_7B.sh merged in. Micro-batches of 4
# sequences, 16 per optimizer step and GPU.
FAMILY=qwen
MODEL_TYPE=qwen2
source "$(dirname "${BASH_SOURCE[0]}")/../llm.sh"

TEACHER_CKPT_NAME="qwen2.5-7B"
PEFT=lora
LR=0.0001
BATCH_SIZE=4
GRAD_ACC=4
REFERENCE_PROCESSES=1  # our own recipe: global batch BATCH_SIZE x GRAD_ACC = 16, whatever GPU_NUM
EVAL_BATCH_SIZE=8
EPOCHS=10
DS_CONFIG="${REPO_ROOT}/configs/deepspeed/ds_config_zero2.json"
