"""Building a Pipeline from a loaded model: settings checked, mirroring combinations and the
Gaussian computed once, each fold's network shared (no weight copies)."""
from __future__ import annotations

from typing import Any, List

import torch

from ..architectures import EnsembleModule
from ..model_info import ModelInfo
from .errors import PipelineSettingsError
from .export_prediction import PredictionExport
from .gaussian import compute_gaussian
from .module import Pipeline
from .normalization import NORMALIZATION_SCHEMES
from .preprocessing import Preprocessing
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
# The resampling functions whose arithmetic the pipeline reproduces bit for bit.
RESAMPLING_FUNCTIONS = ("resample_data_or_seg_to_shape",)

kResamplingError = (
    "{source}: configuration {configuration!r} resamples its {target} with {function!r}; the pipeline "
    "reproduces {supported} only, so preprocess/forward are unavailable (predict_logits works)"
)
kSchemeError = (
    "{source}: configuration {configuration!r} normalizes channel {channel} with {scheme!r}, which the "
    "pipeline does not know (it knows {known}), so preprocess/forward are unavailable (predict_logits works)"
)
kCascadeError = (
    "configuration {configuration!r} is a cascade stage: it takes the previous stage's segmentation, "
    "which preprocess/forward do not produce yet; predict_logits takes the preprocessed image channels "
    "plus one channel per foreground label"
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


def _image_path_error(info: ModelInfo) -> str:
    """Why preprocess/forward cannot run for this model ("" when they can)."""
    config = info.config
    source = f"{info.model_dir}/plans.json"
    if config.previous_stage is not None:
        return kCascadeError.format(configuration=config.configuration)
    for target in ("data", "probabilities"):
        function = config.resampling[target]["function"]
        if function not in RESAMPLING_FUNCTIONS:
            return kResamplingError.format(source=source, configuration=config.configuration, target=target,
                                           function=function, supported=", ".join(RESAMPLING_FUNCTIONS))
    for channel, scheme in enumerate(config.normalization_schemes):
        if scheme not in NORMALIZATION_SCHEMES:
            return kSchemeError.format(source=source, configuration=config.configuration, channel=channel,
                                       scheme=scheme, known=", ".join(NORMALIZATION_SCHEMES))
    return ""


def _intensities(config) -> List[List[float]]:
    """[mean, std, percentile_00_5, percentile_99_5] per channel (zeros where the plans have none:
    only CTNormalization reads them, and the plans reader requires them there)."""
    keys = ("mean", "std", "percentile_00_5", "percentile_99_5")
    props = config.foreground_intensity_properties_per_channel
    return [[float(props.get(str(c), {}).get(k, 0.0)) for k in keys] for c in range(len(config.normalization_schemes))]


def build_preprocessing(config) -> Preprocessing:
    """The preprocessing module of a configuration (ModelConfig)."""
    data = config.resampling["data"]
    return Preprocessing(
        transpose_forward=list(config.transpose_forward), target_spacing=[float(s) for s in config.spacing],
        num_channels=len(config.normalization_schemes), schemes=list(config.normalization_schemes),
        use_mask_for_norm=[bool(m) for m in config.use_mask_for_norm], intensities=_intensities(config),
        order=int(data["order"]), order_z=int(data["order_z"]), force_separate_z=data["force_separate_z"],
        anisotropy_threshold=float(data["separate_z_anisotropy_threshold"]))


def build_prediction_export(config) -> PredictionExport:
    """The export back to the image's geometry of a configuration (ModelConfig)."""
    probabilities = config.resampling["probabilities"]
    regions_class_order = list(config.regions_class_order or []) if config.has_regions else []
    return PredictionExport(
        transpose_forward=list(config.transpose_forward), transpose_backward=list(config.transpose_backward),
        target_spacing=[float(s) for s in config.spacing], order=int(probabilities["order"]),
        order_z=int(probabilities["order_z"]), force_separate_z=probabilities["force_separate_z"],
        anisotropy_threshold=float(probabilities["separate_z_anisotropy_threshold"]),
        num_heads=int(config.num_output_channels), regions_class_order=regions_class_order,
        wide_labels=len(config.foreground_labels) >= 255)


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
    image_path_error = _image_path_error(info)
    settings = {"tile_step_size": float(tile_step_size), "use_gaussian": bool(use_gaussian),
                "use_mirroring": bool(use_mirroring), "mode": mode, "folds": len(networks),
                "preprocessing": image_path_error or _preprocessing_summary(config)}
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
        preprocessing=build_preprocessing(config),
        export=build_prediction_export(config),
        image_path_error=image_path_error,
    ).eval()


def _preprocessing_summary(config) -> dict:
    """What the exported file's preprocess/forward do, for its metadata."""
    return {"transpose_forward": list(config.transpose_forward), "spacing": list(config.spacing),
            "normalization_schemes": list(config.normalization_schemes),
            "use_mask_for_norm": list(config.use_mask_for_norm),
            "resampling": {k: dict(v) for k, v in config.resampling.items() if k != "seg"}}


__all__ = ["MODES", "RESAMPLING_FUNCTIONS", "build_pipeline", "build_prediction_export", "build_preprocessing"]
