#!/usr/bin/env bash
# The test command: install (if needed), then run every test. Extra arguments go to pytest.
# Tests that need a GPU / TensorRT skip with the reason printed (-rs).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/install.sh
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pytest parity_tests -rs "$@"
