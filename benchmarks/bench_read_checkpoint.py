"""Benchmark: read_checkpoint(network_weights) against torch.load on an nnU-Net checkpoint.

`run(size)` returns rows {"benchmark", "case", "ours_s", "baseline_s", "ratio", "target", "ok",
"notes"}. Sizes: "small" (a ~0.3M-parameter UNet, seconds) and "full" (nnU-Net's default 3d_fullres
PlainConvUNet, 31.2M parameters, + SGD momentum state). Set NNUNET_EXPORT_BENCH_CHECKPOINT to a
real checkpoint_final.pth to time that instead. All timings: warm page cache, median of repeats,
same process, baseline timed in the same run. Results are checked after timing.

    python benchmarks/bench_read_checkpoint.py full
"""
from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from nnunet_export import read_checkpoint  # noqa: E402
from checkpoint_helpers import assert_checkpoint_parity, make_unet, nnunet_checkpoint_dict  # noqa: E402

# Targets are defined for the ~30M-parameter checkpoint ("full"); "small" is a smoke run whose
# fixed per-call costs dominate, so its rows report without a pass/fail target.
SIZES = {
    "small": ([8, 16, 32, 64], (16, 16, 16), 7),
    "full": ([32, 64, 128, 256, 320, 320], (32, 32, 64), 5),
}
# interleaved repeats per own size (run.py --smoke sets them to 1)
REPEATS = {size: repeats for size, (_, _, repeats) in SIZES.items()}
SPEED_TARGET = 5.0
RSS_TARGET = 1.10

# Runs in a fresh interpreter: peak RSS growth caused by one read, minus the interpreter + torch
# baseline (taken after a warm-up read of a tiny checkpoint, so torch's and our code pages count as
# baseline). Peak RSS from resource.getrusage(RUSAGE_SELF).ru_maxrss, cross-checked with VmHWM.
# Linux carries ru_maxrss across exec, and subprocess vforks this (large) process, so the child is
# started by an intermediate shell whose own fork gives it a fresh, small high-water mark.
_RSS_CHILD = r"""
import json, os, resource, sys, tempfile, time
import torch, numpy
import nnunet_export
mode, path = sys.argv[1], sys.argv[2]

def hwm():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM"))

def maxrss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

def read(p):
    if mode == "ours":
        return nnunet_export.read_checkpoint(p, ["network_weights"])["network_weights"]
    return torch.load(p, map_location="cpu", weights_only=False)["network_weights"]

with tempfile.TemporaryDirectory() as tmp:
    warm = os.path.join(tmp, "warm.pth")
    torch.save({"network_weights": {"w": torch.ones(4), "h": torch.ones(2).half()}}, warm)
    for v in read(warm).values():
        float(v.float().sum())
before, before_ru = hwm(), maxrss()
t = time.perf_counter()
out = read(path)
# make every weight page resident (the CRC pass already did for ours): what a first use costs
for v in out.values():
    if v.is_floating_point():
        float(v.sum())
elapsed = time.perf_counter() - t
unique = {v.untyped_storage().data_ptr(): v.untyped_storage().nbytes() for v in out.values()}
print(json.dumps({"delta": maxrss() - before_ru, "delta_vmhwm": hwm() - before,
                  "weights": sum(unique.values()), "elapsed": elapsed}))
"""


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        gc.collect()
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
        del result
    return statistics.median(times)


def _make_checkpoint(size: str, directory: Path) -> Path:
    features, patch, _ = SIZES[size]
    torch.manual_seed(0)
    path = directory / f"checkpoint_{size}.pth"
    torch.save(nnunet_checkpoint_dict(make_unet(features), patch=patch), path)
    return path


