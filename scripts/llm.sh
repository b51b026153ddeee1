#!/usr/bin/env bash
# Sourced by scripts/<family>/defaults.sh (not run on its own): what every LLM launcher shares. Reads the
# launcher's arguments `[BASE_PATH] [MASTER_PORT] [GPU_NUM]` (pocl launchers also `--type DIVERGENCE`),
# sets the defaults of METHOD, and defines `finetune`, which a launcher calls after its overrides. METHOD:
#   sft, init   plain SFT from BASE_PATH/checkpoints/CKPT_NAME (init: a short one that starts the KD runs)
#   kd, ab      forward KL / the alpha-beta divergence on Dolly's answers
#   imitkd      forward KL on the student's own samples, in every batch
#   gkd         generalised JSD (GKD_BETA) on the student's samples in a fraction MIXED_ALPHA of the batches
#   distillm    skew reverse KL; the share of student samples (fresh or replayed) rises when validation worsens
#   seqkd       the teacher answers every training prompt once (`generate_seqkd_data`), then SFT on those
#   pocl        the student ranks the data, then a Baby Step curriculum with --type TYPE
#   minillm     policy gradient on teacher-mixed samples of the student (MiniLLM, DistiLLM's train_minillm.py)
# Distillation students start from init/CKPT_NAME/best (or the pretrained checkpoint for PRETRAINED_STUDENT_METHODS) and the teacher from sft/TEACHER_CKPT_NAME/best;
# with PEFT=lora both from BASE_PATH/checkpoints, the teacher with its LoRA SFT adapter merged in.
source "$(dirname "${BASH_SOURCE[0]}")/launch.sh"

TYPE=${METHOD}
TYPE_GIVEN=""
if [[ "${METHOD}" == pocl ]]; then TYPE=tfkl; fi  # POCL's published loss: tempered forward KL x T^2
POSITIONAL=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --type) [[ "${METHOD}" == pocl ]] || { echo "$0: only the pocl launchers take --type" >&2; exit 2; }
                TYPE=$2; TYPE_GIVEN=1; shift 2 ;;
        *) POSITIONAL+=("$1"); shift ;;
    esac
done
BASE_PATH=${POSITIONAL[0]:-$(pwd)}
MASTER_PORT=${POSITIONAL[1]:-2012}
GPU_NUM=${POSITIONAL[2]:-1}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-localhost}
HOSTFILE=${HOSTFILE:-}

