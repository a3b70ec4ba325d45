"""read_checkpoint on well-formed checkpoints: parity with torch.load, key selection, zero copy."""
from __future__ import annotations

import gc
import hashlib
import io
import os
import re
import struct
import threading
import zipfile
import zlib
from collections import OrderedDict

import numpy as np
import pytest
import torch

import nnunet_export
from nnunet_export import CheckpointError, read_checkpoint
from checkpoint_helpers import (
    ALL_KEYS,
    assert_checkpoint_parity,
    file_mappings,
    p_global,
    p_rebuild,
    p_storage,
    p_top,
    rewrite_zip,
    save_small_checkpoint,
    zip_with_pickle,
)


def _exact(message: str) -> str:
    """Pattern matching exactly `message`; each {path} stands for the (temporary) file path."""
    return "^" + re.escape(message).replace(re.escape("{path}"), "[^']+") + "$"


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint_final.pth"
    save_small_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def reference(ckpt_path):
    return torch.load(ckpt_path, map_location="cpu", weights_only=False)


def test_all_keys_match_torch_load(ckpt_path, reference):
    ours = read_checkpoint(ckpt_path, ALL_KEYS)
    assert list(ours) == ALL_KEYS
    assert_checkpoint_parity(ours, reference)
    # the _metadata attribute of state_dict() survives (load_state_dict uses it)
    assert vars(ours["network_weights"])["_metadata"] == vars(reference["network_weights"])["_metadata"]
    assert type(ours["_best_ema"]) is np.float64
    assert type(ours["logging"]["train_losses"][0]) is np.float32


def test_default_keys_rule(ckpt_path, reference):
    ours = read_checkpoint(ckpt_path)
    assert list(ours) == list(nnunet_export.checkpoint.DEFAULT_KEYS)
    # init_args without the embedded plans / dataset_json copies
    assert ours["init_args"] == {"configuration": "3d_fullres", "fold": 0, "device": torch.device("cpu")}
    assert ours["trainer_name"] == "nnUNetTrainer"
    assert ours["inference_allowed_mirroring_axes"] == (0, 1, 2)
    assert ours["current_epoch"] == reference["current_epoch"]
    assert_checkpoint_parity({"network_weights": ours["network_weights"]}, reference)


def test_explicit_init_args_is_whole(ckpt_path, reference):
    ours = read_checkpoint(ckpt_path, ["init_args"])
    assert list(ours) == ["init_args"]
    assert ours["init_args"]["plans"] == reference["init_args"]["plans"]
    assert ours["init_args"]["dataset_json"] == reference["init_args"]["dataset_json"]
    assert_checkpoint_parity(ours, reference)


def test_missing_requested_key_is_named(ckpt_path):
    with pytest.raises(CheckpointError, match=_exact("checkpoint '{path}': key 'ema_state' is not in the file (it has: 'network_weights', 'optimizer_state', 'grad_scaler_state', 'logging', '_best_ema', 'current_epoch', 'init_args', 'trainer_name', 'inference_allowed_mirroring_axes')")):
        read_checkpoint(ckpt_path, ["network_weights", "ema_state"])


def test_optional_default_keys_may_be_absent(tmp_path, reference):
    reduced = {k: v for k, v in reference.items() if k not in ("inference_allowed_mirroring_axes", "current_epoch")}
    path = tmp_path / "old.pth"
    torch.save(reduced, path)
    ours = read_checkpoint(path)
    assert list(ours) == ["network_weights", "trainer_name", "init_args"]
    del reduced["trainer_name"]
    torch.save(reduced, path)
    with pytest.raises(CheckpointError, match=_exact("checkpoint '{path}': key 'trainer_name' is not in the file (it has: 'network_weights', 'optimizer_state', 'grad_scaler_state', 'logging', '_best_ema', 'init_args')")):
        read_checkpoint(path)


def test_keys_argument_type(ckpt_path):
    with pytest.raises(TypeError, match=_exact('keys must be a list or tuple of str, not a single str')):
        read_checkpoint(ckpt_path, "network_weights")
    with pytest.raises(TypeError, match=_exact('keys[0] must be a str, got int')):
        read_checkpoint(ckpt_path, [1])
    assert list(read_checkpoint(ckpt_path, iter(["trainer_name"]))) == ["trainer_name"]


def test_tensors_live_in_the_private_mapping(ckpt_path):
    weights = read_checkpoint(ckpt_path, ["network_weights"])["network_weights"]
    spans = file_mappings(ckpt_path)
    assert len(spans) == 1
    start, end = spans[0]
    for name, t in weights.items():
        if t.numel():
            first = t.data_ptr()
            last = first + ((t.numel() and sum((s - 1) * st for s, st in zip(t.shape, t.stride()))) + 1) * t.element_size()
            assert start <= first and last <= end, name


