"""Timing and result rows shared by benchmark modules (benchmarks/bench_*.py).

A benchmark module exposes `run(size: str) -> list[dict]` (size "tiny" or "realistic"; each dict
is a row with ROW_KEYS, made by `row()` where possible) and `REPEATS`, a dict whose values are its
repeat counts (ints or tuples of ints): `run.py --smoke` sets every count to 1.
Times are medians of repeated runs after one warm-up; ours and the baseline are measured in the
same process, one after the other, so their ratio is meaningful on a shared machine.
"""
from __future__ import annotations

import ctypes
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parent.parent
# Benchmarks reuse the test-data factory (tests/nnunet_fixtures.py) and the in-place built package.
for path in (REPO_ROOT / "tests", REPO_ROOT):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

ROW_KEYS = ("benchmark", "case", "ours_s", "baseline_s", "ratio", "target", "ok", "notes")


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` calls of `function`, after one untimed warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def peak_growth(function: Callable[[], object], read: Callable[[], int], interval: float = 0.002) -> int:
    """Peak of `read()` (a memory figure in bytes) while `function` runs, minus its value before
    the call; sampled every `interval` seconds by a background thread."""
    start = read()
    peak = start
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, read())
            time.sleep(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        function()
    finally:
        done.set()
        sampler.join()
    return max(peak, read()) - start


def peak_rss_growth(function: Callable[[], object], interval: float = 0.002) -> int:
    """Peak resident memory of this process above the level before the call while `function`
    runs (bytes), from /proc/self/statm. Freed heap is returned to the system first
    (malloc_trim), so an earlier call's high-water mark does not hide this one's."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    return peak_growth(function, _rss_bytes, interval)


def measure(function: Callable[[], object], repeats: int) -> tuple[float, object, int]:
    """(median wall time of `repeats` calls after one untimed warm-up, the last call's result, the
    peak RSS growth during that last call): time, result and memory from the same runs, for
    benchmarks whose single call takes minutes."""
    function()
    times, result, peak = [], None, 0
    for index in range(repeats):
        started = time.perf_counter()
        if index == repeats - 1:
            holder = []
            peak = peak_rss_growth(lambda: holder.append(function()))
            result = holder[0]
        else:
            function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result, peak


def row(benchmark: str, case: str, ours_s: float, baseline_s: float, target: float | None,
        correct: bool, notes: str = "") -> dict:
    """One result row. ratio = ours_s / baseline_s (lower is better); with a target, the row is ok
    only when the result was correct and ratio <= target; without one, correctness alone decides.
    "correct" is kept apart too: a smoke run judges results, not speed."""
    ratio = ours_s / baseline_s if baseline_s > 0 else float("inf")
    ok = bool(correct) and (target is None or ratio <= target)
    return {"benchmark": benchmark, "case": case, "ours_s": ours_s, "baseline_s": baseline_s,
            "ratio": ratio, "target": target, "ok": ok, "notes": notes, "correct": bool(correct)}
