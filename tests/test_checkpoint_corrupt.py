"""read_checkpoint on damaged files: every case is an ExportError naming the file and the place,
never a crash, hang or silently wrong tensor."""
from __future__ import annotations

import io
import os
import pickle
import random
import re
import struct
import warnings
import zipfile
from collections import OrderedDict

import pytest
import torch

from nnunet_export import CheckpointError, ExportError, read_checkpoint
from checkpoint_helpers import (
    ALL_KEYS,
    assert_checkpoint_parity,
    p_global,
    p_int,
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
def original(tmp_path_factory):
    """(path, raw bytes, torch.load reference) of a small nnU-Net-shaped checkpoint."""
    path = tmp_path_factory.mktemp("corrupt") / "checkpoint_final.pth"
    save_small_checkpoint(path, features=(2, 4))
    return path, path.read_bytes(), torch.load(path, weights_only=False)


def _write(tmp_path, raw: bytes, name="damaged.pth"):
    path = tmp_path / name
    path.write_bytes(raw)
    return path


def _fails(path, match, keys=ALL_KEYS, exc=CheckpointError, **options):
    with pytest.raises(exc, match=match) as info:
        read_checkpoint(path, keys, **options)
    assert str(path) in str(info.value)
    return info.value


class _Collect(pickle.Unpickler):
    """Test-only unpickler that maps each tensor to its storage key (never builds tensors)."""

    def persistent_load(self, pid):
        return pid[2]

    def find_class(self, module, name):
        if name.startswith("_rebuild_tensor"):
            return lambda storage, *args: ("storage", storage)
        if name == "_rebuild_parameter":
            return lambda data, *args: data
        if name == "OrderedDict":
            return OrderedDict
        return _Anything


class _Anything:
    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _storage_keys(value) -> set[str]:
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "storage":
        return {value[1]}
    children = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return set().union(*(_storage_keys(v) for v in children)) if children else set()


def _payload_span(raw: bytes, suffix: str) -> tuple[int, int]:
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        info = next(i for i in z.infolist() if i.filename.split("/", 1)[1] == suffix)
    nlen, xlen = struct.unpack_from("<HH", raw, info.header_offset + 26)
    start = info.header_offset + 30 + nlen + xlen
    return start, start + info.file_size


def _pickle_of(raw: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))


# ---- the file itself ----


def test_missing_file_and_directory_and_fifo(tmp_path):
    err = _fails(tmp_path / "nope.pth", _exact("checkpoint '{path}': cannot open: No such file or directory"))
    assert isinstance(err.__cause__, FileNotFoundError)
    _fails(tmp_path, _exact("checkpoint '{path}': is a directory, not a checkpoint file"))
    err = _fails(tmp_path / "file" / "x.pth" if (tmp_path / "file").write_bytes(b"x") else None,
                 _exact("checkpoint '{path}': cannot open: Not a directory"))
    assert isinstance(err.__cause__, NotADirectoryError)
    os.mkfifo(tmp_path / "fifo")
    _fails(tmp_path / "fifo", _exact("checkpoint '{path}': not a regular file"))  # and no hang waiting for a writer


@pytest.mark.skipif(os.geteuid() == 0, reason="root bypasses file permissions; the OSError path is "
                    "covered by the missing-file and not-a-directory cases")
def test_permission_denied(tmp_path, original):
    path = _write(tmp_path, original[1])
    path.chmod(0)
    err = _fails(path, "cannot open: Permission denied")
    assert isinstance(err.__cause__, PermissionError)


def test_empty_and_not_a_zip(tmp_path):
    _fails(_write(tmp_path, b""), _exact("checkpoint '{path}': the file is empty (0 bytes)"))
    _fails(_write(tmp_path, b"hello, not a checkpoint\n" * 100), _exact("checkpoint '{path}': not a ZIP archive (no end-of-central-directory record in the last 65557 bytes); torch.save files are ZIP archives"))
    _fails(_write(tmp_path, bytes(random.Random(1).getrandbits(8) for _ in range(70000))), _exact("checkpoint '{path}': not a ZIP archive (no end-of-central-directory record in the last 65557 bytes); torch.save files are ZIP archives"))


