"""read_checkpoint on hostile pickles: nothing runs, requested keys fail with the global's name
and key path, unrequested keys are skipped, and the VM's limits hold."""
from __future__ import annotations

import os
import pickle
from collections import OrderedDict

import pytest
import re
import torch

from nnunet_export import CheckpointError, ExportError, UnsafeCheckpointError, read_checkpoint
from checkpoint_helpers import p_call as call
from checkpoint_helpers import p_global as g
from checkpoint_helpers import p_int as i
from checkpoint_helpers import p_rebuild as _rebuild
from checkpoint_helpers import p_storage as _persid
from checkpoint_helpers import p_str as s
from checkpoint_helpers import p_top as top
from checkpoint_helpers import zip_with_pickle


def _exact(message: str) -> str:
    """Pattern matching exactly `message`; each {path} stands for the (temporary) file path."""
    return "^" + re.escape(message).replace(re.escape("{path}"), "[^']+") + "$"


@pytest.fixture
def canary(tmp_path):
    path = tmp_path / "canary"
    yield path
    assert not path.exists(), "code from the checkpoint was executed"


def write(tmp_path, pkl: bytes, storages=None):
    path = tmp_path / "hostile.pth"
    path.write_bytes(zip_with_pickle(pkl, storages))
    return path


class _System:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _Eval:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return (eval, (self.code,))


class _Plain:
    def __init__(self):
        self.x = 1


def _pickled_top(value) -> bytes:
    return pickle.dumps({"trainer_name": "t", "network_weights": OrderedDict(w=value)}, protocol=2)


@pytest.mark.parametrize("make, global_name", [
    (lambda c: _System(f"touch {c}"), "posix.system"),
    (lambda c: _Eval(f"open({str(c)!r}, 'w')"), "__builtin__.eval"),  # protocol 2 spelling
    (lambda c: _Plain(), "test_checkpoint_hostile._Plain"),  # NEWOBJ + BUILD of a class
])
def test_python_pickled_payloads_are_refused(tmp_path, canary, make, global_name):
    path = tmp_path / "evil.pth"
    path.write_bytes(zip_with_pickle(_pickled_top(make(canary))))
    with pytest.raises(UnsafeCheckpointError) as info:
        read_checkpoint(path, ["network_weights"])
    msg = str(info.value)
    assert str(path) in msg
    assert f"network_weights['w'] needs global '{global_name}'" in msg
    assert "nothing from the file was executed" in msg
    # the other keys still read
    assert read_checkpoint(path, ["trainer_name"]) == {"trainer_name": "t"}


def test_unrequested_hostile_key_is_skipped(tmp_path, canary):
    pkl = top(network_weights=b"\x80\x02ccollections\nOrderedDict\n)R"[2:],
              init_args=b"}", optimizer_state=call(g("posix", "system"), s(f"touch {canary}")))
    path = write(tmp_path, pkl)
    out = read_checkpoint(path)  # default keys: optimizer_state is never materialised
    assert out == {"network_weights": OrderedDict(), "trainer_name": "nnUNetTrainer", "init_args": {}}
    with pytest.raises(UnsafeCheckpointError, match=_exact("checkpoint '{path}': optimizer_state needs global 'posix.system', which is not in the allowlist; nothing from the file was executed")):
        read_checkpoint(path, ["optimizer_state"])


def test_getattr_import_chain(tmp_path, canary):
    os_module = call(g("builtins", "__import__"), s("os"))
    system = call(g("builtins", "getattr"), os_module, s("system"))
    pkl = top(logging=b"}" + s("ema") + b"](" + i(1) + call(system, s(f"touch {canary}")) + b"es")
    path = write(tmp_path, pkl)
    with pytest.raises(UnsafeCheckpointError, match=_exact("checkpoint '{path}': logging['ema'][1] needs global 'builtins.getattr', which is not in the allowlist; nothing from the file was executed")):
        read_checkpoint(path, ["logging"])


def test_nested_pickle_through_codecs(tmp_path, canary):
    inner = pickle.dumps(_System(f"touch {canary}"), protocol=2).decode("latin1")
    payload = call(g("pickle", "loads"), call(g("_codecs", "encode"), s(inner), s("latin1")))
    path = write(tmp_path, top(network_weights=payload))
    with pytest.raises(UnsafeCheckpointError, match=_exact("checkpoint '{path}': network_weights needs global 'pickle.loads', which is not in the allowlist; nothing from the file was executed")):
        read_checkpoint(path, ["network_weights"])
    # _codecs.encode with another codec is never run
    other = call(g("_codecs", "encode"), s("x"), s("rot13"))
    path = write(tmp_path, top(network_weights=other))
    with pytest.raises(CheckpointError, match=_exact("checkpoint '{path}': network_weights: _codecs.encode is accepted only as encode(str, 'latin1')")):
        read_checkpoint(path, ["network_weights"])


