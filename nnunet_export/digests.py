"""Fingerprints of a fold's weights: the SHA-256 stored in every export's metadata."""
from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import Mapping, Sequence

import torch

# Tensors at least this large are hashed on worker threads (hashlib releases the GIL while it
# hashes); smaller ones are not worth a hand-off.
_PARALLEL_BYTES = 1 << 20


def _tensor_bytes(tensor: torch.Tensor):
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    # A byte view works for every dtype, bfloat16 included (numpy has no bfloat16).
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data if tensor.numel() else b""


def _sha256_hex(data) -> str:
    return hashlib.sha256(data).hexdigest()


def weights_sha256(state_dict: Mapping[str, torch.Tensor], max_workers: int = 1) -> str:
    """SHA-256 of a state dict, independent of key order and of storage layout.

    The digest is the SHA-256 of, for every key in sorted order: the key, its dtype, its shape
    and the SHA-256 of its values in C-contiguous order. The values of a key that is the same
    view of the same storage as an earlier key (dna names every encoder weight four times) are
    hashed once and their digest reused, so the result is the same whether aliases share
    storage or are copies. ``max_workers`` threads hash large tensors concurrently; the result
    does not depend on it.
    """
    entries: list[tuple[str, torch.Tensor, tuple]] = []
    unique: dict[tuple, torch.Tensor] = {}
    for key in sorted(state_dict):
        tensor = state_dict[key].detach()
        view = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(),
                tuple(tensor.stride()), tensor.dtype, tuple(tensor.shape))
        unique.setdefault(view, tensor)
        entries.append((key, tensor, view))

    values: dict[tuple, str] = {}
    big = [v for v, t in unique.items() if t.numel() * t.element_size() >= _PARALLEL_BYTES]
    if max_workers > 1 and len(big) > 1:
        with ThreadPoolExecutor(max_workers=min(max_workers, len(big))) as pool:
            values.update(zip(big, pool.map(lambda v: _sha256_hex(_tensor_bytes(unique[v])), big)))
    for view, tensor in unique.items():
        if view not in values:
            values[view] = _sha256_hex(_tensor_bytes(tensor))

    digest = hashlib.sha256()
    for key, tensor, view in entries:
        digest.update(f"{key}\0{str(tensor.dtype)}\0{tuple(tensor.shape)}\0{values[view]}\0".encode())
    return digest.hexdigest()


class FoldDigests(Sequence):
    """The SHA-256 of each fold's weights, computed on first use.

    Hashing is the largest single cost of loading (about 0.2 s per 100 MiB fold) and only an
    export or a caller that asks needs it. The state dicts held until then are the loaded
    module's own tensors (adopted from the checkpoint mapping), so waiting costs no memory.
    """

    def __init__(self, state_dicts: Sequence[Mapping[str, torch.Tensor]], max_workers: int = 1):
        self._state_dicts: list | None = list(state_dicts)
        self._max_workers = max_workers
        self._digests: tuple[str, ...] | None = None

    def _compute(self) -> tuple[str, ...]:
        if self._digests is None:
            assert self._state_dicts is not None
            self._digests = tuple(weights_sha256(sd, self._max_workers) for sd in self._state_dicts)
            self._state_dicts = None
        return self._digests

    def __getitem__(self, index):
        return self._compute()[index]

    def __len__(self) -> int:
        return len(self._digests) if self._digests is not None else len(self._state_dicts or ())

    def __eq__(self, other) -> bool:
        return tuple(self) == tuple(other) if isinstance(other, Sequence) else NotImplemented

    __hash__ = None  # mutable cache: not hashable

    def __repr__(self) -> str:
        return repr(self._digests) if self._digests is not None else f"<{len(self)} SHA-256 digests, not computed yet>"
