"""nnunet_export: take trained nnU-Net v2 models into production.

The C core (``nnunet_export._core``) reads checkpoints without executing anything and parses
plans/dataset JSON; this package composes it with torch. Importing it never imports nnunetv2.

Example:
    >>> import nnunet_export
    >>> model = nnunet_export.load_complete(model_dir, folds=(0, 1, 2, 3, 4))  # doctest: +SKIP
    >>> print(model.to_torchscript("model.pt").table())  # doctest: +SKIP
"""
from ._core import (
    CheckpointError,
    ExportError,
    PlansError,
    UnsafeCheckpointError,
    WeightsMismatchError,
    __version__,
)
from . import _torch_abi  # noqa: F401  (binds libtorch's stable C ABI once, at import)
from .architectures import UnsupportedArchitectureError
from .atomic_write import OutputPathError
from .checkpoint import read_checkpoint
from .export import ExportReport, VerificationError, to_exported_program, to_torchscript
from .folds import ModelFolderError
from .loading import FoldMismatchError, load_complete
from .metadata import MetadataError, read_metadata
from .model import ModelInfo, NnUNetModel
from .model_config import ModelConfig, read_model_config
from .onnx_export import to_onnx
from .nnunet_patch import UnsupportedNnUNetError, complete, patch_nnunet, patched_nnunet, unpatch_nnunet
from .triton import write_triton_repository
from .pipeline import Pipeline, PipelineInputError, PipelineSettingsError
from .image_files import ImageFileError
from .predict import PredictError, PredictionSummary, predict

__all__ = [
    "CheckpointError",
    "ExportError",
    "ExportReport",
    "FoldMismatchError",
    "ImageFileError",
    "MetadataError",
    "ModelConfig",
    "ModelFolderError",
    "ModelInfo",
    "NnUNetModel",
    "OutputPathError",
    "Pipeline",
    "PipelineInputError",
    "PipelineSettingsError",
    "PlansError",
    "PredictError",
    "PredictionSummary",
    "UnsafeCheckpointError",
    "UnsupportedArchitectureError",
    "UnsupportedNnUNetError",
    "VerificationError",
    "WeightsMismatchError",
    "__version__",
    "complete",
    "load_complete",
    "patch_nnunet",
    "patched_nnunet",
    "predict",
    "read_checkpoint",
    "read_metadata",
    "read_model_config",
    "to_exported_program",
    "to_onnx",
    "to_torchscript",
    "unpatch_nnunet",
    "write_triton_repository",
]
