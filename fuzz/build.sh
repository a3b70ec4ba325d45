#!/usr/bin/env bash
# Builds the fuzzing variant of nnunet_export._core into build/fuzz/ (clang, libFuzzer coverage,
# ASan + UBSan: setup.py's NNUNET_EXPORT_FUZZ=1) and a shared libFuzzer for LD_PRELOAD, so the
# extension's coverage counters and atheris share one libFuzzer. The normal in-place build is
# left alone.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${NNUNET_EXPORT_PYTHON:-${NNUNET_EXPORT_VENV:-.venv}/bin/python}
RT_DIR=$(dirname "$(clang -print-file-name=libclang_rt.asan-x86_64.so)")

mkdir -p build/fuzz
if [ ! -f build/fuzz/libfuzzer_no_main.so ]; then
    clang++ -shared -o build/fuzz/libfuzzer_no_main.so \
        -Wl,--whole-archive "$RT_DIR/libclang_rt.fuzzer_no_main-x86_64.a" -Wl,--no-whole-archive -lpthread
fi
CC=clang LDSHARED="clang -shared" NNUNET_EXPORT_FUZZ=1 NNUNET_EXPORT_WERROR=1 \
    "$PY" setup.py -q build_ext --build-lib build/fuzz --build-temp build/fuzz-tmp
