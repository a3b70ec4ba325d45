"""Checks a fold's state dict against the network it must fill, and fingerprints it."""
from __future__ import annotations

import hashlib
from typing import Mapping

import torch

from ._core import WeightsMismatchError

_SHOW = 5  # keys listed per category in an error message; the rest are counted


def _listing(title: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    more = f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return f"{len(keys)} {title}: {shown}{more}"


def check_state_dict_fits(
    expected: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor], source: str
) -> None:
    """Raises WeightsMismatchError listing missing, unexpected and mis-shaped keys, if any.

    ``expected`` is the network's own state dict; ``source`` names where the weights came from.
    """
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mis_shaped = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mis_shaped:
        parts = [
            _listing(title, keys)
            for title, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("keys with the wrong shape", mis_shaped),
            )
            if keys
        ]
        raise WeightsMismatchError(
            f"the weights in {source} do not fit the network built from the plans: "
            + "; ".join(parts)
        )


def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict, independent of key order and of storage layout.

    Hashes, for every key in sorted order: the key, its dtype, its shape and its values in
    C-contiguous order. Aliases (the same tensor under two keys) are hashed under each key, so
    the digest describes exactly what ``load_state_dict`` receives.
    """
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach()
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        tensor = tensor.contiguous()
        header = f"{key}\0{str(tensor.dtype)}\0{tuple(tensor.shape)}\0".encode()
        digest.update(header)
        # A byte view works for every dtype, bfloat16 included (numpy has no bfloat16).
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data if tensor.numel() else b"")
    return digest.hexdigest()
