#!/usr/bin/env bash
# Sourced by the launchers under scripts/ (not run on its own). Defines REPO_ROOT, `grid` for the sweeps
# and `launch_module MODULE ARGS...`, which reads the launcher's GPU_NUM, NNODES, NODE_RANK,
# MASTER_ADDR, MASTER_PORT and HOSTFILE:
#   DRY_RUN=1      print `python -m MODULE ARGS...` (shell-quoted, one line) instead of running it
#   HOSTFILE set   start every node from here with the deepspeed launcher (ssh, one hostfile)
#   otherwise      torchrun; for several nodes run the launcher on each with its NODE_RANK

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# The command a launcher would run, shell-quoted on one line (DRY_RUN=1).
print_command() {
    printf 'python -m %q' "$1"
    shift
    printf ' %q' "$@"
    printf '\n'
}

launch_module() {
    local module=$1
    shift
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
        print_command "${module}" "$@"
        return 0
    fi
    if [[ -n "${HOSTFILE}" ]]; then
        deepspeed --hostfile "${HOSTFILE}" --num_nodes "${NNODES}" --num_gpus "${GPU_NUM}" \
            --master_addr "${MASTER_ADDR}" --master_port "${MASTER_PORT}" \
            --module "${module}" "$@"
    else
        torchrun --nnodes "${NNODES}" --node_rank "${NODE_RANK}" --nproc_per_node "${GPU_NUM}" \
            --master_addr "${MASTER_ADDR}" --master_port "${MASTER_PORT}" \
            -m "${module}" "$@"
    fi
}

# `run_module MODULE ARGS...`: one plain `python -m` process (single-device steps such as the POCL
# ranking), with the same DRY_RUN behaviour.
run_module() {
    local module=$1
    shift
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
        print_command "${module}" "$@"
        return 0
    fi
    python -m "${module}" "$@"
}

# `grid START END STEP`: START, START + STEP, ... <= END, one a line. Computed as START + i * STEP (not by
# repeated addition) and printed with %g, so `grid 0.1 0.3 0.1` gives 0.1 0.2 0.3; anything else is refused.
grid() {
    LC_ALL=C awk -v start="$1" -v end="$2" -v step="$3" -v script="${0##*/}" 'BEGIN {
        number = "^[-+]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][-+]?[0-9]+)?$"
        if (start !~ number || end !~ number || step !~ number || step + 0 <= 0 || start + 0 > end + 0) {
            printf "%s: bad grid START=%s END=%s STEP=%s (need numbers, START <= END, STEP > 0)\n", script, start, end, step > "/dev/stderr"
            exit 1
        }
        for (i = 0; start + i * step <= end + 1e-9 * step; i++) printf "%g\n", start + i * step
    }'
}