# Paths derived from CKPT_NAME / TEACHER_CKPT_NAME unless a launcher sets them.
DATA_DIR="${BASE_PATH}/processed_data/dolly/full/${FAMILY}/"
CKPT=""
TEACHER_CKPT=""
TEACHER_PEFT_PATH=""
SAVE_PATH=""
TEACHER_FP16=1
# The reference's extra language-modelling loss (1.0 x LM on OpenWebText) for the methods in LM_METHODS (set by a
# family's defaults); LM_DATA_DIR is made by tools.process_data_pretrain (see lm_data_check).
LM_METHODS=""
# Methods whose student starts from the pretrained checkpoint rather than init/ (a family's defaults set it).
PRETRAINED_STUDENT_METHODS=""
LM_DATA_DIR="${BASE_PATH}/processed_data/openwebtext/${FAMILY}/512/"
# optimisation. BATCH_SIZE and GRAD_ACC are the reference's per process; the references ran
# REFERENCE_PROCESSES processes, so GLOBAL_BATCH (default REFERENCE_PROCESSES x BATCH_SIZE x GRAD_ACC) is
# theirs, and the accumulation is set to reach it with the GPU_NUM x NNODES processes given (a count that
# does not divide it is refused).
REFERENCE_PROCESSES=4
BATCH_SIZE=8
GRAD_ACC=1
GLOBAL_BATCH=${GLOBAL_BATCH:-}
EVAL_BATCH_SIZE=64
# fp16 with dynamic loss scaling, as the references train (bf16: the DeepSpeed config's bf16; CPU: fp32)
PRECISION=${PRECISION:-fp16}
MAX_LENGTH=512
MAX_PROMPT_LENGTH=256
DEV_NUM=1000
LR_MIN=1e-7
EVAL_INTERVAL=-1  # validate (dev ROUGE-L with --eval-gen) at every epoch end
LOG_INTERVAL=4
SEED=10
DS_CONFIG="${REPO_ROOT}/configs/deepspeed/ds_config.json"
KD_RATIO=1.0
GRADIENT_CHECKPOINTING=0  # 1: recompute the student's activations in the backward pass (--gradient-checkpointing)
# LoRA adapters of the student (PEFT=lora)
PEFT=none
LORA_R=16
LORA_ALPHA=32
LORA_DROPOUT=0.1
# the alpha-beta divergence (ab, pocl --type ab); the sweeps pass AB_ALPHA/AB_BETA through the environment
AB_ALPHA=${AB_ALPHA:-0.2}
AB_BETA=${AB_BETA:-0.7}
# GKD: the student's samples with probability MIXED_ALPHA (lambda); the JSD mixes GKD_BETA of the teacher
MIXED_ALPHA=0.5
GKD_BETA=0.1  # lambda = 1 - beta = 0.9, DistiLLM's mixed-jsd
# DistiLLM's published recipe: the student-generated share starts at INIT_THRESHOLD and rises by 0.1 when the
# validation loss (once an epoch) worsens by more than LOSS_EPS; CAPACITY generations per process in the replay buffer
SKEW_ALPHA=0.1
INIT_THRESHOLD=0.0
LOSS_EPS=0.1
CAPACITY=1000
REPLAY_RATIO=decreasing  # DistiLLM's default: the fresh-generation share falls, replay grows
# SeqKD teacher generation (sampling at temperature 1, as MiniLLM/DistiLLM); the dataset's fingerprint, so
# the seqkd launchers of a family and tools/generate_data_seqkd.sh must agree on it
GEN_MAX_NEW_TOKENS=256
GEN_BATCH_SIZE=32
GEN_SEED=10
GEN_SAMPLING=--do-sample
# The seqkd launchers' --type on that data: seqkd (cross-entropy, ABKD's GPT-2 scripts, which pass no teacher)
# or kd (forward KL from the teacher on it, DistiLLM's OPT scripts)
SEQKD_TYPE=seqkd
# POCL: the pretrained student ranks the data (reciprocal rank fusion of its near-greedy samples), then the
# Baby Step schedule with POCL's settings (8 epochs a stage, lr 1e-4, batch 16, JSD lambda 0.9, 1000 dev examples
# in the first stage and 500 after, each stage from the previous one's last step)
RRF_K=60
RANK_TEMPERATURE=0.01  # POCL's GPT-2 ranking samples at 0.01, its OPT ranking at 0.1 (opt/defaults.sh)
NUM_STAGES=4
STAGE_EPOCHS=8
STAGE_DEV_NUM=1000,500,500,500
STAGE_START=last
JSD_LAM=0.9
if [[ "${METHOD}" == pocl ]]; then LR=0.0001; BATCH_SIZE=16; fi
# MiniLLM (minillm_args); KD_RATIO there weighs forward KL against CE on the LM data
TOTAL_ITERS=5000
NUM_ROLLOUTS=256
ROLLOUT_CHUNK_SIZE=16
if [[ "${METHOD}" == minillm ]]; then LR=0.000005; LR_MIN=0.000005; KD_RATIO=0.5; EVAL_INTERVAL=100; LOG_INTERVAL=16; fi
KD_TEMPERATURE_START=1.0
KD_TEMPERATURE_END=2.0
KD_RATIO_START=0.7
KD_RATIO_END=1.0
# Offline teacher: with TEACHER_CACHE set (a folder), the teacher's top CACHE_TOP_K tokens on DATA_DIR are cached
# there once (tools.cache_teacher_logits, when the folder holds no complete cache yet) and the KD runs read them
# with --teacher-cache instead of loading the teacher, e.g. `TEACHER_CACHE=... bash scripts/gpt2/ab/sweep_ab.sh`.
# Not for imitkd, gkd, distillm: they need the teacher on the student's fresh samples.
TEACHER_CACHE=${TEACHER_CACHE:-}
CACHE_TOP_K=${CACHE_TOP_K:-128}

