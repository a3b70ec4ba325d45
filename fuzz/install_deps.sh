#!/usr/bin/env bash
# Installs what the fuzz targets need on a fresh Debian/Ubuntu machine (idempotent): clang with its
# sanitizer and libFuzzer runtimes, and atheris in the project's virtual environment, pinned
# beside the project's torch so pip never touches torch (SKIP_ATHERIS=1: only clang, for
# scripts/sanitize.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${NNUNET_EXPORT_PYTHON:-${NNUNET_EXPORT_VENV:-.venv}/bin/python}

need_apt=()
command -v clang >/dev/null 2>&1 || need_apt+=(clang)
if ! command -v clang >/dev/null 2>&1 || [ ! -f "$(clang -print-file-name=libclang_rt.asan-x86_64.so)" ] ||
   [ ! -f "$(dirname "$(clang -print-file-name=libclang_rt.asan-x86_64.so)")/libclang_rt.fuzzer_no_main-x86_64.a" ]; then
    need_apt+=(libclang-rt-14-dev)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "fuzz: installing system packages: ${need_apt[*]}"
    sudo_cmd=""
    [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if [ -z "${SKIP_ATHERIS:-}" ] && ! "$PY" -c "import atheris" >/dev/null 2>&1; then
    echo "fuzz: installing atheris"
    constraints="$(mktemp)"
    trap 'rm -f "$constraints"' EXIT
    "$PY" -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" >"$constraints"
    "$PY" -m pip --disable-pip-version-check -q install -c "$constraints" "atheris==3.0.0"
fi
