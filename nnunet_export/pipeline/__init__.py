"""nnU-Net's whole prediction (preprocessing, sliding window, fold ensemble, export back to the
image's geometry) in one scriptable module (:class:`Pipeline`)."""
from .build import build_pipeline
from .errors import PipelineInputError, PipelineSettingsError
from .module import Pipeline

__all__ = ["Pipeline", "PipelineInputError", "PipelineSettingsError", "build_pipeline"]
