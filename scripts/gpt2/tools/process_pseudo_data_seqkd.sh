#!/usr/bin/env bash
# MiniLLM/DistiLLM had a step here that tokenised the teacher's generated text. There is nothing to
# convert in this project: tools.generate_data_seqkd already writes a processed dataset in the format of
# tools.process_data_dolly. This script only remakes that dataset with another decoding setting (greedy
# below, instead of the launchers' sampling), replacing it in place (--overwrite). The seqkd launchers
# check how the dataset was made: give their generation step the same flags, or they stop with
# "processed differently" rather than train on it.
# Usage: bash scripts/gpt2/tools/process_pseudo_data_seqkd.sh [BASE_PATH]   (DRY_RUN=1 prints the command)
set -euo pipefail
METHOD=seqkd
source "$(dirname "${BASH_SOURCE[0]}")/../defaults.sh"

GEN_SAMPLING=--no-do-sample
generate_seqkd_data --overwrite
