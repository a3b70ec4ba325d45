"""Further folds of one model without building their networks again.

All folds of a model folder share one architecture, so once fold 0's network is built, checked
and loaded, the other folds get copies of its module tree that hold their own tensors. Building
a 3d_fullres network (module constructors, default init on the meta device) costs tens of
milliseconds and ``copy.deepcopy`` about as much; copying the tree costs about one.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, Mapping

import torch
from torch import nn

from .weights import DEFAULT_SOURCE, checked_weights

__all__ = ["clone_with_weights"]


def clone_with_weights(template: nn.Module, state_dict: Mapping[str, Any], source: str = DEFAULT_SOURCE) -> nn.Module:
    """A network like ``template`` holding ``state_dict``'s tensors instead of its own.

    The copy has new module objects of the same classes with the same settings, training flags
    and hooks; modules that ``template`` reaches by two paths (dna's ``decoder.encoder``) stay
    one module. ``state_dict`` is checked exactly as :func:`load_weights` checks it (keys,
    shapes, aliases) and its tensors are adopted without a copy, as parameters with
    ``template``'s ``requires_grad``. Meant for this package's own architectures, whose modules
    keep nothing but settings, submodules, parameters and buffers.

    Args:
        template: a loaded network (e.g. fold 0's, after :func:`prepare_for_inference`).
        state_dict: another fold's weights, keys exactly as ``template.state_dict()``.
        source: where the weights came from, named in error messages.

    Returns:
        The new network; ``template`` is unchanged.

    Raises:
        WeightsMismatchError: missing or unexpected keys, a shape mismatch, a value that is not
            a tensor, or inconsistent aliases.

    Example:
        >>> fold1 = clone_with_weights(fold0, read_checkpoint(path)["network_weights"])  # doctest: +SKIP
    """
    own = template.state_dict(keep_vars=True)
    replacements: Dict[int, torch.Tensor] = {}
    for key, value in checked_weights(own, state_dict, strict=True, source=source).items():
        old = own[key]
        if isinstance(old, nn.Parameter):
            value = nn.Parameter(value, requires_grad=old.requires_grad)
        replacements[id(old)] = value
    return _clone_module(template, replacements, {})


def _clone_module(module: nn.Module, replacements: Dict[int, torch.Tensor], memo: Dict[int, nn.Module]) -> nn.Module:
    done = memo.get(id(module))
    if done is not None:
        return done
    clone = object.__new__(type(module))
    memo[id(module)] = clone
    state = {}
    for name, value in module.__dict__.items():
        if name in ("_parameters", "_buffers"):
            state[name] = {key: None if t is None else _replacement(module, key, t, replacements)
                           for key, t in value.items()}
        elif name == "_modules":
            state[name] = {key: None if m is None else _clone_module(m, replacements, memo) for key, m in value.items()}
        else:
            state[name] = _clone_value(value, replacements, memo)
    clone.__dict__.update(state)
    return clone


def _replacement(module: nn.Module, key: str, tensor: torch.Tensor, replacements: Dict[int, torch.Tensor]) -> torch.Tensor:
    found = replacements.get(id(tensor))
    if found is not None:
        return found
    if key in module._buffers:
        return tensor.clone()  # a non-persistent buffer is in no state dict: each fold its own
    # Every parameter is in the template's state dict, which checked_weights covered.
    raise AssertionError(f"{type(module).__name__}.{key} is missing from the checked weights")


# Values shared as they are: immutable, so one object can serve every fold.
_SHARED_TYPES = frozenset({bool, int, float, str, type(None), torch.dtype, torch.device, type})


def _clone_value(value: Any, replacements: Dict[int, torch.Tensor], memo: Dict[int, nn.Module]) -> Any:
    # Containers are copied so hooks or settings added to one fold later stay with that fold;
    # scalars, strings, dtypes and classes are shared. Type checks first: this runs for every
    # attribute of every module (hook dicts included), and isinstance on torch types is slow.
    kind = type(value)
    if kind in _SHARED_TYPES:
        return value
    if kind is dict or kind is OrderedDict:
        if not value:
            return kind()
        return kind((k, _clone_value(v, replacements, memo)) for k, v in value.items())
    if kind is list:
        return [_clone_value(v, replacements, memo) for v in value]
    if kind is set:
        return set(value)
    if kind is tuple:
        return tuple(_clone_value(v, replacements, memo) for v in value)
    if isinstance(value, nn.Module):
        return _clone_module(value, replacements, memo)
    if isinstance(value, torch.Tensor):
        return replacements.get(id(value), value)
    return value
