"""Safe, zero-copy reading of nnU-Net v2 checkpoints (``torch.save`` ``.pth`` files).

The C core parses the ZIP container and runs ``data.pkl`` through a pickle VM that knows only
the opcodes and globals ``torch.save`` emits for nnU-Net checkpoints; nothing from the file is
imported or called. This module only supplies the trusted factory that turns mapped storage
bytes into tensors.
"""
from __future__ import annotations

import os
from typing import Any, Iterable

import torch

from . import _core

__all__ = ["read_checkpoint", "DEFAULT_KEYS"]

#: Keys returned when ``keys`` is None. ``init_args`` comes without ``plans`` / ``dataset_json``.
DEFAULT_KEYS = _core.DEFAULT_CHECKPOINT_KEYS


def _factory(kind: str, *args: Any) -> Any:
    # Called by the C core only, with `kind` and dtype names chosen from the core's own tables.
    if kind == "storage":
        array, dtype_name = args
        flat = torch.from_numpy(array)  # uint8 over the private mapping: no copy
        dtype = getattr(torch, dtype_name)
        return flat if dtype is torch.uint8 else flat.view(dtype)
    if kind == "tensor":
        base, offset, size, stride, requires_grad = args
        # Same construction as torch._utils._rebuild_tensor: a fresh tensor sharing the storage
        # (so views share one storage, like torch.load), not an autograd view of `base`.
        tensor = torch.empty((0,), dtype=base.dtype).set_(base.untyped_storage(), offset, size, stride)
        if requires_grad:
            tensor.requires_grad_(True)
        return tensor
    if kind == "parameter":
        tensor, requires_grad = args
        return torch.nn.Parameter(tensor, requires_grad=requires_grad)
    if kind == "device":
        return torch.device(*args)
    if kind == "dtype":
        return getattr(torch, args[0])
    raise AssertionError(f"unknown factory kind {kind!r}")


def read_checkpoint(
    path: str | os.PathLike[str],
    keys: Iterable[str] | None = None,
    *,
    verify_crc: bool = True,
    copy: bool = False,
    threads: int | None = None,
) -> dict[str, Any]:
    """Read selected top-level keys of an nnU-Net checkpoint without executing anything.

    Tensors share memory with a private (copy-on-write) mapping of the file: no bytes are copied,
    writing to a tensor never changes the file, and the mapping stays alive as long as any tensor
    does. Only the storages of the requested keys are touched, so reading ``network_weights``
    never reads the optimizer state. All tensors are on the CPU (like ``map_location='cpu'``).

    Args:
        path: the ``.pth`` file written by ``torch.save`` (e.g. ``fold_0/checkpoint_final.pth``).
        keys: top-level keys to return. ``None`` selects :data:`DEFAULT_KEYS`:
            ``network_weights``, ``trainer_name`` and ``init_args`` must exist;
            ``inference_allowed_mirroring_axes`` and ``current_epoch`` are left out of the result
            when the file lacks them (nnU-Net treats a missing mirroring entry as "no mirroring");
            ``init_args`` is returned WITHOUT its ``plans`` and ``dataset_json`` copies (they
            duplicate plans.json / dataset.json). An explicit list returns each key whole
            (``keys=["init_args"]`` includes ``plans``) and every listed key must exist.
        verify_crc: check the CRC32 of every ZIP entry that is read (data.pkl, byteorder and
            each touched storage). Turning it off skips reading weight pages up front.
        copy: copy each touched storage out of the mapping (once, GIL released) instead of
            sharing it. Tensors then survive the file being truncated or rewritten in place
            (``torch.save`` onto the same path, as nnU-Net does with checkpoint_best.pth during
            training), which a zero-copy mapping cannot: the kernel raises SIGBUS on pages past
            a file's new end. Costs one copy of the requested weights, made after the pickle is
            read, by ``threads`` threads at once, into one block of memory that all returned
            tensors share (it is freed when the last of them is); the CRC-32 check is done on
            the copy, so it costs no second pass over the file.
        threads: threads copying (``copy=True``) or checking CRC-32s at once, GIL released;
            None uses ``torch.get_num_threads()``.

    Returns:
        dict mapping each selected key to its value: tensors (``torch.Tensor``; ``Parameter``
        when the file saved one), ``OrderedDict``/dict/list/tuple, str/int/float/bool/None,
        ``torch.device``, and NumPy scalars (``numpy.float64`` ...) decoded in C from their raw
        bytes with the NumPy C API, exactly as ``torch.load`` would return them.

    Raises:
        nnunet_export.CheckpointError: the file cannot be opened (its ``__cause__`` is the
            FileNotFoundError / PermissionError ...), is a directory or empty, not a torch.save ZIP file, truncated, corrupt (CRC),
            compressed entries, legacy or big-endian format, malformed pickle, missing key or
            storage, tensor outside its storage. The message names the file and the place.
        nnunet_export.UnsafeCheckpointError: a requested key needs a global outside the
            allowlist (the message names it and the key path); nothing was constructed.
        TypeError: ``keys`` is a single str or holds something other than str.
        ValueError: ``threads`` is not None or an int >= 1.

    Example:
        >>> ckpt = read_checkpoint("fold_0/checkpoint_final.pth")  # doctest: +SKIP
        >>> net.load_state_dict(ckpt["network_weights"])  # doctest: +SKIP
    """
    return _core.read_checkpoint(os.fspath(path), keys, bool(verify_crc), _factory, bool(copy), threads)
