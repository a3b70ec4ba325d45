"""Run the benchmarks in benchmarks/bench_*.py and print a results table.

    python benchmarks/run.py [--size tiny|realistic] [-k pattern] [--json out.json]
    python benchmarks/run.py --smoke     (CI: every benchmark once, tiny, one repeat of each timing)

Each module exposes `run(size) -> list[dict]` (rows from timing.row) and `REPEATS` (its repeat
counts, see timing.py). Ratios compare ours with a baseline measured in the same run. Exit status
1 when any row is not ok, a module breaks that contract or a benchmark raises. --smoke checks the
rows and their results, not the speed: a row fails it only when its result was wrong.

Fixtures come from tests/nnunet_fixtures.py and are built on first use: tiny ones in about 3 min
on 2 idle cores, realistic ones (31 M-parameter 3d_fullres, 102 M-parameter ResEnc L) in about
12 min on 2 busy cores; later runs reuse the on-disk cache.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import traceback
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from timing import ROW_KEYS  # noqa: E402

kBadRow = "benchmark {module} returned a row without keys {missing}: {row}"
kNoRun = "benchmark {module} has no run(size) function (see timing.py for the contract)"
kNoRepeats = "benchmark {module} has no REPEATS dict of repeat counts (see timing.py for the contract)"
kNoRows = "benchmark {module} returned no rows"
kWrongResult = "benchmark {module}: wrong result in row {case!r}"


def discover(pattern: str | None) -> list[Path]:
    """bench_*.py files in this folder whose name contains `pattern` (all when None), sorted."""
    return [p for p in sorted(BENCH_DIR.glob("bench_*.py"))
            if pattern is None or pattern in p.stem]


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def format_table(rows: list[dict]) -> str:
    cells = [list(ROW_KEYS)] + [[_cell(r[k]) for k in ROW_KEYS] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(ROW_KEYS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def one_repeat(counts: dict) -> dict:
    """REPEATS with every count (an int or a tuple of ints) set to 1."""
    return {key: tuple(1 for _ in value) if isinstance(value, tuple) else 1 for key, value in counts.items()}


def run_module(path: Path, size: str, smoke: bool) -> list[dict]:
    """The rows of one bench_*.py; ValueError when it breaks the runner's contract."""
    module = load(path)
    if not callable(getattr(module, "run", None)):
        raise ValueError(kNoRun.format(module=path.stem))
    if not isinstance(getattr(module, "REPEATS", None), dict):
        raise ValueError(kNoRepeats.format(module=path.stem))
    if smoke:
        module.REPEATS = one_repeat(module.REPEATS)
    rows = module.run(size)
    if not rows:
        raise ValueError(kNoRows.format(module=path.stem))
    for result in rows:
        missing = [k for k in ROW_KEYS if k not in result]
        if missing:
            raise ValueError(kBadRow.format(module=path.stem, missing=missing, row=result))
        # Rows from timing.row carry "correct"; the others assert their results inside run().
        if smoke and not result.get("correct", True):
            raise ValueError(kWrongResult.format(module=path.stem, case=result["case"]))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "realistic"), default="tiny")
    parser.add_argument("-k", dest="pattern", help="run only bench_*.py files whose name contains this")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument("--smoke", action="store_true",
                        help="every benchmark once at tiny size with one repeat; fails on errors, not on speed")
    args = parser.parse_args(argv)
    size = "tiny" if args.smoke else args.size

    rows, failed = [], []
    for path in discover(args.pattern):
        started = time.perf_counter()
        try:
            rows += run_module(path, size, args.smoke)
        except Exception as err:  # noqa: BLE001 - one broken benchmark must not hide the others
            traceback.print_exc()
            failed.append(f"{path.stem}: {type(err).__name__}: {err}")
        print(f"[benchmarks] {path.stem}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    print(format_table(rows) if rows else f"no benchmarks matched {args.pattern!r}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    for line in failed:
        print(f"[benchmarks] FAILED {line}", file=sys.stderr)
    if failed or not rows:
        return 1
    return 0 if args.smoke or all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