def test_rebuild_function_abuse(tmp_path, canary):
    data = {"0": b"\x00" * 16}
    # storage type that is not a storage
    path = write(tmp_path, top(network_weights=_rebuild(_persid(g("posix", "system")))), data)
    with pytest.raises(UnsafeCheckpointError, match=_exact("checkpoint '{path}': network_weights needs global 'posix.system', which is not in the allowlist; nothing from the file was executed")):
        read_checkpoint(path, ["network_weights"])
    # a call where the storage should be
    path = write(tmp_path, top(network_weights=_rebuild(call(g("posix", "system"), s(f"touch {canary}")))), data)
    with pytest.raises(CheckpointError, match=_exact("checkpoint '{path}': network_weights: tensor rebuild without a storage persistent id")):
        read_checkpoint(path, ["network_weights"])
    # calling what an allowlisted global returned
    path = write(tmp_path, top(network_weights=call(call(g("torch", "device"), s("cpu")), s("x"))))
    with pytest.raises(UnsafeCheckpointError, match=_exact("checkpoint '{path}': network_weights uses allowlisted global 'torch.device' but calls the object it returns, which torch.save never writes; nothing from the file was executed")):
        read_checkpoint(path, ["network_weights"])
    # NEWOBJ on an allowlisted class
    path = write(tmp_path, top(network_weights=g("collections", "OrderedDict") + b")\x81"))
    with pytest.raises(UnsafeCheckpointError, match=_exact("checkpoint '{path}': network_weights uses allowlisted global 'collections.OrderedDict' but instantiates it with NEWOBJ, which torch.save never writes; nothing from the file was executed")):
        read_checkpoint(path, ["network_weights"])
    # _rebuild_parameter around an unsafe call
    param = call(g("torch._utils", "_rebuild_parameter"), call(g("builtins", "eval"), s("1")), b"\x88",
                 call(g("collections", "OrderedDict")))
    path = write(tmp_path, top(network_weights=param))
    with pytest.raises(UnsafeCheckpointError, match=_exact("checkpoint '{path}': network_weights needs global 'builtins.eval', which is not in the allowlist; nothing from the file was executed")):
        read_checkpoint(path, ["network_weights"])
    # torch.device with a string torch rejects
    path = write(tmp_path, top(network_weights=call(g("torch", "device"), s("nonsense:3:x"))))
    with pytest.raises(CheckpointError, match=_exact("checkpoint '{path}': network_weights: torch rejected the value (Invalid device string: 'nonsense:3:x')")):
        read_checkpoint(path, ["network_weights"])
    # storage key trying to leave data/
    path = write(tmp_path, top(network_weights=_rebuild(_persid(g("torch", "FloatStorage"), key="../data.pkl"))), data)
    with pytest.raises(CheckpointError, match=_exact("checkpoint '{path}': network_weights: storage 'data/../data.pkl' (persistent id key '../data.pkl') is missing from the archive")):
        read_checkpoint(path, ["network_weights"])


