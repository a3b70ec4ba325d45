#!/usr/bin/env bash
# Builds examples/cpp (nnunet_infer) into BUILD_DIR against the libtorch of a Python install.
#   bash examples/cpp/build.sh BUILD_DIR
# Python: $PYTHON, else the repository's ${NNUNET_EXPORT_VENV:-.venv}, else python3 on PATH.
# Warnings are errors when NNUNET_EXPORT_WERROR or CI is set (as scripts/test.sh does).
# Parallel jobs: $CMAKE_BUILD_PARALLEL_LEVEL (default 2). Re-running reuses BUILD_DIR.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: bash examples/cpp/build.sh BUILD_DIR" >&2
    exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
build_dir="$1"

venv="${NNUNET_EXPORT_VENV:-.venv}"
case "$venv" in /*) ;; *) venv="$repo/$venv" ;; esac
if [ -n "${PYTHON:-}" ]; then
    python="$PYTHON"
elif [ -x "$venv/bin/python" ]; then
    python="$venv/bin/python"
else
    python="$(command -v python3 || true)"
fi
if [ -z "$python" ]; then
    echo "build.sh: no Python found: set PYTHON to the interpreter that has torch installed" >&2
    exit 1
fi
for tool in cmake c++; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "build.sh: '$tool' is missing: install cmake and a C++ compiler (apt-get install cmake g++)" >&2
        exit 1
    fi
done
if ! torch_prefix="$("$python" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)' 2>/dev/null)"; then
    echo "build.sh: $python cannot import torch: set PYTHON to the interpreter that has torch installed" >&2
    exit 1
fi

werror=OFF
if [ -n "${NNUNET_EXPORT_WERROR:-}" ] || [ -n "${CI:-}" ]; then
    werror=ON
fi

cmake -S "$here" -B "$build_dir" \
    -DCMAKE_PREFIX_PATH="$torch_prefix" \
    -DCMAKE_BUILD_TYPE=Release \
    -DNNUNET_INFER_WERROR="$werror"
cmake --build "$build_dir" --parallel "${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
echo "build.sh: built $build_dir/nnunet_infer"
