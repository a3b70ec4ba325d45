"""nnunet_export: take trained nnU-Net v2 models into production.

The C core (``nnunet_export._core``) reads checkpoints without executing anything and parses
plans/dataset JSON; this package composes it with torch.
"""
from .model_config import ModelConfig, read_model_config
from ._core import (
    CheckpointError,
    ExportError,
    PlansError,
    UnsafeCheckpointError,
    WeightsMismatchError,
    __version__,
)
from . import _torch_abi  # noqa: F401  (binds libtorch's stable C ABI once, at import)
from .checkpoint import read_checkpoint

__all__ = [
    "CheckpointError",
    "ExportError",
    "ModelConfig",
    "PlansError",
    "UnsafeCheckpointError",
    "WeightsMismatchError",
    "read_model_config",
    "__version__",
    "read_checkpoint",
]
