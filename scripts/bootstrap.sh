#!/usr/bin/env bash
# Sets up everything nnunet_export needs on a fresh Debian/Ubuntu machine: system packages,
# a virtual environment in .venv, the CPU build of torch 2.13.0 (installed first and pinned, so
# nothing later pulls another torch), and the package itself with its test extra.
# Idempotent: a second run only checks. Source it or run it; it leaves .venv ready.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=${NNUNET_EXPORT_VENV:-.venv}
TORCH_PIN=${NNUNET_EXPORT_TORCH:-torch==2.13.0}

need_apt=()
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
pkg-config --exists libcjson 2>/dev/null || need_apt+=(libcjson-dev)
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
pkg-config --exists libdeflate 2>/dev/null || need_apt+=(libdeflate-dev)
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
python3 -c "import venv, ensurepip" >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "bootstrap: installing system packages: ${need_apt[*]}"
    sudo_cmd=""
    [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check -q)

# torch first, pinned: the constraint keeps every later install on the same build.
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "$TORCH_PIN" >"$constraints"
"${PIP[@]}" install "$TORCH_PIN"
"${PIP[@]}" install -c "$constraints" "numpy>=2" "setuptools>=77" wheel
# No build isolation: the build needs numpy headers only, and an isolated build environment
# must never resolve torch on its own.
"${PIP[@]}" install -c "$constraints" --no-build-isolation -e ".[test]"
"$PY" -c "import torch, nnunet_export, nnunet_export._core; print('bootstrap: nnunet_export', nnunet_export.__version__, 'with torch', torch.__version__)"
