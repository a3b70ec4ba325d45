"""torch.load of a fixture checkpoint: memory-mapped vs eager (the baseline pair later work extends).

Both loads use weights_only=False, as nnU-Net's predictor does. Informational: no target; the
row is ok when both loads return identical network weights (checked after timing).
"""
from __future__ import annotations

import torch

from timing import median_seconds, row
from nnunet_fixtures import checkpoint_path, get_fixture

REPEATS = {"tiny": 20, "realistic": 5}
FIXTURES = ("3d_fullres", "resenc")


def _eager(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _mmap(path):
    return torch.load(path, map_location="cpu", weights_only=False, mmap=True)


def _same_weights(a: dict, b: dict) -> bool:
    wa, wb = a["network_weights"], b["network_weights"]
    return list(wa) == list(wb) and all(torch.equal(wa[k], wb[k]) for k in wa)


def run(size: str) -> list[dict]:
    rows = []
    for name in FIXTURES:
        path = checkpoint_path(get_fixture(name, size))
        mmap_s = median_seconds(lambda: _mmap(path), REPEATS[size])
        eager_s = median_seconds(lambda: _eager(path), REPEATS[size])
        megabytes = path.stat().st_size / 1e6
        rows.append(row("torch_load", f"{name} ({megabytes:.1f} MB): mmap vs eager", mmap_s, eager_s,
                        target=None, correct=_same_weights(_mmap(path), _eager(path)),
                        notes="informational baseline pair"))
    return rows
