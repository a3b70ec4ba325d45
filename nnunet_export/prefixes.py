"""Wrappers added by torch.compile and DistributedDataParallel, removed from modules and keys."""
from __future__ import annotations

from typing import Mapping, TypeVar

import torch

from ._core import WeightsMismatchError

# Prefixes a compiled (OptimizedModule) or DDP-wrapped network adds to every state-dict key.
WRAPPER_PREFIXES = ("_orig_mod.", "module.")

T = TypeVar("T")


def unwrap_module(network: torch.nn.Module) -> torch.nn.Module:
    """Returns the module inside any nesting of ``torch.compile`` and DDP/DataParallel wrappers."""
    seen = 0
    while True:
        inner = getattr(network, "_orig_mod", None)
        if isinstance(inner, torch.nn.Module):
            network = inner
        elif isinstance(network, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            network = network.module
        else:
            return network
        seen += 1
        if seen > 16:  # a wrapper cycle would otherwise loop forever
            raise WeightsMismatchError("module wrappers nest more than 16 deep")


def strip_key(key: str) -> str:
    """Removes every leading wrapper prefix (``_orig_mod.``, ``module.``, in any combination)."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                changed = True
    return key


def strip_state_dict_prefixes(state_dict: Mapping[str, T]) -> dict[str, T]:
    """Returns the state dict with wrapper prefixes removed, refusing keys that would collide."""
    result: dict[str, T] = {}
    for key, value in state_dict.items():
        clean = strip_key(key)
        if clean in result:
            raise WeightsMismatchError(
                f"state dict keys {key!r} and another key both become {clean!r} once wrapper "
                "prefixes are removed"
            )
        result[clean] = value
    return result
