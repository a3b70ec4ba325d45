"""Explicit allowlist mapping the dotted class names found in plans.json to torch classes.

nnU-Net resolves these names with ``pydoc.locate``, which imports whatever a plans file names.
Plans come from strangers, so this module only ever returns classes from the fixed tables below,
and only accepts constructor keywords whose names and value types are listed for that class
(no ``device``/``dtype`` or other surprises reach a torch constructor).
"""
import math
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from torch import nn

from .._core import PlansError
from .blocks import BasicBlockD, BottleneckD
from .errors import UnsupportedArchitectureError

__all__ = [
    "CONV_OPS",
    "NORM_OPS",
    "DROPOUT_OPS",
    "NONLINS",
    "BLOCKS",
    "resolve_op",
    "resolve_block",
    "conv_dim",
    "validate_op_kwargs",
]

kUnsupportedOpError = "arch_kwargs[{key!r}] = {value!r} is not supported; allowed: {allowed}"
kUnsupportedOpKwargError = "arch_kwargs[{key!r}] has keyword {sub!r}, which {op} does not accept here; allowed: {allowed}"
kBadOpKwargError = "arch_kwargs[{key!r}][{sub!r}] must be {what}, got {value!r}"
kBadOpKwargsTypeError = "arch_kwargs[{key!r}] must be a dict of keyword arguments or None, got {value!r}"


def _names(cls: type) -> Tuple[str, ...]:
    # The spellings nnU-Net writes: `cls.__module__ + '.' + cls.__name__` (planners, BN trainer,
    # old-plans conversion) and the public alias `torch.nn.X` (e.g. "torch.nn.LeakyReLU").
    return (f"{cls.__module__}.{cls.__name__}", f"torch.nn.{cls.__name__}")


# dimension of each allowed op; None means "works for any dimension".
CONV_OPS: Dict[type, int] = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
NORM_OPS: Dict[type, int] = {
    nn.InstanceNorm1d: 1, nn.InstanceNorm2d: 2, nn.InstanceNorm3d: 3,
    nn.BatchNorm1d: 1, nn.BatchNorm2d: 2, nn.BatchNorm3d: 3,
}
# Dropout is the identity in eval mode, so its nominal dimension does not matter for inference.
DROPOUT_OPS: Dict[type, Optional[int]] = {nn.Dropout: None, nn.Dropout1d: None, nn.Dropout2d: None, nn.Dropout3d: None}
NONLINS: Dict[type, Optional[int]] = {
    nn.LeakyReLU: None, nn.ReLU: None, nn.ELU: None, nn.GELU: None, nn.PReLU: None, nn.SiLU: None,
}
# Residual blocks live in dna, not torch: only dna's own dotted names map to our twins.
BLOCKS: Dict[str, type] = {
    "dynamic_network_architectures.building_blocks.residual.BasicBlockD": BasicBlockD,
    "dynamic_network_architectures.building_blocks.residual.BottleneckD": BottleneckD,
}


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_positive_number(v: Any) -> bool:
    return _is_number(v) and v > 0


def _is_probability(v: Any) -> bool:
    return _is_number(v) and 0.0 <= v <= 1.0


def _is_optional_probability(v: Any) -> bool:
    return v is None or _is_probability(v)


def _is_positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _is_gelu_approximation(v: Any) -> bool:
    return v in ("none", "tanh")


_Check = Tuple[Callable[[Any], bool], str]
_BOOL: _Check = (_is_bool, "true or false")
_NUMBER: _Check = (_is_number, "a finite number")
_NORM_KWARGS: Dict[str, _Check] = {
    "eps": (_is_positive_number, "a positive number"),
    "momentum": (_is_optional_probability, "a number in [0, 1] or null"),
    "affine": _BOOL,
    "track_running_stats": _BOOL,
}
_DROPOUT_KWARGS: Dict[str, _Check] = {"p": (_is_probability, "a number in [0, 1]"), "inplace": _BOOL}
OP_KWARGS: Dict[type, Dict[str, _Check]] = {
    **{cls: _NORM_KWARGS for cls in NORM_OPS},
    **{cls: _DROPOUT_KWARGS for cls in DROPOUT_OPS},
    nn.LeakyReLU: {"negative_slope": _NUMBER, "inplace": _BOOL},
    nn.ReLU: {"inplace": _BOOL},
    nn.ELU: {"alpha": _NUMBER, "inplace": _BOOL},
    nn.GELU: {"approximate": (_is_gelu_approximation, '"none" or "tanh"')},
    nn.PReLU: {"num_parameters": (_is_positive_int, "a positive integer"), "init": _NUMBER},
    nn.SiLU: {"inplace": _BOOL},
}


def resolve_op(key: str, value: Any, table: Mapping[type, Any], allow_none: bool) -> Optional[type]:
    """Map a plans value (dotted name, allowlisted class, or None) to an allowlisted torch class.

    Args:
        key: the arch_kwargs key, for the error message (e.g. ``"norm_op"``).
        value: the dotted name from plans.json, an allowlisted class object, or None.
        table: one of CONV_OPS, NORM_OPS, DROPOUT_OPS, NONLINS.
        allow_none: whether None (no such layer) is valid for this key.

    Returns:
        The torch class, or None when ``value`` is None and that is allowed.

    Raises:
        UnsupportedArchitectureError: the name or class is not in ``table``.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, type) and value in table:
        return value
    if isinstance(value, str):
        for cls in table:
            if value in _names(cls):
                return cls
    allowed = [_names(cls)[0] for cls in table] + (["None"] if allow_none else [])
    raise UnsupportedArchitectureError(kUnsupportedOpError.format(key=key, value=value, allowed=", ".join(allowed)))


def resolve_block(value: Any) -> type:
    """Map arch_kwargs['block'] (dna's dotted name, or our class) to BasicBlockD/BottleneckD."""
    if value in (BasicBlockD, BottleneckD):
        return value
    if isinstance(value, str) and value in BLOCKS:
        return BLOCKS[value]
    raise UnsupportedArchitectureError(
        kUnsupportedOpError.format(key="block", value=value, allowed=", ".join(BLOCKS))
    )


def conv_dim(conv_op: type) -> int:
    """Spatial dimension (1, 2 or 3) of an allowlisted convolution class."""
    return CONV_OPS[conv_op]


def validate_op_kwargs(key: str, op: Optional[type], kwargs: Any) -> Dict[str, Any]:
    """Check the keyword arguments given for ``op`` against its allowlist; return a fresh dict.

    Args:
        key: the arch_kwargs key holding the kwargs (e.g. ``"norm_op_kwargs"``).
        op: the resolved class, or None (then kwargs are ignored, as dna ignores them).
        kwargs: dict from plans.json, or None (meaning no keywords).

    Raises:
        PlansError: kwargs is not a dict, or a value has the wrong type or range.
        UnsupportedArchitectureError: a keyword is not accepted for this op.
    """
    if kwargs is None:
        return {}
    if not isinstance(kwargs, Mapping):
        raise PlansError(kBadOpKwargsTypeError.format(key=key, value=kwargs))
    if op is None:
        return {}
    allowed = OP_KWARGS[op]
    out: Dict[str, Any] = {}
    for sub, v in kwargs.items():
        if sub not in allowed:
            raise UnsupportedArchitectureError(
                kUnsupportedOpKwargError.format(key=key, sub=sub, op=op.__name__, allowed=", ".join(allowed))
            )
        check, what = allowed[sub]
        if not check(v):
            raise PlansError(kBadOpKwargError.format(key=key, sub=sub, what=what, value=v))
        out[sub] = v
    return out

