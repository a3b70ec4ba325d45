"""Run the benchmarks in benchmarks/bench_*.py and print a results table.

    python benchmarks/run.py [--size tiny|realistic] [-k pattern] [--json out.json]

Each module exposes `run(size) -> list[dict]` (rows from timing.row). Ratios compare ours
with a baseline measured in the same run. Exit status 1 when any row is not ok.

Fixtures come from tests/nnunet_fixtures.py and are built on first use: tiny ones in about 3 min
on 2 idle cores, realistic ones (31 M-parameter 3d_fullres, 102 M-parameter ResEnc L) in about
12 min on 2 busy cores; later runs reuse the on-disk cache.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from timing import ROW_KEYS  # noqa: E402

kBadRow = "benchmark {module} returned a row without keys {missing}: {row}"


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "realistic"), default="tiny")
    parser.add_argument("-k", dest="pattern", help="run only bench_*.py files whose name contains this")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args(argv)

    rows = []
    for path in discover(args.pattern):
        module = load(path)
        for result in module.run(args.size):
            missing = [k for k in ROW_KEYS if k not in result]
            if missing:
                raise ValueError(kBadRow.format(module=path.stem, missing=missing, row=result))
            rows.append(result)
    print(format_table(rows) if rows else f"no benchmarks matched {args.pattern!r}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