def test_legacy_and_big_endian_formats(tmp_path, original):
    legacy = tmp_path / "legacy.pth"
    torch.save({"network_weights": OrderedDict(w=torch.ones(2))}, legacy, _use_new_zipfile_serialization=False)
    _fails(legacy, _exact("checkpoint '{path}': legacy (pre-zip, torch < 1.6) torch.save format; re-save it with a recent torch to read it here"))
    big = _write(tmp_path, rewrite_zip(original[1], replace={"byteorder": b"big"}))
    _fails(big, _exact("checkpoint '{path}': byteorder entry says b'big'; only little-endian checkpoints are supported"))


# ---- truncation and bit flips ----


def test_truncated_at_every_byte_of_the_first_4_kib_and_at_random_offsets(tmp_path, original):
    raw = original[1]
    rng = random.Random(0)
    cuts = list(range(4096)) + [rng.randrange(4096, len(raw)) for _ in range(300)] + [len(raw) - 1]
    path = tmp_path / "truncated.pth"
    for cut in cuts:
        path.write_bytes(raw[:cut])
        with pytest.raises(CheckpointError) as info:
            read_checkpoint(path, ALL_KEYS)
        assert str(path) in str(info.value), cut


def _flip_and_read(path, raw: bytes, position: int, bit: int, reference) -> str:
    damaged = bytearray(raw)
    damaged[position] ^= 1 << bit
    path.write_bytes(damaged)
    try:
        result = read_checkpoint(path, ALL_KEYS)
    except ExportError:
        return "error"
    assert_checkpoint_parity(result, reference)  # identical, or it is a silent corruption
    return "same"


def test_1000_random_bit_flips(tmp_path, original):
    _, raw, reference = original
    outcomes = {"error": 0, "same": 0}
    path = tmp_path / "flipped.pth"
    for seed in range(1000):
        rng = random.Random(seed)
        outcomes[_flip_and_read(path, raw, rng.randrange(len(raw)), rng.randrange(8), reference)] += 1
    # Every flip is an error or an identical read (_flip_and_read asserts the latter); some must err.
    assert outcomes["error"] > 0


def test_bit_flips_in_structure_bytes(tmp_path, original):
    """Flips outside storage payloads (headers, directory, pickle): 300 seeds."""
    _, raw, reference = original
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        payload = [_payload_span(raw, i.filename.split("/", 1)[1]) for i in z.infolist()
                   if "/data/" in i.filename]
    structure = [p for p in range(len(raw)) if not any(a <= p < b for a, b in payload)]
    path = tmp_path / "flipped.pth"
    outcomes = {"error": 0, "same": 0}
    for seed in range(300):
        rng = random.Random(10_000 + seed)
        outcomes[_flip_and_read(path, raw, rng.choice(structure), rng.randrange(8), reference)] += 1
    assert outcomes["error"] > 0 and outcomes["same"] > 0


# Zero-copy and copying reads check CRC-32s in one pass after the pickle, threads at once.
READ_MODES = [dict(copy=False, threads=1), dict(copy=False, threads=2), dict(copy=True, threads=1),
              dict(copy=True, threads=3)]


