#!/usr/bin/env bash
# Installs the framework. Idempotent: a second run only checks and returns in seconds.
# Dependencies come at the versions in constraints.txt (those the README's demo table was
# measured with); torch is chosen below.
#   bash install.sh                            # creates .venv at the repository root
#   ABKD_USE_CURRENT_ENV=1 bash install.sh     # installs into the active environment (conda)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

CPU_TORCH="torch==2.13.0"

if [[ "${ABKD_USE_CURRENT_ENV:-0}" == "1" ]]; then
    PY="$(command -v python)"
else
    [[ -x .venv/bin/python ]] || python3 -m venv .venv
    PY=".venv/bin/python"
fi

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    TORCH_SPEC="torch"   # default CUDA build
else
    TORCH_SPEC="$CPU_TORCH"
fi

# The stamp records what was installed; when nothing changed we only check the imports.
STAMP_DIR="$("$PY" -c 'import sys; print(sys.prefix)')"
STAMP="$STAMP_DIR/.abkd-install-stamp"
WANT="$(cat pyproject.toml install.sh constraints.txt | sha256sum | cut -c1-16) $TORCH_SPEC"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] \
    && "$PY" -c "import torch, transformers, deepspeed, abkd" >/dev/null 2>&1; then
    echo "install.sh: up to date ($("$PY" -c 'import torch; print("torch", torch.__version__)'))"
    exit 0
fi

"$PY" -m pip install --quiet --upgrade pip setuptools wheel
if ! "$PY" -c "import torch" >/dev/null 2>&1 || [[ "$TORCH_SPEC" == "$CPU_TORCH" && "$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')" != "2.13.0" ]]; then
    echo "install.sh: installing $TORCH_SPEC"
    "$PY" -m pip install --quiet "$TORCH_SPEC"
fi

# Pin whatever torch is now installed so no dependency can swap it for another build.
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
"$PY" -c 'import torch; print("torch==" + torch.__version__)' > "$CONSTRAINTS"
# constraints.txt's versions need Python >= 3.11 (transformers, numpy); an older Python gets
# pyproject.toml's ranges, and the demo's numbers may then differ from the README's.
PINS=(-c constraints.txt)
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "install.sh: Python $("$PY" -c 'import platform; print(platform.python_version())') is older than 3.11: constraints.txt not applied"
    PINS=()
fi

echo "install.sh: installing the framework and its dependencies"
"$PY" -m pip install --quiet -c "$CONSTRAINTS" "${PINS[@]}" -e '.[dev]'

"$PY" -c "import torch, transformers, deepspeed, abkd; print('install.sh: ok, torch', torch.__version__, '| transformers', transformers.__version__, '| deepspeed', deepspeed.__version__)"
echo "$WANT" > "$STAMP"
