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

SIZES = {
    "small": ([8, 16, 32, 64], (16, 16, 16), 7),
    "full": ([32, 64, 128, 256, 320, 320], (32, 32, 64), 5),
}
SPEED_TARGET = 5.0
RSS_TARGET = 1.10

# Runs in a fresh interpreter: peak RSS growth caused by one read, minus interpreter + torch.
_RSS_CHILD = r"""
import resource, sys, time, json
import torch, numpy
import nnunet_export
mode, path = sys.argv[1], sys.argv[2]
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
before = peak()
t = time.perf_counter()
if mode == "ours":
    out = nnunet_export.read_checkpoint(path, ["network_weights"])["network_weights"]
else:
    out = torch.load(path, map_location="cpu", weights_only=False, mmap=(mode == "torch_mmap"))["network_weights"]
# make every weight page resident (the CRC pass already did for ours): a realistic first use
total = 0.0
for v in out.values():
    if v.is_floating_point():
        total += float(v.double().sum()) if v.numel() < 4096 else float(v.sum())
elapsed = time.perf_counter() - t
weight_bytes = sum(v.untyped_storage().nbytes() for v in {v.untyped_storage().data_ptr(): v for v in out.values()}.values())
print(json.dumps({"delta": peak() - before, "weights": weight_bytes, "elapsed": elapsed}))
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
    out = subprocess.run([sys.executable, "-c", _RSS_CHILD, mode, str(path)], capture_output=True,
                         text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _row(case, ours, base, target, ok, notes, ratio=None):
    return {"benchmark": "read_checkpoint", "case": case, "ours_s": ours, "baseline_s": base,
            "ratio": ratio if ratio is not None else (base / ours if ours else None),
            "target": target, "ok": bool(ok), "notes": notes}


def run(size: str = "full") -> list[dict]:
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    repeats = SIZES[size][2]
    with tempfile.TemporaryDirectory() as tmp:
        given = os.environ.get("NNUNET_EXPORT_BENCH_CHECKPOINT")
        path = Path(given) if given else _make_checkpoint(size, Path(tmp))
        file_mib = path.stat().st_size / 2**20
        path.read_bytes()  # warm the page cache

        weights = lambda: read_checkpoint(path, ["network_weights"])  # noqa: E731
        ours = _median_time(weights, repeats)
        ours_nocrc = _median_time(lambda: read_checkpoint(path, ["network_weights"], verify_crc=False), repeats)
        ours_default = _median_time(lambda: read_checkpoint(path), repeats)
        torch_load = _median_time(lambda: torch.load(path, map_location="cpu", weights_only=False), repeats)
        torch_mmap = _median_time(lambda: torch.load(path, map_location="cpu", weights_only=False, mmap=True), repeats)

        # results checked after timing: byte-identical to torch.load
        reference = torch.load(path, map_location="cpu", weights_only=False)
        assert_checkpoint_parity(read_checkpoint(path, ["network_weights"]), reference)
        assert_checkpoint_parity(read_checkpoint(path, ["network_weights"], verify_crc=False), reference)
        n_params = sum(v.numel() for v in reference["network_weights"].values())
        del reference

        rss_ours, rss_torch = _rss("ours", path), _rss("torch", path)

    weights_mib = rss_ours["weights"] / 2**20
    context = f"{file_mib:.1f} MiB file, {weights_mib:.1f} MiB weights, {n_params / 1e6:.1f}M state-dict elements"
    rows = [
        _row("network_weights vs torch.load", ours, torch_load, f">= {SPEED_TARGET:g}x",
             torch_load / ours >= SPEED_TARGET, f"CRC on; {context}"),
        _row("network_weights vs torch.load(mmap=True)", ours, torch_mmap, "report", True,
             "CRC on; torch mmap maps lazily and checks no CRC"),
        _row("network_weights, verify_crc=False vs torch.load", ours_nocrc, torch_load, "report", True,
             "no CRC: no weight page is read until used"),
        _row("default keys vs torch.load", ours_default, torch_load, f">= {SPEED_TARGET:g}x",
             torch_load / ours_default >= SPEED_TARGET, "network_weights + trainer_name + init_args + ..."),
        _row("CRC cost (verify_crc=True vs False)", ours, ours_nocrc, "report", True,
             f"CRC adds {1e3 * (ours - ours_nocrc):.1f} ms = "
             f"{weights_mib / max(ours - ours_nocrc, 1e-9) / 1024:.2f} GiB/s incl. page faults",
             ratio=ours / ours_nocrc if ours_nocrc else None),
        _row("peak RSS delta, separate process", rss_ours["elapsed"], rss_torch["elapsed"],
             f"<= weights x {RSS_TARGET:.2f}", rss_ours["delta"] <= rss_ours["weights"] * RSS_TARGET,
             f"ours +{rss_ours['delta'] / 2**20:.1f} MiB, torch.load +{rss_torch['delta'] / 2**20:.1f} MiB, "
             f"weights {weights_mib:.1f} MiB (ratio = ours delta / weights; seconds include touching every weight)",
             ratio=rss_ours["delta"] / rss_ours["weights"]),
    ]
    return rows


if __name__ == "__main__":
    for row in run(sys.argv[1] if len(sys.argv) > 1 else "full"):
        print(json.dumps(row))