def test_writing_a_tensor_leaves_the_file_unchanged(ckpt_path, tmp_path):
    path = tmp_path / "copy.pth"
    path.write_bytes(ckpt_path.read_bytes())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    weights = read_checkpoint(path, ["network_weights"])["network_weights"]
    name = next(k for k, v in weights.items() if v.dtype == torch.float32 and v.numel() > 4)
    weights[name].fill_(123.0)
    assert torch.all(weights[name] == 123.0)
    del weights
    gc.collect()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    again = read_checkpoint(path, ["network_weights"])["network_weights"]
    assert not torch.all(again[name] == 123.0)


def test_tensors_keep_the_mapping_alive(ckpt_path, reference):
    before = len(file_mappings(ckpt_path))
    result = read_checkpoint(ckpt_path, ["network_weights"])
    name = next(iter(reference["network_weights"]))
    kept = result["network_weights"][name]
    del result
    gc.collect()
    assert len(file_mappings(ckpt_path)) == before + 1
    assert torch.equal(kept, reference["network_weights"][name])
    del kept
    gc.collect()
    assert len(file_mappings(ckpt_path)) == before


def test_shared_storage_views_and_strides(tmp_path):
    base = torch.arange(60, dtype=torch.float32).reshape(3, 4, 5)
    data = OrderedDict(
        base=base, view=base[1], offset=base[2, 1:], transposed=base.transpose(0, 2),
        strided=base[:, ::2, 1::2], expanded=torch.ones(3).expand(4, 3), empty=torch.empty(0, 5),
        scalar=torch.tensor(2.5), param=torch.nn.Parameter(torch.ones(2, 2)),
    )
    path = tmp_path / "views.pth"
    torch.save({"network_weights": data, "trainer_name": "t", "init_args": {}}, path)
    ours = read_checkpoint(path, ["network_weights"])
    assert_checkpoint_parity(ours, torch.load(path, weights_only=False))
    w = ours["network_weights"]
    assert type(w["param"]) is torch.nn.Parameter and w["param"].requires_grad
    w["base"][1, 0, 0] = -1.0  # views share storage like torch.load's
    assert w["view"][0, 0] == -1.0


@pytest.mark.parametrize("dtype", [
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
    torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128,
    torch.float8_e4m3fn, torch.float8_e5m2, torch.uint16, torch.uint32, torch.uint64,
])
def test_every_saved_dtype(tmp_path, dtype):
    source = (torch.randn(7, 3) * 10)
    value = source.to(dtype) if dtype.is_floating_point or dtype.is_complex else source.abs().to(dtype)
    path = tmp_path / "dtype.pth"
    torch.save({"w": {"a": value, "b": value[2:, 1:]}}, path)
    ours = read_checkpoint(path, ["w"])
    assert_checkpoint_parity(ours, torch.load(path, weights_only=False))


def test_old_files_without_byteorder_and_version_any_folder(ckpt_path, reference):
    raw = rewrite_zip(ckpt_path.read_bytes(), rename_folder="my weird folder-ü",
                      drop=("byteorder", ".format_version", ".storage_alignment", "version",
                            ".data/serialization_id"))
    path = ckpt_path.parent / "old_layout.pth"
    path.write_bytes(raw)
    assert_checkpoint_parity(read_checkpoint(path, ALL_KEYS), reference)


def test_verify_crc_false_gives_the_same_tensors(ckpt_path, reference):
    assert_checkpoint_parity(read_checkpoint(ckpt_path, ALL_KEYS, verify_crc=False), reference)


def test_path_like_and_bytes_path(ckpt_path):
    assert read_checkpoint(str(ckpt_path), ["trainer_name"]) == {"trainer_name": "nnUNetTrainer"}
    assert read_checkpoint(os.fsencode(ckpt_path), ["trainer_name"]) == {"trainer_name": "nnUNetTrainer"}


@pytest.mark.parametrize("options", [{}, {"copy": True, "threads": 2}], ids=["zero-copy", "copy"])
def test_concurrent_reads_from_threads(ckpt_path, reference, options):
    errors, results = [], []

    def work():
        try:
            for _ in range(5):
                results.append(read_checkpoint(ckpt_path, ALL_KEYS, **options))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 30
    for r in results:
        assert_checkpoint_parity(r, reference)


