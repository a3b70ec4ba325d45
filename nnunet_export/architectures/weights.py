"""Weights into a built network: the one check that a state dict fits it, loading, and the
switch to inference mode."""
from typing import Any, Dict, List, Mapping

import torch
from torch import nn

from .._core import WeightsMismatchError
from .decoder import UNetDecoder, deep_supervision_enabled

__all__ = ["checked_weights", "load_weights", "prepare_for_inference"]

kWeightsDoNotFitError = "the weights in {source} do not fit the network: {details}"
kAliasMismatchError = (
    "the weights in {source}: entries {a!r} and {b!r} name the same tensor in the network but hold "
    "different values"
)
kStillMetaError = (
    "the weights in {source}: after loading, {n} tensor(s) have no data (not in the state dict), "
    "e.g. {keys}"
)
#: What a state dict is called in messages when the caller does not name its file.
DEFAULT_SOURCE = "the state dict"

_SHOW = 5  # keys listed per category in a message; the rest are counted


def _listing(title: str, items: List[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    more = f" (+{len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    return f"{len(items)} {title}: {shown}{more}"


def _misfits(own: Mapping[str, torch.Tensor], state_dict: Mapping[str, Any], strict: bool) -> List[str]:
    """One listing per kind of misfit (missing, unexpected, not a tensor, wrong shape)."""
    missing = [k for k in own if k not in state_dict] if strict else []
    unexpected = [k for k in state_dict if k not in own] if strict else []
    not_tensors, mis_shaped = [], []
    for key, target in own.items():
        if key not in state_dict:
            continue
        value = state_dict[key]
        if not isinstance(value, torch.Tensor):
            not_tensors.append(f"{key} is a {type(value).__name__}")
        elif value.shape != target.shape:
            mis_shaped.append(f"{key} has {tuple(value.shape)}, expected {tuple(target.shape)}")
    return [
        _listing(title, items)
        for title, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("values that are not tensors", not_tensors),
            ("keys with the wrong shape", mis_shaped),
        )
        if items
    ]


def checked_weights(own: Mapping[str, torch.Tensor], state_dict: Mapping[str, Any],
                    strict: bool = True, source: str = DEFAULT_SOURCE) -> Dict[str, torch.Tensor]:
    """The entries of ``state_dict`` to write into a network whose ``state_dict(keep_vars=True)``
    is ``own``: one key per underlying tensor (dna's state dict names every encoder weight
    four times), after checking keys, shapes and that aliases carry equal values.

    This is the package's one check that weights fit a network; every loader goes through it.

    Args:
        own: the network's ``state_dict(keep_vars=True)``.
        state_dict: the weights to load.
        strict: require the key sets to be equal.
        source: where the weights came from (a checkpoint path), for the messages.

    Raises:
        WeightsMismatchError: lists every missing, unexpected, non-tensor and mis-shaped key at
            once, naming ``source``; or two aliases with different values.
    """
    misfits = _misfits(own, state_dict, strict)
    if misfits:
        raise WeightsMismatchError(kWeightsDoNotFitError.format(source=source, details="; ".join(misfits)))
    first_key_of: Dict[int, str] = {}
    for key, target in own.items():
        if key not in state_dict:
            continue
        value = state_dict[key]
        # Aliases are one tensor here; loading different values into them would silently keep
        # whichever came last, so refuse. Views of one storage (what dna checkpoints hold) pass
        # without comparing data.
        first = first_key_of.setdefault(id(target), key)
        if first != key:
            ref = state_dict[first]
            same_view = (
                ref.device == value.device and ref.dtype == value.dtype and ref.stride() == value.stride()
                and ref.data_ptr() == value.data_ptr()
            )
            if not same_view and not torch.equal(ref, value.to(ref.device, ref.dtype)):
                raise WeightsMismatchError(kAliasMismatchError.format(source=source, a=first, b=key))
    return {key: state_dict[key] for key in own if key in state_dict and first_key_of[id(own[key])] == key}


def load_weights(module: nn.Module, state_dict: Mapping[str, Any], strict: bool = True,
                 source: str = DEFAULT_SOURCE) -> nn.Module:
    """Load a dynamic-network-architectures state dict (e.g. ``checkpoint['network_weights']``).

    Before anything is written, the keys and shapes are checked, and every group of alias keys
    (``...conv.weight`` / ``...all_modules.0.weight`` / ``decoder.encoder.*``, which are one
    tensor in the network) must carry equal values; each tensor is then written once. If the
    network lives on the meta device (``build_network(..., device="meta")``) the state dict's
    tensors are adopted without a copy (``assign=True``, so the network then shares memory with
    ``state_dict``); otherwise they are copied into the network's own storage.

    Args:
        module: a network from :func:`build_network` (or any module).
        state_dict: mapping of key -> tensor, keys exactly as dna's ``state_dict()`` (no
            ``module.`` / ``_orig_mod.`` prefixes).
        strict: require the key sets to be equal.
        source: where the weights came from, named in error messages (e.g. the checkpoint path).

    Returns:
        ``module``, for chaining.

    Raises:
        WeightsMismatchError: missing or unexpected keys (strict), a shape mismatch, a value that
            is not a tensor, inconsistent aliases, or tensors left without data.
    """
    own = module.state_dict(keep_vars=True)
    once = checked_weights(own, state_dict, strict, source)
    on_meta = any(t.is_meta for t in own.values())
    module.load_state_dict(once, strict=False, assign=on_meta)
    if on_meta:
        left = [k for k, t in module.state_dict(keep_vars=True).items() if t.is_meta]
        if left:
            shown = ", ".join(repr(k) for k in left[:_SHOW]) + (", ..." if len(left) > _SHOW else "")
            raise WeightsMismatchError(kStillMetaError.format(source=source, n=len(left), keys=shown))
    return module


def prepare_for_inference(module: nn.Module) -> nn.Module:
    """Switch a network (or an ensemble of them) to inference: eval mode, no gradients, no deep supervision.

    Call it before ``torch.jit.script``: under TorchScript, deep supervision is compiled in as
    a constant and cannot be switched off afterwards.

    Args:
        module: a network from :func:`build_network`, an :class:`EnsembleModule`, or any module
            containing them.

    Returns:
        ``module``, for chaining.

    Raises:
        ValueError: ``module`` contains a scripted network compiled with deep supervision on.

    Example:
        >>> net = prepare_for_inference(net)  # doctest: +SKIP
        >>> scripted = torch.jit.script(net)  # doctest: +SKIP
    """
    for m in module.modules():
        if isinstance(m, UNetDecoder):
            m.deep_supervision = False
    if deep_supervision_enabled(module):  # only a scripted decoder can still have it on
        raise ValueError(
            "a scripted network was compiled with deep supervision on; call prepare_for_inference "
            "before torch.jit.script"
        )
    module.eval()
    module.requires_grad_(False)
    return module
