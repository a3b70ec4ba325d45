"""Dotted class names found in plans.json, mapped to the torch classes (and residual blocks) built.

nnU-Net resolves these names with ``pydoc.locate``, which imports whatever a plans file names.
Here the C core (``_core.check_arch_kwargs``) has already checked every name, keyword and value
against its allowlist before anything is converted; this module only maps the accepted names to
classes from the fixed tables below and never imports anything a plans file names.
"""
from typing import Any, Dict, Optional, Tuple

from torch import nn

from .blocks import BasicBlockD, BottleneckD

__all__ = ["CONV_DIMS", "OPS", "BLOCKS", "to_class", "to_name"]

# Spatial dimension of each convolution (kernel sizes and strides have one entry per axis).
CONV_DIMS: Dict[type, int] = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
_TORCH_OPS: Tuple[type, ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.LeakyReLU, nn.ReLU, nn.ELU, nn.GELU, nn.PReLU, nn.SiLU,
)
# The spellings nnU-Net writes: `cls.__module__ + '.' + cls.__name__` (planners, BN trainer,
# old-plans conversion) and the public alias `torch.nn.X` (e.g. "torch.nn.LeakyReLU").
OPS: Dict[str, type] = {
    **{f"{cls.__module__}.{cls.__name__}": cls for cls in _TORCH_OPS},
    **{f"torch.nn.{cls.__name__}": cls for cls in _TORCH_OPS},
}
# Residual blocks live in dna, not torch: only dna's own dotted names map to our twins.
BLOCKS: Dict[str, type] = {
    "dynamic_network_architectures.building_blocks.residual.BasicBlockD": BasicBlockD,
    "dynamic_network_architectures.building_blocks.residual.BottleneckD": BottleneckD,
}
_BLOCK_NAMES: Dict[type, str] = {cls: name for name, cls in BLOCKS.items()}


def to_name(value: Any) -> Any:
    """A class given in hand-written arch_kwargs as the dotted name plans.json would hold (for
    the C check, which sees JSON); every other value unchanged."""
    if isinstance(value, type):
        return _BLOCK_NAMES.get(value, f"{value.__module__}.{value.__name__}")
    return value


def to_class(value: Optional[str]) -> Optional[type]:
    """The class of a name ``_core.check_arch_kwargs`` accepted (None stays None)."""
    if value is None:
        return None
    return OPS[value] if value in OPS else BLOCKS[value]
