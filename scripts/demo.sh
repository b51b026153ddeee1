#!/usr/bin/env bash
# The embedded end-to-end demo: teacher -> student distillation at toy scale, nothing downloaded.
#
#   bash scripts/demo.sh            # under 10 minutes on 2 CPU cores
#   bash scripts/demo.sh --all      # also GKD, DistiLLM and MiniLLM (student-generated outputs; a few minutes more)
#   bash scripts/demo.sh --quick    # a tiny version (a few minutes), for the tests
#   bash scripts/demo.sh --out DIR  # outputs somewhere other than results/demo
#
# The papers' pipeline at toy scale, each step one of the project's own commands:
#   1. generate an instruction-following dataset (5 task families of graded difficulty) and a plain-text corpus;
#   2. train a byte-level BPE tokenizer and tokenise both;
#   3. pre-train a teacher (GPT-2, 4 layers) and a student (GPT-2, 2 layers) as language models on the corpus:
#      they play the papers' pretrained GPT-2 checkpoints;
#   4. SFT the teacher, and the pretrained student as the SFT baseline;
#   5. distil the pretrained student with kd (forward KL) and ab (alpha-beta divergence), as ABKD;
#   6. POCL: the pretrained student ranks the data from easy to hard, then kd and ab with the curriculum;
#   7. with --all, an SFT-initialised student (--type init), from which GKD, DistiLLM and MiniLLM start, as DistiLLM;
#   8. evaluate every model with ROUGE-L and print the table (also CSV and a PNG chart).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${ROOT}/results/demo"
QUICK=0
ALL=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) QUICK=1; shift ;;
        --all) ALL=1; shift ;;
        --out) OUT="$(mkdir -p "$2" && cd "$2" && pwd)"; shift 2 ;;
        -h|--help) sed -n '2,18p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "scripts/demo.sh: unknown argument '$1' (valid: --quick, --all, --out DIR)" >&2; exit 2 ;;
    esac
done
PYTHON="${PYTHON:-${ROOT}/.venv/bin/python}"
[[ -x "${PYTHON}" ]] || PYTHON=python

# Sizes: the variables to edit.
if [[ "${QUICK}" == 1 ]]; then
    TRAIN_EXAMPLES=300; EVAL_EXAMPLES=8; PRETRAIN_DOCS=300; VOCAB=400; DEV_NUM=40
    PRETRAIN_EPOCHS=1; TEACHER_EPOCHS=2; STUDENT_EPOCHS=1; INIT_EPOCHS=1; STAGE_EPOCHS=1; BATCH=16; SEEDS=10; LOG_INTERVAL=5
    DISTILLM_EVAL_INTERVAL=4; MINILLM_ITERS=8; MINILLM_ROLLOUTS=32
else
    TRAIN_EXAMPLES=3200; EVAL_EXAMPLES=60; PRETRAIN_DOCS=3200; VOCAB=600; DEV_NUM=200
    PRETRAIN_EPOCHS=3; TEACHER_EPOCHS=8; STUDENT_EPOCHS=6; INIT_EPOCHS=3; STAGE_EPOCHS=2; BATCH=32; SEEDS=10,20,30; LOG_INTERVAL=50
    DISTILLM_EVAL_INTERVAL=25; MINILLM_ITERS=320; MINILLM_ROLLOUTS=256
fi
MINILLM_LR=3e-4
TEACHER_SIZE=(--hidden-size 128 --num-layers 4 --num-heads 4)
STUDENT_SIZE=(--hidden-size 64 --num-layers 2 --num-heads 4)
TASKS=copy,lookup,reverse,sort,add
LR=3e-3
KD_RATIO=1.0
AB_ALPHA=0.9
AB_BETA=0.2

cd "${ROOT}"
# Threads split a matmul's sums and so change the table (tools/demo_table.py): 2 unless OMP_NUM_THREADS says.
export TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
mkdir -p "${OUT}"
START=${SECONDS}
"${PYTHON}" -m tools.demo_table --machine > "${OUT}/machine.txt"

"${PYTHON}" -m tools.make_toy_data --out "${OUT}/data" --train "${TRAIN_EXAMPLES}" --eval "${EVAL_EXAMPLES}" --pretrain "${PRETRAIN_DOCS}"
"${PYTHON}" -m distillation_llm.toy tokenizer --data "${OUT}/data/raw.jsonl" --out "${OUT}/tokenizer" --vocab-size "${VOCAB}"
# The corpus is processed as prompt-less examples (data/pretrain/raw.jsonl): SFT on them is causal language modelling.
for data in "" pretrain; do
    "${PYTHON}" -m tools.process_data_dolly --data-dir "${OUT}/data/${data}" --processed-data-dir "${OUT}/processed${data:+-${data}}" \
        --model-path "${OUT}/tokenizer" --max-prompt-length 96 --max-length 128 --dev-num "${DEV_NUM}" --overwrite
done
"${PYTHON}" -m distillation_llm.toy model --tokenizer "${OUT}/tokenizer" --out "${OUT}/init/teacher" "${TEACHER_SIZE[@]}" --seed 1
"${PYTHON}" -m distillation_llm.toy model --tokenizer "${OUT}/tokenizer" --out "${OUT}/init/student" "${STUDENT_SIZE[@]}" --seed 2