# Set TEACHER_CKPT (and TEACHER_PEFT_PATH) / CKPT unless the launcher did.
resolve_teacher() {
    if [[ "${PEFT}" == lora ]]; then
        TEACHER_CKPT=${TEACHER_CKPT:-"${BASE_PATH}/checkpoints/${TEACHER_CKPT_NAME}/"}
        TEACHER_PEFT_PATH=${TEACHER_PEFT_PATH:-"${BASE_PATH}/results/${FAMILY}/train/sft/${TEACHER_CKPT_NAME}-lora/best/"}
    else
        TEACHER_CKPT=${TEACHER_CKPT:-"${BASE_PATH}/results/${FAMILY}/train/sft/${TEACHER_CKPT_NAME}/best/"}
    fi
}

resolve_student() {
    if [[ " ${PRETRAINED_STUDENT_METHODS} " == *" ${METHOD} "* ]]; then
        CKPT=${CKPT:-"${BASE_PATH}/checkpoints/${CKPT_NAME}/"}; CKPT_TAG=""; return
    fi
    case "${METHOD}:${PEFT}" in
        sft:*|init:*|pocl:*|*:lora) CKPT=${CKPT:-"${BASE_PATH}/checkpoints/${CKPT_NAME}/"}; CKPT_TAG="" ;;
        *) CKPT=${CKPT:-"${BASE_PATH}/results/${FAMILY}/train/init/${CKPT_NAME}/best/"}; CKPT_TAG=-init ;;
    esac
}

# The teacher answers every training prompt into processed_data/dolly/seqkd/TEACHER_CKPT_NAME (does nothing
# when that dataset exists); extra arguments are passed on.
generate_seqkd_data() {
    resolve_teacher
    SEQKD_DATA_DIR="${BASE_PATH}/processed_data/dolly/seqkd/${TEACHER_CKPT_NAME}/"
    run_module tools.generate_data_seqkd --model-path "${TEACHER_CKPT}" --data-dir "${DATA_DIR}" \
        --processed-data-dir "${SEQKD_DATA_DIR}" --max-prompt-length "${MAX_PROMPT_LENGTH}" \
        --max-new-tokens "${GEN_MAX_NEW_TOKENS}" "${GEN_SAMPLING}" --top-k 0 --top-p 1.0 --temperature 1.0 \
        --batch-size "${GEN_BATCH_SIZE}" --seed "${GEN_SEED}" "$@"
}

# The LM term's data is not shipped: say how to make it, and stop unless this is a dry run.
lm_data_check() {
    [[ -f "${LM_DATA_DIR}/meta.json" || "${DRY_RUN:-0}" == 1 ]] && return 0
    echo "$(basename "$0"): no pre-training data for the LM loss in ${LM_DATA_DIR}; make it from OpenWebText" \
        "(data/openwebtext/data.txt, one document a line) with: python -m tools.process_data_pretrain --data-dir" \
        "${BASE_PATH}/data/openwebtext/ --processed-data-dir ${LM_DATA_DIR} --model-path <a ${FAMILY} checkpoint>" \
        "--max-length 512 --dev-num 10000 (scripts/gpt2/tools/process_data_pretrain.sh for GPT-2)" >&2
    exit 1
}

