#!/usr/bin/env bash
# Install the project into .venv (created if missing) with everything the tests and the demo need.
# Idempotent: a second run only checks. Uses pip (torch==2.14.1 comes from PyPI, or from the
# machine's local wheel store where there is one).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "install.sh: creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    echo "install.sh: installing the project and its dependencies (torch is several GB; minutes)"
    python -m pip install --quiet --upgrade pip
    python -m pip install --quiet -e ".[model,serve,dev]"
    # Type stubs for the TensorRT builder's mypy check. --no-deps: their metadata asks for the
    # tensorrt wheel itself, which downloads from NVIDIA's index at install time.
    python -m pip install --quiet --no-deps "tensorrt-stubs==10.13.0.35.1"
    touch "$stamp"
fi
python -c "import escnet, escnet_export, escnet_client, onnxruntime, tritonclient.http" \
    && echo "install.sh: .venv ready ($(python -c 'import torch; print("torch", torch.__version__)'))"
