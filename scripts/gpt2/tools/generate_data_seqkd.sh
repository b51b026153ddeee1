#!/usr/bin/env bash
# SeqKD data for the GPT-2 students: the SFT'd GPT-2 xlarge answers every Dolly training prompt and the
# answers are saved as a processed dataset (train = the teacher's answers, valid copied) for --type seqkd.
# The seqkd launchers run this same step (the tool does nothing when the dataset already exists); run it
# alone to make the data once before several runs or nodes. Needs sft/sft_xlarge.sh to have run.
# Usage: bash scripts/gpt2/tools/generate_data_seqkd.sh [BASE_PATH]   (DRY_RUN=1 prints the command)
set -euo pipefail
METHOD=seqkd
source "$(dirname "${BASH_SOURCE[0]}")/../defaults.sh"

generate_seqkd_data