finetune() {
    local args=() data_dir=${DATA_DIR} lora=""
    if [[ "${PEFT}" == lora ]]; then lora=-lora; fi
    SAVE_PATH=${SAVE_PATH:-"${BASE_PATH}/results/${FAMILY}/train/${METHOD}/${CKPT_NAME}${lora}"}
    resolve_student
    resolve_teacher
    args=(--model-path "${CKPT}" --ckpt-name "${CKPT_NAME}${CKPT_TAG}")
    if [[ "${METHOD}" == seqkd ]]; then
        generate_seqkd_data
        data_dir=${SEQKD_DATA_DIR}
        TYPE=${SEQKD_TYPE}
    fi
    case "${TYPE}" in
        sft|init|seqkd) ;;
        *) if [[ -n "${TEACHER_CACHE}" ]]; then
               if [[ ! -f "${TEACHER_CACHE}/meta.json" ]]; then cache_teacher; fi
               args+=(--teacher-cache "${TEACHER_CACHE}" --teacher-ckpt-name "${TEACHER_CKPT_NAME}-sft")
           else
               args+=(--teacher-model-path "${TEACHER_CKPT}" --teacher-ckpt-name "${TEACHER_CKPT_NAME}-sft")
               if [[ "${PEFT}" == lora ]]; then args+=(--teacher-peft-path "${TEACHER_PEFT_PATH}"); fi
               if [[ "${TEACHER_FP16}" == 1 ]]; then args+=(--teacher-model-fp16); fi
           fi ;;
    esac
    case "${TYPE}" in
        kd|imitkd) args+=(--kd-ratio "${KD_RATIO}") ;;
        ab) args+=(--kd-ratio "${KD_RATIO}" --ab_alpha "${AB_ALPHA}" --ab_beta "${AB_BETA}") ;;
        gkd) args+=(--kd-ratio "${KD_RATIO}" --mixed-alpha "${MIXED_ALPHA}" --gkd-beta "${GKD_BETA}") ;;
        minillm) args+=(--kd-ratio "${KD_RATIO}") ;;
        distillm)
            args+=(--kd-ratio "${KD_RATIO}" --skew-alpha "${SKEW_ALPHA}" --init-threshold "${INIT_THRESHOLD}"
                   --loss-eps "${LOSS_EPS}" --capacity "${CAPACITY}" --replay-ratio "${REPLAY_RATIO}") ;;
    esac
    if [[ "${GRADIENT_CHECKPOINTING}" == 1 ]]; then args+=(--gradient-checkpointing); fi
    if [[ " ${LM_METHODS} " == *" ${METHOD} "* ]]; then lm_data_check; args+=(--lm-data-dir "${LM_DATA_DIR}"); fi
    if [[ "${PEFT}" == lora ]]; then
        args+=(--peft lora --peft-lora-r "${LORA_R}" --peft-lora-alpha "${LORA_ALPHA}" --peft-lora-dropout "${LORA_DROPOUT}")
    fi
    if [[ "${METHOD}" == minillm ]]; then
        minillm_args
    else
        args+=(--warmup-iters 0 --lr-decay-style cosine --weight-decay 1e-2 --clip-grad 1.0 --save-interval -1)
        if [[ "${METHOD}" == pocl ]]; then pocl_args; else args+=(--epochs "${EPOCHS}"); fi
    fi
    case "${PRECISION}" in
        fp16) args+=(--fp16) ;;
        bf16) ;;
        *) echo "$(basename "$0"): PRECISION=${PRECISION}: use fp16 (the references') or bf16" >&2; exit 2 ;;
    esac
    local processes=$((GPU_NUM * NNODES)) accumulation
    GLOBAL_BATCH=${GLOBAL_BATCH:-$((REFERENCE_PROCESSES * BATCH_SIZE * GRAD_ACC))}
    if (( GLOBAL_BATCH % (processes * BATCH_SIZE) )); then
        echo "$(basename "$0"): global batch ${GLOBAL_BATCH} is not a multiple of ${processes} process(es) x BATCH_SIZE ${BATCH_SIZE};" \
            "set BATCH_SIZE (per process) so that it is" >&2
        exit 2
    fi
    accumulation=$((GLOBAL_BATCH / (processes * BATCH_SIZE)))
    echo "$(basename "$0"): global batch ${GLOBAL_BATCH} = ${processes} process(es) x batch ${BATCH_SIZE} x accumulation ${accumulation}," \
        "precision ${PRECISION}" >&2
    launch_module distillation_llm.finetune --type "${TYPE}" "${args[@]}" --model-type "${MODEL_TYPE}" \
        --data-dir "${data_dir}" --lr "${LR}" --batch-size "${BATCH_SIZE}" --gradient-accumulation-steps "${accumulation}" \
        --eval-batch-size "${EVAL_BATCH_SIZE}" --max-length "${MAX_LENGTH}" --max-prompt-length "${MAX_PROMPT_LENGTH}" \
        --dev-num "${DEV_NUM}" --lr-min "${LR_MIN}" --do-train --do-valid --eval-gen --eval-interval "${EVAL_INTERVAL}" --log-interval "${LOG_INTERVAL}" --save "${SAVE_PATH}" --seed "${SEED}" --deepspeed_config "${DS_CONFIG}"
}

