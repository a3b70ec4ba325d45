#!/usr/bin/env bash
# Sets everything up (scripts/bootstrap.sh) and runs the test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# Warnings in the C core are errors here.
export NNUNET_EXPORT_WERROR=1
bash scripts/bootstrap.sh
VENV=${NNUNET_EXPORT_VENV:-.venv}
exec "$VENV/bin/python" -m pytest tests "$@"
