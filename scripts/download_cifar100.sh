#!/usr/bin/env bash
# Fetch CIFAR-100 (python version, 161 MB) from its home page, https://www.cs.toronto.edu/~kriz/cifar.html,
# into DATA_FOLDER as cifar-100-python.tar.gz, check its MD5 and unpack cifar-100-python/{train,test,meta}.
# standard_classification reads either the archive or the unpacked folder (--data-folder DATA_FOLDER).
# Usage: bash scripts/download_cifar100.sh [DATA_FOLDER]     (default data/cifar100)
# Offline, or with DRY_RUN=1, it only prints what to fetch and where to put it; nothing is overwritten.
set -euo pipefail

DATA_FOLDER=${1:-data/cifar100}
URL=https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz
MD5=eb9058c3a382ffc7106e4002c42a8d85
ARCHIVE="${DATA_FOLDER}/cifar-100-python.tar.gz"

instructions() {
    echo "Download ${URL} (MD5 ${MD5}) on a machine with internet access and copy it to ${ARCHIVE}" >&2
    echo "(or unpack it there so that ${DATA_FOLDER}/cifar-100-python/{train,test,meta} exist)." >&2
}

if [[ -d "${DATA_FOLDER}/cifar-100-python" || -f "${ARCHIVE}" ]]; then
    echo "CIFAR-100 is already in ${DATA_FOLDER}; nothing to do."
    exit 0
fi
if [[ "${DRY_RUN:-0}" == 1 ]] || ! command -v curl > /dev/null; then
    instructions
    exit 0
fi
mkdir -p "${DATA_FOLDER}"
if ! curl --fail --location --connect-timeout 10 --output "${ARCHIVE}.part" "${URL}"; then
    rm -f "${ARCHIVE}.part"
    echo "Could not reach ${URL} (offline?)." >&2
    instructions
    exit 1
fi
if [[ "$(md5sum "${ARCHIVE}.part" | cut -d' ' -f1)" != "${MD5}" ]]; then
    rm -f "${ARCHIVE}.part"
    echo "MD5 mismatch for ${URL}; the partial download was removed." >&2
    exit 1
fi
mv "${ARCHIVE}.part" "${ARCHIVE}"
tar -xzf "${ARCHIVE}" -C "${DATA_FOLDER}"
echo "CIFAR-100 is in ${DATA_FOLDER}/cifar-100-python."