# Cache the teacher's top CACHE_TOP_K on DATA_DIR into TEACHER_CACHE, at every KD temperature of the run (POCL:
# each stage's), in the teacher's precision of the online runs.
cache_teacher() {
    local temperatures=1 extra=()
    if [[ "${METHOD}" == pocl ]]; then
        temperatures=$(LC_ALL=C awk -v s="${KD_TEMPERATURE_START}" -v e="${KD_TEMPERATURE_END}" -v n="${NUM_STAGES}" \
            'BEGIN { for (i = 0; i < n; i++) printf "%s%.7g", (i ? "," : ""), (n == 1 ? s : s + (e - s) * i / (n - 1)) }')
    fi
    if [[ "${PEFT}" == lora ]]; then extra+=(--teacher-peft-path "${TEACHER_PEFT_PATH}"); fi
    if [[ "${TEACHER_FP16}" == 1 ]]; then extra+=(--teacher-dtype float16); fi
    launch_module tools.cache_teacher_logits --teacher-model-path "${TEACHER_CKPT}" "${extra[@]}" --data-dir "${DATA_DIR}" \
        --out "${TEACHER_CACHE}" --top-k "${CACHE_TOP_K}" --temperatures "${temperatures}" --max-length "${MAX_LENGTH}" \
        --batch-size "${EVAL_BATCH_SIZE}"
}

# MiniLLM (DistiLLM's train_minillm.py launchers): 5000 steps of policy gradient at a constant lr 5e-6 after 100
# warm-up steps, rounds of NUM_ROLLOUTS teacher-mixed samples, 4 PPO epochs a round; its PPO trainer's AdamW
# (beta2 0.95, weight decay 1e-6 on every parameter); dev ROUGE-L every 100 steps.
minillm_args() {
    args+=(--epochs 10 --total-iters "${TOTAL_ITERS}" --warmup-iters 100 --lr-decay-style constant --weight-decay 1e-6
           --weight-decay-exempt none --adam-beta2 0.95 --clip-grad 1.0 --save-interval 500 --seed-ppo 42 --seed-lm 7
           --ppo-epochs 4 --num-rollouts "${NUM_ROLLOUTS}" --rollout-chunk-size "${ROLLOUT_CHUNK_SIZE}" --length-norm --single-step-reg
           --teacher-mixed-alpha 0.2 --reward-scaling 0.5 --cliprange-reward 100)
}

# POCL: rank the training data with the student (reused when it exists), then the curriculum flags.
pocl_args() {
    RANKING="${BASE_PATH}/results/${FAMILY}/pocl/ranking/${CKPT_NAME}/ranking.jsonl"
    case "${TYPE}" in
        ab) args+=(--ab_alpha "${AB_ALPHA}" --ab_beta "${AB_BETA}") ;;
        sfkl|srkl|tsfkl|tsrkl) args+=(--skew-alpha "${SKEW_ALPHA}") ;;
        jsd|tjsd) args+=(--jsd-lam "${JSD_LAM}") ;;
        fkl|rkl|tvd|tfkl|trkl|ttvd) ;;
        *) echo "$(basename "$0"): --type ${TYPE} is not a POCL divergence (POCL's tfkl, tjsd, tsrkl (x T^2), trkl, ttvd, tsfkl;" \
               "or fkl, rkl, jsd, tvd, sfkl, srkl, ab)" >&2; exit 2 ;;
    esac
    run_module distillation_llm.rank_difficulty rank --model-path "${CKPT}" --data-dir "${DATA_DIR}" --ranking "${RANKING}" \
        --rrf-k "${RRF_K}" --max-prompt-length "${MAX_PROMPT_LENGTH}" --max-length "${MAX_LENGTH}" \
        --batch-size "${EVAL_BATCH_SIZE}" --seed "${SEED}" --do-sample --temperature "${RANK_TEMPERATURE}" --top-k 0 --top-p 1.0 --max-new-tokens 256 --no-repeat-ngram-size 6
    args+=(--curriculum pocl --ranking "${RANKING}" --num-stages "${NUM_STAGES}" --stage-epochs "${STAGE_EPOCHS}"
           --stage-dev-num "${STAGE_DEV_NUM}" --stage-start "${STAGE_START}"
           --kd-temperature-start "${KD_TEMPERATURE_START}" --kd-temperature-end "${KD_TEMPERATURE_END}"
           --kd-ratio-start "${KD_RATIO_START}" --kd-ratio-end "${KD_RATIO_END}")
}
