#!/usr/bin/env bash
# Builds nnunet_export._core with ASan + UBSan (clang; every UBSan finding fatal) into build/asan/
# and runs the test files that drive the C core against it, with the ASan runtime preloaded into
# the (uninstrumented) interpreter. Any sanitizer report fails the run. The normal in-place build
# is left alone: the tests import the sanitized copy of the package from build/asan/.
#
#   scripts/sanitize.sh [pytest args...]   default: the C-facing test files below
#
# detect_leaks=0: at exit LSan reports the interpreter's and torch's intentionally never-freed
# allocations; leaks of the C core are measured per call by tests/test_leaks.py instead.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
export NNUNET_EXPORT_PYTHON=${NNUNET_EXPORT_PYTHON:-${NNUNET_EXPORT_VENV:-.venv}/bin/python}
PY=$(cd "$(dirname "$NNUNET_EXPORT_PYTHON")" && pwd)/$(basename "$NNUNET_EXPORT_PYTHON")
TESTS=(test_read_checkpoint.py test_read_checkpoint_copy.py test_checkpoint_corrupt.py test_checkpoint_hostile.py
       test_checkpoint_crc.py test_model_config_errors.py test_model_config_parity.py
       test_metadata_json.py test_thread_guard.py test_concurrency.py)
# Not test_leaks.py: ASan's quarantine holds freed memory back, so resident memory is not flat by
# design under ASan. Not test_mapped_file_changes.py: its seven child processes each import torch
# under ASan (about 4 of the 5 minutes of a run with it) to test what the kernel does to a
# mapping, not our memory accesses. Both run in the normal suite; name them to run them here.

SKIP_ATHERIS=1 bash fuzz/install_deps.sh
rm -rf build/asan/nnunet_export
CC=clang LDSHARED="clang -shared" NNUNET_EXPORT_SANITIZE=1 NNUNET_EXPORT_WERROR=1 \
    "$PY" setup.py -q build_ext --build-lib build/asan --build-temp build/asan-tmp
# The Python layer beside the sanitized extension; pytest runs from build/asan so it wins.
(cd nnunet_export && find . -name '*.py' -o -name '*.pyi' -o -name py.typed) | while read -r f; do
    mkdir -p "build/asan/nnunet_export/$(dirname "$f")"
    cp "nnunet_export/$f" "build/asan/nnunet_export/$f"
done

# The tests must really import the sanitized extension (it needs the preloaded runtime).
core=$(cd build/asan && LD_PRELOAD="$(clang -print-file-name=libclang_rt.asan-x86_64.so)" ASAN_OPTIONS=detect_leaks=0 \
    "$PY" -c "import nnunet_export._core as c; print(c.__file__)")
case $core in
    "$REPO/build/asan/"*) echo "sanitize: testing $core" ;;
    *) echo "sanitize: tests would import $core, not the sanitized build" >&2; exit 1 ;;
esac

args=("$@")
if [ ${#args[@]} -eq 0 ]; then
    for t in "${TESTS[@]}"; do [ -f "tests/$t" ] && args+=("$REPO/tests/$t"); done
fi
log=build/asan/pytest.log
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1:symbolize=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
rc=0
(cd build/asan && LD_PRELOAD="$(clang -print-file-name=libclang_rt.asan-x86_64.so)" \
    "$PY" -m pytest -q -p no:cacheprovider -o addopts="" --durations=10 --rootdir="$REPO" "${args[@]}") 2>&1 | tee "$log" || rc=$?
if grep -qE "ERROR: (Address|Leak|Undefined)Sanitizer|runtime error:|==ERROR" "$log"; then
    echo "sanitize: sanitizer report (see $log)" >&2
    exit 1
fi
exit "$rc"
