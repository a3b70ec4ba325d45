"""Shared setup of the atheris harnesses in fuzz/: loads the instrumented _core, writes inputs to
files (both readers take paths) and decides what counts as a finding.

The harnesses never import torch or the nnunet_export package: the instrumented extension is
loaded straight from its build folder, and read_checkpoint gets a NumPy-only factory that checks
the C core's promises (tensor inside its storage) instead of building tensors. Keeping torch out
keeps ASan/UBSan reports about our code only and makes every execution cheap.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# fuzz/run.sh builds the instrumented extension here (NNUNET_EXPORT_FUZZ=1, clang).
BUILD_DIR = os.environ.get("NNUNET_EXPORT_FUZZ_BUILD", os.path.join(REPO, "build", "fuzz"))

# Input layout of fuzz_plans.py (shared with make_seeds.py): configuration byte, plans, separator,
# dataset.
PLANS_SEPARATOR = b"\n\x00--dataset.json--\x00\n"
PLANS_CONFIGURATIONS = ("3d_fullres", "2d", "3d_lowres", "3d_cascade_fullres", "3d_fullres_bs4", "x")

# Element sizes of the dtype names the C core hands to the factory (csrc/pickle_globals.c nx_dtypes).
DTYPE_SIZES = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2,
    "int8": 1, "uint8": 1, "bool": 1, "complex128": 16, "complex64": 8, "complex32": 4,
    "float8_e5m2": 1, "float8_e4m3fn": 1, "float8_e5m2fnuz": 1, "float8_e4m3fnuz": 1,
    "uint16": 2, "uint32": 4, "uint64": 8,
}


class ContractViolation(BaseException):
    """The C core broke a promise. BaseException, so the core cannot turn it into a
    CheckpointError (it converts only Exception subclasses raised by the factory)."""


def load_core():
    """The instrumented nnunet_export._core from BUILD_DIR, without importing the package."""
    so_dir = os.path.join(BUILD_DIR, "nnunet_export")
    candidates = [f for f in os.listdir(so_dir) if f.startswith("_core.") and f.endswith(".so")]
    if len(candidates) != 1:
        sys.exit(f"fuzz: expected one instrumented _core*.so in {so_dir}, found {candidates}; "
                 "run fuzz/run.sh, which builds it")
    path = os.path.join(so_dir, candidates[0])
    loader = importlib.machinery.ExtensionFileLoader("nnunet_export._core", path)
    spec = importlib.util.spec_from_file_location("nnunet_export._core", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


class _Storage:
    __slots__ = ("array", "elsize")

    def __init__(self, array, elsize):
        self.array, self.elsize = array, elsize


def factory(kind, *args):
    """Stands in for nnunet_export.checkpoint._factory: same calls, NumPy only, and checks."""
    if kind == "storage":
        array, dtype_name = args
        if dtype_name not in DTYPE_SIZES:
            raise ContractViolation(f"storage dtype {dtype_name!r} is not in the core's table")
        elsize = DTYPE_SIZES[dtype_name]
        if array.ndim != 1 or array.dtype.itemsize != 1 or array.nbytes % elsize:
            raise ContractViolation(f"storage of {array.nbytes} bytes for {dtype_name}")
        # Touch the first and the last byte: the mapping must really hold them.
        if array.nbytes:
            int(array[0]) + int(array[-1])
        return _Storage(array, elsize)
    if kind == "tensor":
        base, offset, size, stride, requires_grad = args
        if not isinstance(base, _Storage):
            raise ContractViolation("tensor over something the factory did not make")
        elements = base.array.nbytes // base.elsize
        if any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
            raise ContractViolation(f"negative size/stride/offset {size} {stride} {offset}")
        if 0 in size:
            ok = offset <= elements
        else:
            ok = offset + sum((n - 1) * st for n, st in zip(size, stride)) < elements
        if not ok:
            raise ContractViolation(f"tensor offset {offset} size {size} stride {stride} "
                                    f"outside storage of {elements} elements")
        return ("tensor", offset, tuple(size), tuple(stride), bool(requires_grad))
    if kind == "parameter":
        return ("parameter",) + args
    if kind in ("device", "dtype"):
        return (kind,) + args
    raise ContractViolation(f"unknown factory kind {kind!r}")


class Scratch:
    """Files in /dev/shm (or the temp dir) that each execution overwrites."""

    def __init__(self, *names):
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        self.dir = tempfile.mkdtemp(prefix="nnunet-export-fuzz-", dir=base)
        self.paths = {n: os.path.join(self.dir, n) for n in names}

    def write(self, name, data: bytes) -> str:
        path = self.paths[name]
        with open(path, "wb") as f:
            f.write(data)
        return path


def run(test_one_input):
    """atheris.Setup + Fuzz with `test_one_input`; the libFuzzer flags come from sys.argv."""
    import atheris

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
