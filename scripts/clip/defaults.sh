#!/usr/bin/env bash
# Defaults of the PromptKD launchers (sourced by scripts/clip/*.sh): arguments [DATASET] [DATA_ROOT] [GPU_NUM];
# Hugging Face CLIP ViT-L/14 teacher, ViT-B/16 student, seeds 1-3. The teacher's prompts are PromptKD's published
# PromptSRC teacher, where PromptKD reads it: teacher_model/<Dassl dataset name>/VLPromptLearner/model-best.pth.tar
# (base_to_new_classification/README.md); TEACHER_CKPT=results/promptkd/teacher/<dataset>/teacher_prompts.pt runs
# ours (train_teacher). PRECISION=bf16 opts into bf16 autocast (default fp32, ABKD's PREC).
# Settings of ABKD's PromptKD config and scripts/promptkd/*.sh: T = 1, 20 epochs, batch 8, lr 1e-4; KD_WEIGHT of --distill kd 1000 (200 for fgvc_aircraft, oxford_flowers, dtd).
# FINAL_MODEL=best_val: the reference's pick of the best base-class *test* accuracy (default: last epoch).
# `train_seeds NAME ARGS...` trains once per seed into SAVE_ROOT/NAME/seed<seed> (resumable), and
# `summarize` prints the base/new/HM table averaged over the seeds. DRY_RUN=1 prints the commands.
source "$(dirname "${BASH_SOURCE[0]}")/../launch.sh"

DATASET=${1:-caltech101}
DATA_ROOT=${2:-${REPO_ROOT}/data/coop}
GPU_NUM=${3:-1}
MASTER_PORT=${MASTER_PORT:-2013}
NNODES=1
NODE_RANK=0
MASTER_ADDR=localhost
HOSTFILE=""
TEACHER_MODEL="${REPO_ROOT}/checkpoints/clip-vit-large-patch14"
STUDENT_MODEL="${REPO_ROOT}/checkpoints/clip-vit-base-patch16"
declare -A DASSL_NAMES=([caltech101]=Caltech101 [oxford_pets]=OxfordPets [stanford_cars]=StanfordCars [oxford_flowers]=OxfordFlowers
    [food101]=Food101 [fgvc_aircraft]=FGVCAircraft [sun397]=SUN397 [dtd]=DescribableTextures [eurosat]=EuroSAT [ucf101]=UCF101 [imagenet]=ImageNet)
TEACHER_CKPT=${TEACHER_CKPT:-"${REPO_ROOT}/teacher_model/${DASSL_NAMES[${DATASET}]:-${DATASET}}/VLPromptLearner/model-best.pth.tar"}
[[ -e "${TEACHER_CKPT}" || "${DRY_RUN:-0}" == 1 ]] || {
    echo "$(basename "$0"): no teacher at ${TEACHER_CKPT}: put PromptKD's published PromptSRC teacher for ${DATASET} there, or set TEACHER_CKPT" >&2; exit 1; }
PRECISION=${PRECISION:-fp32}
TEMPERATURE=1.0
EPOCHS=20
BATCH_SIZE=8
LR=0.0001
SEEDS="1 2 3"
FINAL_MODEL=${FINAL_MODEL:-last}
SAVE_ROOT="${REPO_ROOT}/results/promptkd/${DATASET}"
case "${DATASET}" in
    fgvc_aircraft | oxford_flowers | dtd) KD_WEIGHT=200.0 ;;
    *) KD_WEIGHT=1000.0 ;;
esac

train_seeds() {
    local name=$1 seed
    shift
    for seed in ${SEEDS}; do
        launch_module base_to_new_classification.train --dataset "${DATASET}" --root "${DATA_ROOT}" \
            --teacher-model-path "${TEACHER_MODEL}" --student-model-path "${STUDENT_MODEL}" --teacher-ckpt "${TEACHER_CKPT}" \
            "$@" --temperature "${TEMPERATURE}" --epochs "${EPOCHS}" --batch-size "${BATCH_SIZE}" \
            --lr "${LR}" --precision "${PRECISION}" --final-model "${FINAL_MODEL}" --seed "${seed}" --save "${SAVE_ROOT}/${name}/seed${seed}" --resume \
            --deepspeed_config "${REPO_ROOT}/configs/deepspeed/ds_config.json"
    done
}

summarize() {
    run_module base_to_new_classification.summarize "${SAVE_ROOT}"
}
