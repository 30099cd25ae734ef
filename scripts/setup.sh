#!/usr/bin/env bash
# scripts/setup.sh - install mpvgbench and its test tools into ./.venv (the README's install).
#
#   bash scripts/setup.sh            create .venv if missing, install torch + mpvgbench[test]
#   bash scripts/setup.sh --fresh    delete .venv first
#
# Env: PYTHON (default python3), VENV (default .venv), TORCH_INDEX_URL (e.g.
# https://download.pytorch.org/whl/cpu for CPU-only wheels; default: PyPI).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH="torch==2.14.1 torchvision==0.29.1"

if [ "${1:-}" = "--fresh" ]; then rm -rf "$VENV"; fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV with $($PYTHON --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    echo "[setup] installing $TORCH from $TORCH_INDEX_URL"
else
    # Say it before the download starts: the default is the build that installs everywhere.
    echo "[setup] installing $TORCH from PyPI: the CUDA build (about 6 GB with its CUDA libraries;"
    echo "[setup] it runs on CPU-only machines too). For the CPU-only build (about 1 GB), on a machine"
    echo "[setup] that reaches the PyTorch index: TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/setup.sh"
fi
# shellcheck disable=SC2086
"${PIP[@]}" install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} $TORCH
"${PIP[@]}" install -e '.[test]'
echo "[setup] done: $("$VENV/bin/python" -c 'import torch, mpvgbench; print("torch", torch.__version__, "mpvgbench", mpvgbench.__version__)')"
