#!/usr/bin/env bash
# Runs one fuzz target for a given time, or the CI smoke run of all of them.
#
#   fuzz/run.sh TARGET SECONDS   TARGET: zip | pickle | plans; extra arguments go to libFuzzer
#   fuzz/run.sh smoke [SECONDS]  each target for SECONDS (default 60) from its seeds only
#
# Corpora grow in fuzz/work/corpus/TARGET, crashing inputs land in fuzz/work/artifacts/TARGET/,
# logs in fuzz/work/logs/. Exits non-zero on any crash, sanitizer report (ASan, UBSan) or
# exception other than nnunet_export.ExportError. Environment: NNUNET_EXPORT_PYTHON (default
# .venv/bin/python); NNUNET_EXPORT_FIXTURE_CACHE is passed on to make_seeds.py.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export NNUNET_EXPORT_PYTHON=${NNUNET_EXPORT_PYTHON:-${NNUNET_EXPORT_VENV:-.venv}/bin/python}
PY=$NNUNET_EXPORT_PYTHON
TARGETS=(zip pickle plans)

usage() { echo "usage: fuzz/run.sh {zip|pickle|plans} SECONDS [libFuzzer flags...] | fuzz/run.sh smoke [SECONDS]" >&2; exit 2; }
[ $# -ge 1 ] || usage

bash fuzz/install_deps.sh
bash fuzz/build.sh
[ -f fuzz/work/seeds/pickle_template.pth ] || "$PY" fuzz/make_seeds.py

# libFuzzer before the ASan runtime: the extension's __sanitizer_cov_* references must bind to
# libFuzzer, not to ASan's weak no-op defaults (atheris then warns "Coverage symbols are being
# provided by a library other than libFuzzer" and coverage stays near zero). ASan's check that it
# comes first is switched off (verify_asan_link_order=0); atheris finds libFuzzer preloaded.
PRELOAD="$PWD/build/fuzz/libfuzzer_no_main.so $(clang -print-file-name=libclang_rt.asan-x86_64.so)"
# detect_leaks=0: LSan at exit only sees the interpreter's never-freed objects; leaks of the C
# core are checked per call by tests/test_leaks.py instead.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:verify_asan_link_order=0:allocator_may_return_null=0:handle_abort=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

# run_target TARGET SECONDS CORPUS_DIR [extra libFuzzer flags]
run_target() {
    local target=$1 seconds=$2 corpus=$3
    shift 3
    local log
    log="fuzz/work/logs/$target-$(date -u +%Y%m%dT%H%M%SZ).log"
    mkdir -p "$corpus" "fuzz/work/artifacts/$target" fuzz/work/logs
    echo "fuzz: $target for ${seconds}s, corpus $corpus, log $log"
    local rc=0
    LD_PRELOAD="$PRELOAD" "$PY" "fuzz/fuzz_$target.py" "$corpus" "fuzz/work/seeds/$target" \
        -dict="fuzz/dict/$target.dict" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=3072 \
        -artifact_prefix="fuzz/work/artifacts/$target/" -print_final_stats=1 "$@" >"$log" 2>&1 || rc=$?
    grep -E "^#[0-9]+ +(INITED|DONE)|stat::|cov:.*ft:.*corp:" "$log" | tail -n 4 || true
    if [ $rc -ne 0 ] || grep -qE "ERROR: (Address|Leak|Undefined)Sanitizer|runtime error:|==ERROR|Uncaught Python exception|deadly signal" "$log"; then
        echo "fuzz: $target FAILED (exit $rc); the end of $log:" >&2
        tail -n 60 "$log" >&2
        return 1
    fi
}

case $1 in
    smoke)
        seconds=${2:-60}
        failed=0 clean=0
        for target in "${TARGETS[@]}"; do
            # a fresh corpus: the smoke run starts from the seeds only, like a clean CI machine
            corpus=$(mktemp -d)
            if run_target "$target" "$seconds" "$corpus"; then
                clean=$((clean + 1))
            else
                failed=$((failed + 1))
            fi
            rm -rf "$corpus"
        done
        # one closing line a CI reader can count: a target passes when it ran without a finding
        echo "fuzz smoke: $clean passed, $failed failed"
        [ "$failed" -eq 0 ]
        ;;
    zip|pickle|plans)
        [ $# -ge 2 ] || usage
        target=$1 seconds=$2
        shift 2
        run_target "$target" "$seconds" "fuzz/work/corpus/$target" "$@"
        ;;
    *) usage ;;
esac
