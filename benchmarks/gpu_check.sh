#!/usr/bin/env bash
# Everything this project checks on a GPU, in one run: the fused loss at the three reference shapes,
# whole training steps, the quick demo and the test suite, with logs and JSON in one folder, so
# that anyone with a GPU reproduces the GPU numbers of docs/performance.md (pending there).
# Usage (from the repository root, on the GPU machine): bash benchmarks/gpu_check.sh [OUT_DIR]
#   A machine without a registry: first run ../shared/gpu/fetch_wheels.sh where one is reachable
#   and copy .whl/ beside the project; this script installs those wheels into a private folder.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${1:-gpu_check_$(date +%Y%m%d_%H%M%S)}
PYTHON=${PYTHON:-python3}
mkdir -p "${OUT}"

if [[ -d .whl ]] && ! "${PYTHON}" -c "import deepspeed" >/dev/null 2>&1; then
    SITE=$(mktemp -d)
    "${PYTHON}" -m pip install -q --no-index --no-deps --no-compile --target "${SITE}" .whl/*.whl
    export PYTHONPATH="${SITE}:${PWD}${PYTHONPATH:+:${PYTHONPATH}}"
fi
export HF_HUB_OFFLINE=1 PYTHONPATH="${PWD}${PYTHONPATH:+:${PYTHONPATH}}"

"${PYTHON}" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" | tee "${OUT}/device.txt"
step() {  # step NAME COMMAND...: run, log, record the exit status and the time; never stop the others
    local name=$1; shift
    local start=${SECONDS} status=0
    "$@" > "${OUT}/${name}.log" 2>&1 || status=$?
    echo "{\"step\": \"${name}\", \"status\": ${status}, \"seconds\": $((SECONDS - start))}" >> "${OUT}/steps.jsonl"
    echo "${name}: exit ${status} in $((SECONDS - start)) s (log ${OUT}/${name}.log)"
}
step fused_loss "${PYTHON}" benchmarks/bench_fused_loss.py --device cuda --json "${OUT}/fused_loss.json"
step train_step_large "${PYTHON}" benchmarks/bench_train_step.py --preset cuda-base-large --device cuda
step train_step_xl "${PYTHON}" benchmarks/bench_train_step.py --preset cuda-base-xl --device cuda --methods kd,ab
step startup "${PYTHON}" benchmarks/bench_startup.py --runs 3
step demo_quick env PYTHON="${PYTHON}" bash scripts/demo.sh --quick --out "${OUT}/demo"
step tests "${PYTHON}" -m pytest -q -p no:cacheprovider
cat "${OUT}/steps.jsonl"