@pytest.mark.parametrize("pkl, message", [
    (b"\x80\x02(i__builtin__\nlist\n.", "checkpoint '{path}': entry 'archive/data.pkl' byte 3: opcode 0x69 (INST) is not allowed; only the protocol-2 opcodes torch's weights-only loader accepts are"),
    (b"\x80\x02(o.", "checkpoint '{path}': entry 'archive/data.pkl' byte 3: opcode 0x6f (OBJ) is not allowed; only the protocol-2 opcodes torch's weights-only loader accepts are"),
    (b"\x80\x02" + s("os") + s("system") + b"\x93.", "checkpoint '{path}': entry 'archive/data.pkl' byte 20: opcode 0x93 (STACK_GLOBAL) is not allowed; only the protocol-2 opcodes torch's weights-only loader accepts are"),
    (b"\x80\x02" + g("builtins", "dict") + b")}\x92.", "checkpoint '{path}': entry 'archive/data.pkl' byte 19: opcode 0x92 (NEWOBJ_EX) is not allowed; only the protocol-2 opcodes torch's weights-only loader accepts are"),
    (pickle.dumps({"a": 1}, protocol=4), "checkpoint '{path}': entry 'archive/data.pkl' byte 0: opcode PROTO: only protocol 2 (first opcode) is accepted"),
    (b"\x80\x02\x95\x00\x00\x00\x00\x00\x00\x00\x00.", "checkpoint '{path}': entry 'archive/data.pkl' byte 2: opcode 0x95 (FRAME) is not allowed; only the protocol-2 opcodes torch's weights-only loader accepts are"),
    (b"\x80\x02}\x80\x02.", "checkpoint '{path}': entry 'archive/data.pkl' byte 3: opcode PROTO: only protocol 2 (first opcode) is accepted"),
    (b"\x80\x02I1\n.", "checkpoint '{path}': entry 'archive/data.pkl' byte 2: opcode 0x49 (INT) is not allowed; only the protocol-2 opcodes torch's weights-only loader accepts are"),
    (b"\x80\x02]\x90.", "checkpoint '{path}': entry 'archive/data.pkl' byte 3: opcode 0x90 (ADDITEMS) is not allowed; only the protocol-2 opcodes torch's weights-only loader accepts are"),
    (b"\x80\x02h\x05.", "checkpoint '{path}': entry 'archive/data.pkl' byte 2: opcode BINGET: memo index was never stored"),
    (b"\x80\x02}r\xff\xff\xff\x7f.", "checkpoint '{path}': entry 'archive/data.pkl' byte 3: opcode LONG_BINPUT: memo index larger than the pickle could ever fill"),
    (b"\x80\x02R.", "checkpoint '{path}': entry 'archive/data.pkl' byte 2: opcode REDUCE: stack underflow"),
    (b"\x80\x02t.", "checkpoint '{path}': entry 'archive/data.pkl' byte 2: opcode TUPLE: no MARK on the stack"),
    (b"\x80\x02}(" + s("k") + b"s.", "checkpoint '{path}': entry 'archive/data.pkl' byte 10: opcode SETITEM: needs a dict, a key and a value"),
    (b"\x80\x02}(" + s("k") + b"u.", "checkpoint '{path}': entry 'archive/data.pkl' byte 10: opcode SETITEMS: needs a dict below the MARK and key/value pairs above it"),
    (b"\x80\x02](a.", "checkpoint '{path}': entry 'archive/data.pkl' byte 4: opcode APPEND: needs a list and an item"),
    (b"\x80\x02(.", "checkpoint '{path}': entry 'archive/data.pkl' byte 3: opcode STOP: STOP with a stack other than exactly one object"),
    (b"\x80\x02}}.", "checkpoint '{path}': entry 'archive/data.pkl' byte 4: opcode STOP: STOP with a stack other than exactly one object"),
    (b"\x80\x02}.junk", "checkpoint '{path}': entry 'archive/data.pkl' byte 3: opcode STOP: bytes follow STOP"),
    (b"\x80\x02}", "checkpoint '{path}': entry 'archive/data.pkl' ends without STOP"),
    (b"\x80\x02X\xff\xff\xff\xff", "checkpoint '{path}': entry 'archive/data.pkl' ends inside opcode BINUNICODE at byte 2"),
    (b"\x80\x02\x8a\xff\x01\x02.", "checkpoint '{path}': entry 'archive/data.pkl' ends inside opcode LONG1 at byte 2"),
    (b"\x80\x02X\x02\x00\x00\x00\xff\xfe.", "checkpoint '{path}': entry 'archive/data.pkl' byte 2: opcode BINUNICODE: string is not UTF-8 ('utf-8' codec can't decode byte 0xff in position 0: invalid start byte)"),
    (b"\x80\x02](" + s("k") + s("v") + b"u.", "checkpoint '{path}': entry 'archive/data.pkl' byte 16: opcode SETITEMS: target is not a dict or OrderedDict"),
    (b"\x80\x02}(](" + b"tt" + b"\x00" + b"u.", "checkpoint '{path}': entry 'archive/data.pkl' byte 8: opcode 0x00 (unknown) is not allowed; only the protocol-2 opcodes torch's weights-only loader accepts are"),
    (b"\x80\x02}]]s.", "checkpoint '{path}': entry 'archive/data.pkl' byte 5: opcode SETITEM: dict key is not a str, bytes, bool, None or int in (-2**60, 2**61 - 1) other than -1 (other keys allow hash-collision floods)"),
    (b"\x80\x02})]s.", "checkpoint '{path}': entry 'archive/data.pkl' byte 5: opcode SETITEM: dict key is not a str, bytes, bool, None or int in (-2**60, 2**61 - 1) other than -1 (other keys allow hash-collision floods)"),
    (b"\x80\x02}G?\xf0\x00\x00\x00\x00\x00\x00]s.", "checkpoint '{path}': entry 'archive/data.pkl' byte 13: opcode SETITEM: dict key is not a str, bytes, bool, None or int in (-2**60, 2**61 - 1) other than -1 (other keys allow hash-collision floods)"),
    (b"\x80\x02}J\xff\xff\xff\xff]s.", "checkpoint '{path}': entry 'archive/data.pkl' byte 9: opcode SETITEM: dict key is not a str, bytes, bool, None or int in (-2**60, 2**61 - 1) other than -1 (other keys allow hash-collision floods)"),
    (b"\x80\x02" + g("os", "system") + s("x") + b"R.", "checkpoint '{path}': entry 'archive/data.pkl' byte 19: opcode REDUCE: argument is not a tuple"),
    (b"\x80\x02" + s("f") + b")R.", "checkpoint '{path}': entry 'archive/data.pkl' byte 9: opcode REDUCE: callable is not a global"),
    (b"\x80\x02}" + b"(" + s("x") + b"\n" + b"u.", "checkpoint '{path}': entry 'archive/data.pkl' byte 10: opcode 0x0a (unknown) is not allowed; only the protocol-2 opcodes torch's weights-only loader accepts are"),
    (b"\x80\x02cos system\n.", "checkpoint '{path}': entry 'archive/data.pkl' byte 2: opcode GLOBAL: module or name is not printable ASCII"),
    (b"\x80\x02]}b.", "checkpoint '{path}': entry 'archive/data.pkl' byte 4: opcode BUILD: BUILD target is not an OrderedDict or a reconstructed object"),
    (b"\x80\x02" + g("posix", "system") + b"K\x01Q.", "checkpoint '{path}': entry 'archive/data.pkl' byte 18: opcode BINPERSID: persistent id is not a tuple"),
])
def test_malformed_or_forbidden_pickles(tmp_path, pkl, message):
    path = write(tmp_path, pkl)
    with pytest.raises(CheckpointError, match=_exact(message)) as info:
        read_checkpoint(path, ["trainer_name"])
    assert str(path) in str(info.value)


