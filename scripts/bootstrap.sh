#!/usr/bin/env bash
# Sets up everything nnunet_export needs on a fresh Debian/Ubuntu machine: system packages,
# a virtual environment in .venv, the CPU build of torch 2.13.0 (installed first and pinned, so
# nothing later pulls another torch), and the package itself with its test extra.
# Idempotent: a second run only checks. Source it or run it; it leaves .venv ready.
#
#   scripts/bootstrap.sh           editable install of this checkout, with its test extra (.venv)
#   scripts/bootstrap.sh WHEEL     that wheel, not editable, with every extra it declares
#                                  (scripts/test.sh does this in a second venv, $NNUNET_EXPORT_VENV)
set -euo pipefail
WHEEL=${1:+$(cd "$(dirname "$1")" && pwd)/$(basename "$1")}
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
"${PIP[@]}" install -c "$constraints" "numpy>=2" "setuptools>=77" wheel build
if [ -n "$WHEEL" ]; then
    # Every extra the wheel declares, under the same torch pin: an extra that wanted another torch
    # fails here. Then the package itself again, in case an earlier run installed the same version.
    extras=$("$PY" -c "import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as w:
    meta = next(n for n in w.namelist() if n.endswith('.dist-info/METADATA'))
    print(','.join(l.split(':', 1)[1].strip() for l in w.read(meta).decode().splitlines()
                   if l.startswith('Provides-Extra:')))" "$WHEEL")
    "${PIP[@]}" install -c "$constraints" "$WHEEL${extras:+[$extras]}"
    "${PIP[@]}" install --force-reinstall --no-deps "$WHEEL"
else
    # No build isolation: the build needs numpy headers only, and an isolated build environment
    # must never resolve torch on its own.
    "${PIP[@]}" install -c "$constraints" --no-build-isolation -e ".[test]"
fi
# -I: the checkout itself is not importable; this checks what was installed.
"$PY" -I -c "import torch, nnunet_export, nnunet_export._core; print('bootstrap: nnunet_export', nnunet_export.__version__, 'from', nnunet_export.__path__[0], 'with torch', torch.__version__)"