finetune() {  # finetune NAME EPOCHS ARGS...: one training run into ${OUT}/runs/NAME (--data-dir in ARGS overrides)
    local name=$1 epochs=$2
    shift 2
    echo "== training ${name} =="; rm -rf "${OUT}/runs/${name}"  # fresh: finetune refuses a --save holding a run's checkpoints
    "${PYTHON}" -m distillation_llm.finetune --data-dir "${OUT}/processed" --save "${OUT}/runs/${name}" \
        --do-train --do-valid --epochs "${epochs}" --batch-size "${BATCH}" --eval-batch-size 64 --lr "${LR}" \
        --warmup-iters 20 --weight-decay 0.0 --max-length 128 --max-prompt-length 96 --log-interval "${LOG_INTERVAL}" --seed 10 "$@"
}
TEACHER=(--teacher-model-path "${OUT}/runs/teacher/best")
PRETRAINED_STUDENT="${OUT}/runs/student-pretrain/best"
finetune teacher-pretrain "${PRETRAIN_EPOCHS}" --type sft --data-dir "${OUT}/processed-pretrain" --model-path "${OUT}/init/teacher"
finetune student-pretrain "${PRETRAIN_EPOCHS}" --type sft --data-dir "${OUT}/processed-pretrain" --model-path "${OUT}/init/student"
finetune teacher "${TEACHER_EPOCHS}" --type sft --model-path "${OUT}/runs/teacher-pretrain/best"
finetune student-sft "${STUDENT_EPOCHS}" --type sft --model-path "${PRETRAINED_STUDENT}"
finetune student-kd "${STUDENT_EPOCHS}" --type kd --kd-ratio "${KD_RATIO}" --model-path "${PRETRAINED_STUDENT}" "${TEACHER[@]}"
finetune student-ab "${STUDENT_EPOCHS}" --type ab --ab_alpha "${AB_ALPHA}" --ab_beta "${AB_BETA}" --kd-ratio "${KD_RATIO}" \
    --model-path "${PRETRAINED_STUDENT}" "${TEACHER[@]}"

echo "== POCL: ranking the training data with the pretrained student =="
# POCL's ranking decodes near-greedily (temperature 0.01) and fuses ROUGE-L and loss ranks (k = 60).
"${PYTHON}" -m distillation_llm.rank_difficulty rank --model-path "${PRETRAINED_STUDENT}" --data-dir "${OUT}/processed" \
    --ranking "${OUT}/ranking/ranking.jsonl" --do-sample --temperature 0.01 --top-k 0 --top-p 1.0 --max-new-tokens 32 \
    --max-prompt-length 96 --max-length 128 --batch-size 64
POCL=(--curriculum pocl --ranking "${OUT}/ranking/ranking.jsonl" --num-stages 4 --stage-epochs "${STAGE_EPOCHS}")
finetune student-kd-pocl "${STUDENT_EPOCHS}" --type kd "${POCL[@]}" --model-path "${PRETRAINED_STUDENT}" "${TEACHER[@]}"
finetune student-ab-pocl "${STUDENT_EPOCHS}" --type ab --ab_alpha "${AB_ALPHA}" --ab_beta "${AB_BETA}" "${POCL[@]}" \
    --model-path "${PRETRAINED_STUDENT}" "${TEACHER[@]}"

MODELS=(teacher student-sft student-kd student-ab student-kd-pocl student-ab-pocl)
if [[ "${ALL}" == 1 ]]; then
    # DistiLLM's students start from a short SFT of the pretrained student (its init/ launchers: --type init).
    finetune student-init "${INIT_EPOCHS}" --type init --model-path "${PRETRAINED_STUDENT}"
    finetune student-gkd "${STUDENT_EPOCHS}" --type gkd --mixed-alpha 0.5 --gkd-beta 0.1 --kd-ratio 1.0 \
        --model-path "${OUT}/runs/student-init/best" "${TEACHER[@]}"
    # The adaptive threshold is checked every DISTILLM_EVAL_INTERVAL steps: about as many checks as
    # DistiLLM's once an epoch over 20 epochs.
    finetune student-distillm "${STUDENT_EPOCHS}" --type distillm --skew-alpha 0.1 --kd-ratio 1.0 \
        --init-threshold 0.0 --loss-eps 0.1 --eval-interval "${DISTILLM_EVAL_INTERVAL}" --capacity 1000 --replay-ratio decreasing \
        --model-path "${OUT}/runs/student-init/best" "${TEACHER[@]}"
    # MiniLLM: policy gradient on the student's own samples (teacher-mixed, rounds of MINILLM_ROLLOUTS, 4 PPO
    # epochs each) with the single-step regulariser, as DistiLLM's train_minillm.py; a tenth of the demo's lr,
    # as MiniLLM's 5e-6 is a hundredth of its KD runs' 5e-4; no LM term (the demo has no pre-training blocks).
    finetune student-minillm 1 --type minillm --total-iters "${MINILLM_ITERS}" --num-rollouts "${MINILLM_ROLLOUTS}" \
        --rollout-chunk-size 64 --ppo-epochs 4 --teacher-mixed-alpha 0.2 --reward-scaling 0.5 --cliprange-reward 100 \
        --single-step-reg --length-norm --lr-decay-style constant --adam-beta2 0.95 --weight-decay-exempt none \
        --eval-interval "${DISTILLM_EVAL_INTERVAL}" --lr "${MINILLM_LR}" --model-path "${OUT}/runs/student-init/best" "${TEACHER[@]}"
    MODELS+=(student-gkd student-distillm student-minillm)
fi

echo "== evaluating =="
MODEL_PATHS=$(printf "${OUT}/runs/%s/best," "${MODELS[@]}")
"${PYTHON}" -m distillation_llm.evaluate --model-path "${MODEL_PATHS%,}" \
    --data-dir "${OUT}/data/eval" --eval-sets "${TASKS}" --seeds "${SEEDS}" --do-sample --temperature 0.7 \
    --max-new-tokens 32 --eval-batch-size 64 --save "${OUT}/eval" --no-progress | tee "${OUT}/table.txt"
cat "${OUT}/machine.txt"
echo "demo finished in $((SECONDS - ${START})) s: table ${OUT}/table.txt, chart ${OUT}/eval/comparison.png"
