#!/usr/bin/env bash
# Sets everything up (scripts/bootstrap.sh), then exports the embedded demo model
# (examples/demo_model), verifies the exported file and segments the shipped sample with it.
# Writes out/demo_model.pt, out/demo_overlay.png and out/demo_segmentation.png.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
VENV=${NNUNET_EXPORT_VENV:-.venv}
exec "$VENV/bin/python" examples/demo.py "$@"
