#!/usr/bin/env bash
# Sets everything up (scripts/bootstrap.sh) and runs the test suite against the package as a user
# installs it: the sdist is built from this checkout, the wheel from that sdist, and the wheel is
# installed (not editable, with every extra it declares, torch pinned) into a second venv,
# build/test-venv. pytest runs from that venv's own `pytest` executable, which does not put the
# checkout on sys.path, so a module or data file the wheel lacks fails the run
# (tests/test_packaging.py also checks where nnunet_export was imported from).
#
#   scripts/test.sh [pytest args...]      e.g. scripts/test.sh -k cli tests/test_cli.py
#
# NNUNET_EXPORT_TEST_SOURCE=1 skips the packaging and runs the suite against the editable .venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# Warnings in the C core are errors here.
export NNUNET_EXPORT_WERROR=1
bash scripts/bootstrap.sh
VENV=${NNUNET_EXPORT_VENV:-.venv}
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(tests)
if [ -n "${NNUNET_EXPORT_TEST_SOURCE:-}" ]; then
    exec "$VENV/bin/python" -m pytest "${args[@]}"
fi

DIST=build/dist
TEST_VENV=${NNUNET_EXPORT_TEST_VENV:-build/test-venv}
# A stale nnunet_export.egg-info (from an earlier build) lists files the configuration may no
# longer ship, and setuptools would put them into the sdist and wheel anyway: build from scratch.
rm -rf "$DIST" nnunet_export.egg-info
mkdir -p build
started=$SECONDS
# Without build isolation (the build must never resolve a torch of its own); with no --sdist or
# --wheel, `build` makes the sdist and then the wheel from the unpacked sdist.
"$VENV/bin/python" -m build --no-isolation --outdir "$DIST" . >"$DIST.log" 2>&1 || { cat "$DIST.log"; exit 1; }
sdist=$(ls "$DIST"/*.tar.gz)
wheel=$(ls "$DIST"/*.whl)
echo "test: built $sdist and $wheel (from the sdist) in $((SECONDS - started)) s"
NNUNET_EXPORT_VENV=$TEST_VENV bash scripts/bootstrap.sh "$wheel"

export NNUNET_EXPORT_TEST_INSTALLED=1 NNUNET_EXPORT_TEST_SDIST=$PWD/$sdist NNUNET_EXPORT_TEST_WHEEL=$PWD/$wheel
exec "$TEST_VENV/bin/pytest" "${args[@]}"
