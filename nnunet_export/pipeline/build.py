"""Building a Pipeline from a loaded model: settings checked, mirroring combinations and the
Gaussian computed once, each fold's network shared (no weight copies)."""
from __future__ import annotations

from typing import Any, List

import torch

from ..architectures import EnsembleModule
from ..model_info import ModelInfo
from .errors import PipelineSettingsError
from .gaussian import compute_gaussian
from .module import Pipeline
from .sliding_window import mirror_combinations

MODES = ("exact", "fast")

kStepError = "tile_step_size must be a number in (0, 1], got {value!r}"
kModeError = "mode must be 'exact' or 'fast', got {value!r}"
kNoMirroringError = (
    "use_mirroring=True, but {source} was trained without mirroring (inference_allowed_mirroring_axes "
    "is {axes!r}): pass use_mirroring=False"
)
kDeviceError = (
    "the pipeline runs on the CPU only for now: the model lives on {device}, where nnU-Net runs the "
    "network under autocast (fp16), which this pipeline does not reproduce yet; load the model with "
    "device='cpu'"
)
kMirrorAxisError = "inference_allowed_mirroring_axes {axes!r} of {source} name axes a {dim}-D patch does not have"


def _check_settings(tile_step_size: Any, mode: Any) -> None:
    if isinstance(tile_step_size, bool) or not isinstance(tile_step_size, (int, float)) \
            or not 0 < tile_step_size <= 1:
        raise PipelineSettingsError(kStepError.format(value=tile_step_size))
    if mode not in MODES:
        raise PipelineSettingsError(kModeError.format(value=mode))


def _mirror_axes(info: ModelInfo, use_mirroring: bool, dim: int) -> List[List[int]]:
    if not use_mirroring:
        return []
    axes = info.mirroring_axes
    source = info.checkpoint_paths[0] if info.checkpoint_paths else info.model_dir
    if not axes:  # nnU-Net skips mirroring for None and fails on an empty tuple
        raise PipelineSettingsError(kNoMirroringError.format(source=source, axes=axes))
    if max(axes) > dim - 1 or min(axes) < 0:
        raise PipelineSettingsError(kMirrorAxisError.format(axes=axes, source=source, dim=dim))
    return mirror_combinations(list(axes))


def build_pipeline(network: torch.nn.Module, info: ModelInfo, *, tile_step_size: float = 0.5,
                   use_gaussian: bool = True, use_mirroring: bool = True, mode: str = "exact") -> Pipeline:
    """The prediction pipeline of a loaded model; see :meth:`nnunet_export.NnUNetModel.pipeline`."""
    _check_settings(tile_step_size, mode)
    config = info.config
    patch = [int(p) for p in config.patch_size]
    networks = list(network.networks) if isinstance(network, EnsembleModule) else [network]
    device = next(iter(networks[0].parameters()), torch.empty(0)).device
    if device.type != "cpu":
        raise PipelineSettingsError(kDeviceError.format(device=device))
    settings = {"tile_step_size": float(tile_step_size), "use_gaussian": bool(use_gaussian),
                "use_mirroring": bool(use_mirroring), "mode": mode, "folds": len(networks)}
    return Pipeline(
        networks=networks,
        gaussian=compute_gaussian(patch).to(device),
        patch_size=patch,
        mirror_axes=_mirror_axes(info, bool(use_mirroring), len(patch)),
        tile_step_size=float(tile_step_size),
        use_gaussian=bool(use_gaussian),
        exact=mode == "exact",
        num_input_channels=int(config.num_input_channels),
        num_heads=int(config.num_output_channels),
        slice_by_slice=len(patch) == 2,
        cascade=config.previous_stage is not None,
        info=info,
        settings=settings,
    ).eval()


__all__ = ["MODES", "build_pipeline"]