def _sparse_zip64_checkpoint(path, nbytes: int) -> None:
    """A torch-like archive with one STORED storage of `nbytes` zero bytes, written sparsely
    (the payload is a hole) with ZIP64 records, without going through zipfile."""
    folder = b"big"
    pkl = (b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01ctorch._utils\n_rebuild_tensor_v2\nq\x02((X\x07"
           b"\x00\x00\x00storageq\x03ctorch\nByteStorage\nq\x04X\x01\x00\x00\x000q\x05X\x03\x00\x00\x00cpuq\x06\x8a\x05"
           + nbytes.to_bytes(5, "little") +
           b"tq\x07QK\x00\x8a\x05" + nbytes.to_bytes(5, "little") + b"\x85q\x08K\x01\x85q\t\x89ccollections\nOrderedDict\nq\n)Rq\x0btq\x0cRq\rs.")
    entries = [(folder + b"/data.pkl", pkl, zlib.crc32(pkl)), (folder + b"/data/0", None, 0)]
    central = b""
    offset = 0
    with open(path, "wb") as f:
        for name, data, crc in entries:
            size = len(data) if data is not None else nbytes
            extra = struct.pack("<HHQQ", 1, 16, size, size)
            local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0, crc, 0xFFFFFFFF, 0xFFFFFFFF,
                                len(name), len(extra)) + name + extra
            f.write(local)
            if data is not None:
                f.write(data)
            else:
                f.seek(size, os.SEEK_CUR)  # hole: no disk blocks
            cextra = struct.pack("<HHQQQ", 1, 24, size, size, offset)
            central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0, crc, 0xFFFFFFFF,
                                   0xFFFFFFFF, len(name), len(cextra), 0, 0, 0, 0, 0xFFFFFFFF) + name + cextra
            offset += len(local) + size
        cd_off = offset
        f.write(central)
        eocd64_off = cd_off + len(central)
        f.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, 2, 2, len(central), cd_off))
        f.write(struct.pack("<IIQI", 0x07064B50, 0, eocd64_off, 1))
        f.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0))


def test_storage_larger_than_2_gib_uses_64_bit_sizes(tmp_path):
    path = tmp_path / "big.pth"
    nbytes = (5 << 30) // 2  # 2.5 GiB, a hole in a sparse file
    _sparse_zip64_checkpoint(path, nbytes)
    w = read_checkpoint(path, ["w"], verify_crc=False)["w"]
    # element counts and byte sizes beyond 32 bits
    assert w.dtype == torch.uint8 and w.shape == (nbytes,) and w.numel() > 2**31
    assert w.untyped_storage().nbytes() == nbytes
    assert w[-1].item() == 0 and w[nbytes // 2].item() == 0
    # Python's reader sees the same ZIP64 layout (testzip() would fail: the sparse entry's CRC is 0).
    with zipfile.ZipFile(path) as archive:
        assert [(i.filename, i.file_size, i.header_offset) for i in archive.infolist()] == [
            ("big/data.pkl", 171, 0), ("big/data/0", nbytes, 233)]


def test_numpy_1_scalar_spelling_and_dtype_classes(tmp_path):
    values = {"logging": {"a": [np.float64(0.25), np.float32(-1.5), np.int64(7), np.bool_(True)]},
              "_best_ema": np.float64(0.5), "classes": [np.dtypes.Float64DType, np.dtypes.Int32DType],
              "dtype": np.dtype("f4")}
    path = tmp_path / "np.pth"
    torch.save(values, path)
    reference = torch.load(path, weights_only=False)
    assert_checkpoint_parity(read_checkpoint(path, list(values)), reference)
    # files written with NumPy 1.x name the scalar reconstructor numpy.core.multiarray.scalar
    with zipfile.ZipFile(path) as z:
        pkl = z.read("np/data.pkl")
    assert b"numpy._core.multiarray\nscalar" in pkl
    old = tmp_path / "np1.pth"
    old.write_bytes(rewrite_zip(path.read_bytes(), replace={
        "data.pkl": pkl.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")}))
    assert_checkpoint_parity(read_checkpoint(old, ["logging", "_best_ema"]), reference)


def test_cuda_saved_storages_load_on_the_cpu(tmp_path):
    # GPU training writes location 'cuda:0'; like map_location='cpu', tensors come back on the CPU
    values = struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)
    tensor = p_rebuild(p_storage(p_global("torch", "FloatStorage"), location="cuda:0"))
    path = tmp_path / "gpu.pth"
    path.write_bytes(zip_with_pickle(p_top(network_weights=tensor), {"0": values}))
    w = read_checkpoint(path, ["network_weights"])["network_weights"]
    assert w.device == torch.device("cpu") and w.tolist() == [1.0, 2.0, 3.0, 4.0]