def test_top_level_must_be_a_dict(tmp_path):
    path = write(tmp_path, b"\x80\x02" + call(g("collections", "OrderedDict")) + b".")
    with pytest.raises(CheckpointError, match=_exact("checkpoint '{path}': top-level object is an OrderedDict (a bare state dict?), not the dict nnU-Net's save_checkpoint writes")):
        read_checkpoint(path)
    path = write(tmp_path, b"\x80\x02].")
    with pytest.raises(CheckpointError, match=_exact("checkpoint '{path}': top-level object is list, not the dict nnU-Net's save_checkpoint writes")):
        read_checkpoint(path)


def test_nesting_depth_limit_and_no_crash_when_skipped(tmp_path):
    depth = 100_000
    deep_lists = b"]" * depth + b"a" * (depth - 1)
    deep_tuples = b")" + b"\x85" * depth
    # 20k nested unconstructed calls: system((system((...(None,)...),)),)
    calls = g("posix", "system") + b"q\x00(" + b"h\x00(" * 19_999 + b"N" + b"tR" * 20_000
    pkl = top(network_weights=deep_lists, init_args=deep_tuples, optimizer_state=calls)
    path = write(tmp_path, pkl)
    assert read_checkpoint(path, ["trainer_name"]) == {"trainer_name": "nnUNetTrainer"}
    with pytest.raises(CheckpointError, match=_exact("checkpoint '{path}': network_weights[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]: nested deeper than 200 levels")):
        read_checkpoint(path, ["network_weights"])
    with pytest.raises(CheckpointError, match=_exact("checkpoint '{path}': init_args[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]: nested deeper than 200 levels")):
        read_checkpoint(path, ["init_args"])
    with pytest.raises(UnsafeCheckpointError, match=_exact("checkpoint '{path}': optimizer_state needs global 'posix.system', which is not in the allowlist; nothing from the file was executed")):
        read_checkpoint(path, ["optimizer_state"])


