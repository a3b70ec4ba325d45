"""Builders and comparison helpers for checkpoint-reader tests (and the benchmark).

`nnunet_checkpoint_dict` returns a dict shaped exactly like nnUNetTrainer.save_checkpoint's
output; `assert_checkpoint_parity` compares read_checkpoint's result with torch.load's and is
meant to be reused by parity tests over real nnU-Net model folders.
"""
from __future__ import annotations

import io
import math
import os
import struct
import zipfile
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet

ALL_KEYS = [
    "network_weights",
    "optimizer_state",
    "grad_scaler_state",
    "logging",
    "_best_ema",
    "current_epoch",
    "init_args",
    "trainer_name",
    "inference_allowed_mirroring_axes",
]


def make_unet(features=(4, 8, 16), input_channels=1, num_classes=3, dim=3) -> PlainConvUNet:
    """A real dynamic_network_architectures PlainConvUNet as nnU-Net plans it (InstanceNorm)."""
    n = len(features)
    conv = torch.nn.Conv3d if dim == 3 else torch.nn.Conv2d
    norm = torch.nn.InstanceNorm3d if dim == 3 else torch.nn.InstanceNorm2d
    return PlainConvUNet(
        input_channels, n, list(features), conv, [[3] * dim] * n, [[1] * dim] + [[2] * dim] * (n - 1),
        [2] * n, num_classes, [2] * (n - 1), conv_bias=True, norm_op=norm,
        norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU,
        nonlin_kwargs={"inplace": True}, deep_supervision=False,
    )


def unet_features_for_parameters(target_params: int, n_stages=6, dim=3) -> list[int]:
    """features_per_stage (nnU-Net style doubling, capped at 320) giving about target_params."""
    base = 32
    best = None
    for b in range(8, 64):
        feats = [min(b * 2 ** i, 320 if dim == 3 else 512) for i in range(n_stages)]
        params = sum(p.numel() for p in make_unet(feats, dim=dim).parameters())
        if best is None or abs(params - target_params) < abs(best[1] - target_params):
            best = (feats, params)
        if params > target_params:
            break
    return best[0] if best else [base * 2 ** i for i in range(n_stages)]


def file_mappings(path) -> list[tuple[int, int]]:
    """(start, end) of this process's mappings of `path`, from /proc/self/maps."""
    real = os.path.realpath(path)
    spans = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].strip() == real:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                spans.append((start, end))
    return spans


def nnunet_checkpoint_dict(net: torch.nn.Module, epochs: int = 3, patch=(16, 16, 16)) -> dict:
    """Dict with exactly the keys and value types nnUNetTrainer.save_checkpoint writes."""
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True,
                                weight_decay=3e-5)
    x = torch.randn(1, 1, *patch)
    net(x).float().mean().backward()
    optimizer.step()
    rng = np.random.default_rng(0)
    logging = {
        "mean_fg_dice": [np.float64(v) for v in rng.random(epochs)],
        "ema_fg_dice": [np.float64(v) for v in rng.random(epochs)],
        "dice_per_class_or_region": [[np.float64(v) for v in rng.random(2)] for _ in range(epochs)],
        "train_losses": [np.float32(-v) for v in rng.random(epochs)],
        "val_losses": [np.float32(-v) for v in rng.random(epochs)],
        "lrs": [0.01 * (1 - e / 1000) ** 0.9 for e in range(epochs)],
        "epoch_start_timestamps": [1.7e9 + e for e in range(epochs)],
        "epoch_end_timestamps": [1.7e9 + e + 0.5 for e in range(epochs)],
    }
    plans = {
        "dataset_name": "Dataset001_Test",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "configurations": {"3d_fullres": {"patch_size": list(patch), "batch_size": 2,
                                          "architecture": {"network_class_name": "x"}}},
        "transpose_forward": [0, 1, 2],
    }
    dataset_json = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1, "b": 2},
                    "numTraining": 10, "file_ending": ".nii.gz"}
    return {
        "network_weights": net.state_dict(),
        "optimizer_state": optimizer.state_dict(),
        "grad_scaler_state": None,
        "logging": logging,
        "_best_ema": np.float64(0.8125),
        "current_epoch": epochs,
        "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0,
                      "dataset_json": dataset_json, "device": torch.device("cpu")},
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }


def save_small_checkpoint(path, features=(4, 8, 16), seed=0) -> dict:
    torch.manual_seed(seed)
    checkpoint = nnunet_checkpoint_dict(make_unet(features))
    torch.save(checkpoint, path)
    return checkpoint


def _float_bytes(v: float) -> bytes:
    return struct.pack("<d", v)


