#!/usr/bin/env bash
# The test command: install (if needed), then run every test. Extra arguments go to pytest.
# Tests that need a GPU / TensorRT skip with the reason printed (-rs).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/install.sh
bash scripts/install_deploy_tools.sh  # kubectl, kubernetes-validate, hadolint, checkov for parity_tests/deploy
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pytest parity_tests -rs "$@"