def test_colliding_int_keys_are_refused_quickly(tmp_path):
    # 20k int keys that all hash alike (multiples of 2**61 - 1) would make dict filling quadratic
    keys = b"".join(i(k * (2**61 - 1)) + b"N" for k in range(1, 20_001))
    path = write(tmp_path, top(optimizer_state=b"}(" + keys + b"u"))
    with pytest.raises(CheckpointError, match=_exact("checkpoint '{path}': entry 'archive/data.pkl' byte 259033: opcode SETITEMS: dict key is not a str, bytes, bool, None or int in (-2**60, 2**61 - 1) other than -1 (other keys allow hash-collision floods)")):
        read_checkpoint(path, ["trainer_name"])


def test_declared_lengths_do_not_allocate(tmp_path):
    # a 4 GiB string declared in a 20-byte pickle fails before any allocation
    path = write(tmp_path, b"\x80\x02X\xfe\xff\xff\xff" + b"a" * 10)
    with pytest.raises(CheckpointError, match=_exact("checkpoint '{path}': entry 'archive/data.pkl' ends inside opcode BINUNICODE at byte 2")):
        read_checkpoint(path)
    # storages are never allocated: a huge declared numel is checked against the entry size
    huge = _rebuild(_persid(g("torch", "FloatStorage"), numel=2**62), size=(2**62,))
    path = write(tmp_path, top(network_weights=huge), {"0": b"\x00" * 16})
    with pytest.raises(CheckpointError, match=_exact("checkpoint '{path}': network_weights: storage size in bytes overflows 64 bits")):
        read_checkpoint(path, ["network_weights"])


def test_ordered_dict_attribute_cannot_shadow_methods(tmp_path):
    od = call(g("collections", "OrderedDict"))
    for name in ("keys", "__class__"):
        pkl = top(network_weights=od + b"}(" + s(name) + i(1) + b"ub")
        path = write(tmp_path, pkl)
        with pytest.raises(CheckpointError, match=_exact("checkpoint '{path}': network_weights: OrderedDict attribute name is not allowed")):
            read_checkpoint(path, ["network_weights"])
    ok = top(network_weights=od + b"}(" + s("_metadata") + b"}u" + b"b")
    assert vars(read_checkpoint(write(tmp_path, ok), ["network_weights"])["network_weights"]) == {"_metadata": {}}


def test_numpy_object_dtypes_and_arrays_are_refused(tmp_path):
    raw = call(g("_codecs", "encode"), s("\x00" * 8), s("latin1"))
    obj_dtype = call(g("numpy", "dtype"), s("O8"), b"\x89", b"\x88")
    scalar = call(g("numpy._core.multiarray", "scalar"), obj_dtype, raw)
    path = write(tmp_path, top(logging=scalar))
    with pytest.raises(CheckpointError, match=_exact("checkpoint '{path}': logging: numpy.dtype code is not a plain numeric type (b1, i1-i8, u1-u8, f2-f8, c8, c16)")):
        read_checkpoint(path, ["logging"])
    big_endian = call(g("numpy", "dtype"), s("f8"), b"\x89", b"\x88") + b"(K\x03" + s(">") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    scalar = call(g("numpy.core.multiarray", "scalar"), big_endian, raw)
    path = write(tmp_path, top(logging=scalar))
    with pytest.raises(CheckpointError, match=_exact("checkpoint '{path}': logging: numpy.dtype byte order is not little-endian ('<', '|', '=')")):
        read_checkpoint(path, ["logging"])
    array = call(g("numpy.core.multiarray", "_reconstruct"), g("numpy", "ndarray"), b"(K\x00t", b"U\x01b")
    path = write(tmp_path, top(logging=array))
    with pytest.raises(UnsafeCheckpointError, match=_exact("checkpoint '{path}': logging needs global 'numpy.core.multiarray._reconstruct', which is not in the allowlist; nothing from the file was executed")):
        read_checkpoint(path, ["logging"])


def test_every_error_is_an_export_error():
    assert issubclass(UnsafeCheckpointError, CheckpointError)
    assert issubclass(CheckpointError, ExportError)


def test_torch_weights_only_agrees_on_a_hostile_file(tmp_path, canary):
    # sanity check of the test payload itself: torch's own safe loader refuses it too
    path = tmp_path / "evil.pth"
    path.write_bytes(zip_with_pickle(_pickled_top(_System(f"touch {canary}"))))
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