def _assert_same(ours: Any, ref: Any, where: str, storages: dict) -> None:
    assert type(ours) is type(ref), f"{where}: type {type(ours)} != {type(ref)}"
    if isinstance(ref, torch.Tensor):
        assert ours.dtype == ref.dtype, f"{where}: dtype"
        assert ours.shape == ref.shape, f"{where}: shape"
        assert ours.stride() == ref.stride(), f"{where}: stride"
        assert ours.storage_offset() == ref.storage_offset(), f"{where}: storage offset"
        assert ours.requires_grad == ref.requires_grad, f"{where}: requires_grad"
        assert ours.device == ref.device, f"{where}: device"
        so, sr = ours.untyped_storage(), ref.untyped_storage()
        assert so.nbytes() == sr.nbytes(), f"{where}: storage size"
        # the same storage sharing as torch.load: a bijection of storages
        prev = storages.setdefault(("ref", sr.data_ptr()), so.data_ptr())
        assert prev == so.data_ptr(), f"{where}: storage sharing differs from torch.load"
        prev = storages.setdefault(("ours", so.data_ptr()), sr.data_ptr())
        assert prev == sr.data_ptr(), f"{where}: storage sharing differs from torch.load"
        as_bytes = lambda s: torch.empty(0, dtype=torch.uint8).set_(s)  # noqa: E731
        assert torch.equal(as_bytes(so), as_bytes(sr)), f"{where}: storage bytes differ"
    elif isinstance(ref, dict):
        assert list(ours.keys()) == list(ref.keys()), f"{where}: keys or their order differ"
        for k in ref:
            _assert_same(ours[k], ref[k], f"{where}[{k!r}]", storages)
        if isinstance(ref, OrderedDict):
            assert list(vars(ours)) == list(vars(ref)), f"{where}: attributes differ"
            for k in vars(ref):
                _assert_same(vars(ours)[k], vars(ref)[k], f"{where}.{k}", storages)
    elif isinstance(ref, (list, tuple)):
        assert len(ours) == len(ref), f"{where}: length"
        for i, (a, b) in enumerate(zip(ours, ref)):
            _assert_same(a, b, f"{where}[{i}]", storages)
    elif isinstance(ref, np.generic):
        assert ours.dtype == ref.dtype and ours.tobytes() == ref.tobytes(), f"{where}: numpy scalar"
    elif isinstance(ref, float):
        assert _float_bytes(ours) == _float_bytes(ref) or (math.isnan(ours) and math.isnan(ref)), where
    else:
        assert ours == ref, f"{where}: {ours!r} != {ref!r}"


def assert_checkpoint_parity(ours: dict, reference: dict) -> None:
    """Every value in `ours` equals torch.load(weights_only=False)'s `reference` value: tensors
    byte-identical with the same dtype, shape, stride, storage offset and storage sharing;
    containers of the same type and order; scalars equal (NumPy scalars same dtype and bytes)."""
    assert ours, "nothing to compare"
    storages: dict = {}
    for key, value in ours.items():
        _assert_same(value, reference[key], key, storages)


def rewrite_zip(src: bytes, *, rename_folder: str | None = None, drop=(), replace=None,
                compress=()) -> bytes:
    """Re-packs a torch.save archive with Python's zipfile (STORED, no 64-byte alignment)."""
    replace = replace or {}
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(src)) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            folder, rest = info.filename.split("/", 1)
            if rest in drop:
                continue
            name = f"{rename_folder or folder}/{rest}"
            data = replace.get(rest, zin.read(info))
            method = zipfile.ZIP_DEFLATED if rest in compress else zipfile.ZIP_STORED
            zout.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return out.getvalue()


def zip_with_pickle(pkl: bytes, storages: dict[str, bytes] | None = None, folder="archive") -> bytes:
    """A torch.save-like archive around a hand-written data.pkl."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr(f"{folder}/data.pkl", pkl)
        z.writestr(f"{folder}/byteorder", b"little")
        for key, data in (storages or {}).items():
            z.writestr(f"{folder}/data/{key}", data)
        z.writestr(f"{folder}/version", b"3\n")
    return out.getvalue()


# ---- a tiny protocol-2 assembler (opcodes as torch.save writes them) ----


def p_str(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def p_int(value: int) -> bytes:
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw  # LONG1


def p_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def p_call(func: bytes, *args: bytes) -> bytes:
    return func + b"(" + b"".join(args) + b"tR"


def p_top(**items: bytes) -> bytes:
    """data.pkl of a dict {name: value}; always also holds a valid trainer_name."""
    body = b"".join(p_str(k) + v for k, v in items.items())
    return b"\x80\x02}(" + p_str("trainer_name") + p_str("nnUNetTrainer") + body + b"u."


def p_storage(storage_type: bytes, key="0", numel=4, location="cpu") -> bytes:
    return b"(" + p_str("storage") + storage_type + p_str(key) + p_str(location) + p_int(numel) + b"tQ"


def p_rebuild(storage: bytes, offset=0, size=(4,), stride=(1,)) -> bytes:
    tup = lambda xs: b"(" + b"".join(p_int(x) for x in xs) + b"t"  # noqa: E731
    return p_call(p_global("torch._utils", "_rebuild_tensor_v2"), storage, p_int(offset), tup(size), tup(stride),
                b"\x89", p_call(p_global("collections", "OrderedDict")))