def _rss(mode: str, path: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # `sh -c 'python ...; exit $?'` (not exec): python is forked from the small shell
    command = 'PY="$1"; shift; "$PY" "$@"; exit $?'
    out = subprocess.run(["/bin/sh", "-c", command, "sh", sys.executable, "-c", _RSS_CHILD, mode, str(path)],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _row(case, ours, base, target, ok, notes, ratio=None):
    return {"benchmark": "read_checkpoint", "case": case, "ours_s": ours, "baseline_s": base,
            "ratio": ratio if ratio is not None else (base / ours if ours else None),
            "target": target, "ok": bool(ok), "notes": notes}


# The runner's sizes: "tiny" and "realistic" (the realistic 3d_fullres fixture, written by
# nnU-Net's own trainer) map onto this module's generated "small" / "full" checkpoints.
RUNNER_SIZES = {"tiny": "small", "realistic": "full"}


def _fixture_checkpoint(size: str) -> Path | None:
    if size != "realistic":
        return None
    sys.path.insert(0, str(ROOT / "tests"))
    from nnunet_fixtures import checkpoint_path, get_fixture

    return checkpoint_path(get_fixture("3d_fullres", size="realistic"))


def run(size: str = "full") -> list[dict]:
    own_size = RUNNER_SIZES.get(size, size)
    if own_size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES) + sorted(RUNNER_SIZES)}, got {size!r}")
    repeats = REPEATS[own_size]
    with tempfile.TemporaryDirectory() as tmp:
        given = os.environ.get("NNUNET_EXPORT_BENCH_CHECKPOINT")
        path = Path(given) if given else (_fixture_checkpoint(size) or _make_checkpoint(own_size, Path(tmp)))
        file_mib = path.stat().st_size / 2**20
        path.read_bytes()  # warm the page cache

        cases = {
            "ours": lambda: read_checkpoint(path, ["network_weights"]),
            "ours_nocrc": lambda: read_checkpoint(path, ["network_weights"], verify_crc=False),
            "ours_default": lambda: read_checkpoint(path),
            "torch_load": lambda: torch.load(path, map_location="cpu", weights_only=False),
            "torch_mmap": lambda: torch.load(path, map_location="cpu", weights_only=False, mmap=True),
        }
        # interleaved repeats: load from other processes on the machine hits every case alike
        times = {name: [] for name in cases}
        for _ in range(repeats):
            for name, fn in cases.items():
                times[name].append(_median_time(fn, 1))
        ours, ours_nocrc, ours_default, torch_load, torch_mmap = (
            statistics.median(times[name]) for name in cases)

        # results checked after timing: byte-identical to torch.load
        reference = torch.load(path, map_location="cpu", weights_only=False)
        assert_checkpoint_parity(read_checkpoint(path, ["network_weights"]), reference)
        assert_checkpoint_parity(read_checkpoint(path, ["network_weights"], verify_crc=False), reference)
        unique = {v.untyped_storage().data_ptr(): v for v in reference["network_weights"].values()}
        n_params = sum(v.untyped_storage().nbytes() // v.element_size() for v in unique.values())
        del reference

        rss_ours, rss_torch = _rss("ours", path), _rss("torch", path)

    weights_mib = rss_ours["weights"] / 2**20
    targeted = own_size == "full"
    speed_target = f">= {SPEED_TARGET:g}x" if targeted else "report (targets apply to 'full')"
    rss_target = f"<= weights x {RSS_TARGET:.2f}" if targeted else "report (targets apply to 'full')"
    crc_ms = 1e3 * (ours - ours_nocrc)
    crc_note = (f"CRC adds {crc_ms:.1f} ms = {weights_mib / (crc_ms / 1e3) / 1024:.2f} GiB/s incl. page faults"
                if crc_ms > 0.5 else f"CRC cost {crc_ms:.1f} ms: below timing noise")
    context = f"{file_mib:.1f} MiB file, {weights_mib:.1f} MiB weights, {n_params / 1e6:.1f}M weight elements in {len(unique)} storages"
    rows = [
        _row("network_weights vs torch.load", ours, torch_load, speed_target,
             torch_load / ours >= SPEED_TARGET or not targeted, f"CRC on; {context}"),
        _row("network_weights vs torch.load(mmap=True)", ours, torch_mmap, "report", True,
             "CRC on; torch mmap maps lazily and checks no CRC"),
        _row("network_weights, verify_crc=False vs torch.load", ours_nocrc, torch_load, "report", True,
             "no CRC: no weight page is read until used"),
        _row("default keys vs torch.load", ours_default, torch_load, speed_target,
             torch_load / ours_default >= SPEED_TARGET or not targeted,
             "network_weights + trainer_name + init_args + ..."),
        _row("CRC cost (verify_crc=True vs False)", ours, ours_nocrc, "report", True, crc_note,
             ratio=ours / ours_nocrc if ours_nocrc else None),
        _row("peak RSS delta, separate process", rss_ours["elapsed"], rss_torch["elapsed"],
             rss_target, rss_ours["delta"] <= rss_ours["weights"] * RSS_TARGET or not targeted,
             f"ru_maxrss: ours +{rss_ours['delta'] / 2**20:.1f} MiB, torch.load +{rss_torch['delta'] / 2**20:.1f} MiB, "
             f"weights {weights_mib:.1f} MiB (ratio = ours delta / weights; VmHWM deltas "
             f"{rss_ours['delta_vmhwm'] / 2**20:.1f} / {rss_torch['delta_vmhwm'] / 2**20:.1f} MiB); "
             f"seconds: read + touch every weight, fresh process",
             ratio=rss_ours["delta"] / rss_ours["weights"]),
    ]
    return rows


if __name__ == "__main__":
    for row in run(sys.argv[1] if len(sys.argv) > 1 else "full"):
        print(json.dumps(row))
