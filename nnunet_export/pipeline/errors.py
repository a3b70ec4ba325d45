"""Errors of the prediction pipeline."""
from .._core import ExportError


class PipelineInputError(ExportError):
    """The data given to a pipeline cannot be what nnU-Net predicts from (rank, channels, dtype,
    empty or NaN-only). Inside an exported file the same message arrives as torch.jit.Error."""


class PipelineSettingsError(ExportError):
    """A pipeline cannot be built with the settings asked for (tile step, mirroring, mode)."""
