"""nnunet_export: take trained nnU-Net v2 models into production.

The C core (``nnunet_export._core``) reads checkpoints without executing anything and parses
plans/dataset JSON; this package composes it with torch.
"""
from ._core import (
    CheckpointError,
    ExportError,
    PlansError,
    UnsafeCheckpointError,
    WeightsMismatchError,
    __version__,
)
from .checkpoint import read_checkpoint

__all__ = [
    "CheckpointError",
    "ExportError",
    "PlansError",
    "UnsafeCheckpointError",
    "WeightsMismatchError",
    "__version__",
    "read_checkpoint",
]