@pytest.mark.parametrize("options", READ_MODES, ids=lambda o: f"copy={o['copy']}-threads={o['threads']}")
def test_weight_byte_corruption_is_caught_by_crc(tmp_path, original, options):
    _, raw, reference = original
    keys = _storage_keys(_Collect(io.BytesIO(_pickle_of(raw))).load()["network_weights"])
    key = sorted(keys)[0]
    start, end = _payload_span(raw, f"data/{key}")
    damaged = bytearray(raw)
    damaged[(start + end) // 2] ^= 0x10
    path = _write(tmp_path, bytes(damaged))
    _fails(path, _exact("checkpoint '{path}': entry 'checkpoint_final/data/0' (payload at byte 21952, 216 bytes) fails its CRC32 check (stored 0xb2975eb2, computed 0x60206df9): the file is corrupt"), keys=["network_weights"], **options)
    # without CRC the flipped value comes through: the check is what protects the weights
    weights = read_checkpoint(path, ["network_weights"], verify_crc=False, **options)["network_weights"]
    assert any(not torch.equal(weights[k], reference["network_weights"][k]) for k in weights)


@pytest.mark.parametrize("options", READ_MODES, ids=lambda o: f"copy={o['copy']}-threads={o['threads']}")
def test_of_several_corrupt_storages_the_first_in_the_file_is_named(tmp_path, original, options):
    _, raw, _ = original
    keys = _storage_keys(_Collect(io.BytesIO(_pickle_of(raw))).load()["network_weights"])
    spans = sorted((_payload_span(raw, f"data/{key}"), key) for key in keys)
    spans = [(span, key) for span, key in spans if span[1] > span[0]]
    damaged = bytearray(raw)
    for (start, end), _ in spans[len(spans) // 2:]:  # the later half of the file's storages
        damaged[start] ^= 0x01
    (start, end), key = spans[len(spans) // 2]
    _fails(_write(tmp_path, bytes(damaged)), _exact("checkpoint '{path}': entry 'checkpoint_final/data/14' (payload at byte 26880, 16 bytes) fails its CRC32 check (stored 0xd7d7b30d, computed 0x79bf229c): the file is corrupt"),
           keys=["network_weights"], **options)


def test_optimizer_bytes_are_never_read_for_weights(tmp_path, original):
    _, raw, reference = original
    tree = _Collect(io.BytesIO(_pickle_of(raw))).load()
    optimizer_keys = _storage_keys(tree["optimizer_state"])
    assert optimizer_keys and not optimizer_keys & _storage_keys(tree["network_weights"])
    damaged = bytearray(raw)
    for key in optimizer_keys:
        start, end = _payload_span(raw, f"data/{key}")
        damaged[start:end] = b"\xa5" * (end - start)
    path = _write(tmp_path, bytes(damaged))
    out = read_checkpoint(path)
    assert_checkpoint_parity({"network_weights": out["network_weights"]}, reference)
    _fails(path, _exact("checkpoint '{path}': entry 'checkpoint_final/data/28' (payload at byte 30144, 216 bytes) fails its CRC32 check (stored 0x67e3f412, computed 0x37d29d44): the file is corrupt"), keys=["optimizer_state"])


# ---- ZIP structure ----


def _central_records(raw: bytes):
    """(offset of each central directory record, its name)."""
    pos = raw.rfind(b"PK\x05\x06")
    count, _, cd_off = struct.unpack_from("<HII", raw, pos + 10)
    if cd_off == 0xFFFFFFFF:
        loc = raw.rfind(b"PK\x06\x07")
        (e64,) = struct.unpack_from("<Q", raw, loc + 8)
        count, _, cd_off = struct.unpack_from("<QQQ", raw, e64 + 32)
    records, p = [], cd_off
    for _ in range(count):
        nlen, xlen, clen = struct.unpack_from("<HHH", raw, p + 28)
        records.append((p, raw[p + 46:p + 46 + nlen].decode()))
        p += 46 + nlen + xlen + clen
    return records


def _patch_central(raw: bytes, suffix: str, field_offset: int, fmt: str, value) -> bytes:
    record = next(p for p, name in _central_records(raw) if name.endswith("/" + suffix))
    damaged = bytearray(raw)
    struct.pack_into(fmt, damaged, record + field_offset, value)
    return bytes(damaged)


def _set_sizes(raw: bytes, suffix: str, size: int) -> bytes:
    """Sets an entry's sizes in its central record and in its local header alike."""
    record = next(p for p, name in _central_records(raw) if name.endswith("/" + suffix))
    (lho,) = struct.unpack_from("<I", raw, record + 42)
    damaged = bytearray(raw)
    struct.pack_into("<II", damaged, record + 20, size, size)
    struct.pack_into("<II", damaged, lho + 18, size, size)
    return bytes(damaged)


def test_compressed_entries(tmp_path, original):
    path = _write(tmp_path, rewrite_zip(original[1], compress=("data/0",)))
    _fails(path, _exact("checkpoint '{path}': entry 'checkpoint_final/data/0' is compressed (method 8); torch.save writes STORED entries only"))


def test_overlapping_entries(tmp_path, original):
    raw = rewrite_zip(original[1])  # Python's zipfile writes plain 32-bit sizes we can patch
    size = zipfile.ZipFile(io.BytesIO(raw)).getinfo("checkpoint_final/data/0").file_size
    grown = _set_sizes(raw, "data/0", size + 64)
    _fails(_write(tmp_path, grown), _exact("checkpoint '{path}': entries 'checkpoint_final/data/0' (bytes 21638-21971) and 'checkpoint_final/data/1' (from byte 21907) overlap"))
    # two directory records pointing at the same local header
    records = _central_records(raw)
    (lho,) = struct.unpack_from("<I", raw, records[0][0] + 42)
    same = _patch_central(raw, records[1][1].split("/", 1)[1], 42, "<I", lho)
    _fails(_write(tmp_path, same), _exact("checkpoint '{path}': entries 'checkpoint_final/data.pkl' (bytes 0-21446) and 'checkpoint_final/.format_version' (from byte 0) overlap"))


def test_entries_outside_the_file(tmp_path, original):
    raw = rewrite_zip(original[1])
    far = _patch_central(raw, "data/1", 42, "<I", len(raw) + 100)
    _fails(_write(tmp_path, far), _exact("checkpoint '{path}': entry 'checkpoint_final/data/1' (central record at byte 35244): local header missing or outside the archive data"))
    big = _set_sizes(raw, "data/1", 0x7FFFFFFF)
    _fails(_write(tmp_path, big), _exact("checkpoint '{path}': entries 'checkpoint_final/data/1' (bytes 21907-2147505607) and 'checkpoint_final/data/2' (from byte 21968) overlap"))
    # a directory claiming more records than its bytes can hold
    pos = raw.rfind(b"PK\x05\x06")
    damaged = bytearray(raw)
    struct.pack_into("<HH", damaged, pos + 8, 60000, 60000)
    _fails(_write(tmp_path, bytes(damaged)), _exact("checkpoint '{path}': central directory entry count does not fit its size at byte 39240"))
    damaged = bytearray(raw)
    struct.pack_into("<I", damaged, pos + 16, len(raw) * 2)
    _fails(_write(tmp_path, bytes(damaged)), _exact("checkpoint '{path}': central directory lies outside the file at byte 39240"))


def test_duplicate_names_and_foreign_folders(tmp_path, original):
    raw = original[1]
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as zin, zipfile.ZipFile(out, "w") as zout, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate we write on purpose
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
        zout.writestr("checkpoint_final/data/0", b"\x00" * 8)
    _fails(_write(tmp_path, out.getvalue()), _exact("checkpoint '{path}': duplicate entry name 'checkpoint_final/data/0'"))
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
        zout.writestr("other/data.pkl", b"\x80\x02}.")
    _fails(_write(tmp_path, out.getvalue()), _exact("checkpoint '{path}': entry 'other/data.pkl' is outside the archive folder 'checkpoint_final'; torch.save puts every entry under one folder"))


def test_missing_records(tmp_path, original):
    raw = original[1]
    _fails(_write(tmp_path, rewrite_zip(raw, drop=("data.pkl",))),
           _exact("checkpoint '{path}': archive has no data.pkl in its folder 'checkpoint_final' (not a torch.save file?)"))
    _fails(_write(tmp_path, rewrite_zip(raw, drop=("data/0",))),
           _exact("checkpoint '{path}': network_weights['encoder.stages.0.0.convs.0.conv.weight']: storage 'data/0' (persistent id key '0') is missing from the archive"))
    _fails(_write(tmp_path, rewrite_zip(raw, replace={"data/0": b"\x00" * 4})),
           _exact("checkpoint '{path}': network_weights['encoder.stages.0.0.convs.0.conv.weight']: storage entry 'data/0' holds 4 bytes but the pickle declares 216"))


def test_crc_of_the_pickle_is_checked(tmp_path, original):
    raw = original[1]
    start, end = _payload_span(raw, "data.pkl")
    damaged = bytearray(raw)
    damaged[start + 40] ^= 0x01
    _fails(_write(tmp_path, bytes(damaged)), _exact("checkpoint '{path}': entry 'checkpoint_final/data.pkl' (payload at byte 64, 21391 bytes) fails its CRC32 check (stored 0xa3b1b866, computed 0x4b9ab8f8): the file is corrupt"), keys=["trainer_name"])


# ---- tensor geometry against its storage ----

FLOAT = p_global("torch", "FloatStorage")


@pytest.mark.parametrize("tensor, message", [
    (p_rebuild(p_storage(FLOAT), offset=1), "checkpoint '{path}': network_weights: tensor (offset 1, size (4,), stride (1,)) reaches outside its storage of 4 elements"),
    (p_rebuild(p_storage(FLOAT), size=(5,)), "checkpoint '{path}': network_weights: tensor (offset 0, size (5,), stride (1,)) reaches outside its storage of 4 elements"),
    (p_rebuild(p_storage(FLOAT), size=(2, 2), stride=(3, 1)), "checkpoint '{path}': network_weights: tensor (offset 0, size (2, 2), stride (3, 1)) reaches outside its storage of 4 elements"),
    (p_rebuild(p_storage(FLOAT), offset=5, size=(0,)), "checkpoint '{path}': network_weights: tensor (offset 5, size (0,), stride (1,)) reaches outside its storage of 4 elements"),
    (p_rebuild(p_storage(FLOAT), size=(-1,)), "checkpoint '{path}': network_weights: tensor size or stride is not an int in [0, 2**63)"),
    (p_rebuild(p_storage(FLOAT), stride=(-1,)), "checkpoint '{path}': network_weights: tensor size or stride is not an int in [0, 2**63)"),
    (p_rebuild(p_storage(FLOAT), offset=-4), "checkpoint '{path}': network_weights: tensor storage offset is not an int in [0, 2**63)"),
    (p_rebuild(p_storage(FLOAT), offset=2**63), "checkpoint '{path}': network_weights: tensor storage offset is not an int in [0, 2**63)"),
    (p_rebuild(p_storage(FLOAT), size=(2**40, 2**40), stride=(0, 0)), "checkpoint '{path}': network_weights: tensor element count overflows 64 bits"),
    (p_rebuild(p_storage(FLOAT), size=(2**62,)), "checkpoint '{path}': network_weights: tensor (offset 0, size (4611686018427387904,), stride (1,)) reaches outside its storage of 4 elements"),
    (p_rebuild(p_storage(FLOAT), size=(2**62, 4), stride=(2**62, 1)), "checkpoint '{path}': network_weights: tensor extent overflows 64 bits"),
    (p_rebuild(p_storage(FLOAT, numel=-1)), "checkpoint '{path}': network_weights: storage persistent id is not ('storage', type, key: str, location: str, numel: int >= 0)"),
    (p_rebuild(p_storage(FLOAT, numel=2**62)), "checkpoint '{path}': network_weights: storage size in bytes overflows 64 bits"),
    (p_rebuild(p_storage(FLOAT, numel=8)), "checkpoint '{path}': network_weights: storage entry 'data/0' holds 16 bytes but the pickle declares 32"),
    (p_rebuild(p_storage(FLOAT, key="7")), "checkpoint '{path}': network_weights: storage 'data/7' (persistent id key '7') is missing from the archive"),
    (p_rebuild(p_storage(FLOAT), size=(4,), stride=(1, 1)), "checkpoint '{path}': network_weights: tensor size and stride are not tuples of equal length (<= 64)"),
])
def test_tensor_outside_its_storage(tmp_path, tensor, message):
    path = _write(tmp_path, zip_with_pickle(p_top(network_weights=tensor), {"0": b"\x00" * 16}))
    _fails(path, _exact(message), keys=["network_weights"])


def test_storage_shared_with_two_dtypes(tmp_path):
    both = b"](" + p_rebuild(p_storage(FLOAT)) + p_rebuild(p_storage(p_global("torch", "IntStorage"))) + b"e"
    path = _write(tmp_path, zip_with_pickle(p_top(network_weights=both), {"0": b"\x00" * 16}))
    _fails(path, _exact("checkpoint '{path}': network_weights[1]: storage is used with two different dtypes or sizes"), keys=["network_weights"])


def test_int_overflow_sized_storage_numel_is_rejected_not_allocated(tmp_path):
    assert p_int(2**62).startswith(b"\x8a")
    path = _write(tmp_path, zip_with_pickle(p_top(network_weights=p_rebuild(p_storage(FLOAT, numel=2**61), size=(2**61,))),
                                            {"0": b"\x00" * 16}))
    _fails(path, _exact("checkpoint '{path}': network_weights: storage entry 'data/0' holds 16 bytes but the pickle declares 9223372036854775808"), keys=["network_weights"])
