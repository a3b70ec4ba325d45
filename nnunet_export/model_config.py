"""Resolved description of a trained nnU-Net model: plans.json + dataset.json, read by the C core.

The C core (``_core.read_plans``) parses and checks both files; this module finds them in a model
folder, picks the configuration, and wraps the result in :class:`ModelConfig`.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from . import _core
from ._core import PlansError
from .checkpoint import read_checkpoint
from .folds import fold_folders, resolve_model_dir

__all__ = ["ModelConfig", "model_config_from_json", "read_model_config"]

kNoConfigurationError = (
    "{model_dir}: no configuration given and {reason}; pass configuration= "
    "(for example one of: {available})"
)

# Preference order when the configuration comes from a checkpoint, as nnU-Net's predictor names them.
_CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_best.pth")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One configuration of a trained nnU-Net model, resolved as nnU-Net resolves it.

    Every field holds plain JSON types (str, int, float, bool, None, list, dict with str keys), so
    ``json.dumps(config.to_dict())`` always works; numbers keep the int/float type they had in the
    JSON files. Lists stand where nnU-Net has tuples (regions).

    Attributes:
        dataset_name: plans ``dataset_name``, e.g. ``"Dataset004_Hippocampus"``.
        plans_name: plans ``plans_name``, e.g. ``"nnUNetPlans"``.
        configuration: the configuration name, e.g. ``"3d_fullres"``.
        architecture: ``{"network_class_name", "arch_kwargs", "_kw_requires_import"}``; dotted
            names (conv_op, norm_op, ...) stay strings. Old plans (before nnU-Net 2.3) are converted
            as ConfigurationManager does.
        converted_from_old_plans: True when ``architecture`` was built from old plans keys.
        patch_size: patch size in voxels, one entry per axis.
        spacing: target spacing of this configuration, one entry per patch axis.
        num_dimensions: ``len(patch_size)`` (2 or 3): the axes mirroring can flip.
        batch_size: training batch size, or None when the plans do not say.
        transpose_forward: axis permutation applied before the network (plans level).
        transpose_backward: its inverse.
        normalization_schemes: one normalization class name per input channel.
        use_mask_for_norm: one bool per input channel.
        foreground_intensity_properties_per_channel: ``{"0": {"mean": ..., ...}, ...}``.
        channel_names: dataset.json ``channel_names`` (or legacy ``modality``).
        file_ending: dataset.json ``file_ending``, e.g. ``".nii.gz"``.
        labels: dataset.json ``labels``: name -> int, or name -> list of ints (regions).
        has_regions: LabelManager.has_regions (region-based training, sigmoid outputs).
        regions: LabelManager.foreground_regions (int or list per region), None without regions.
        regions_class_order: dataset.json ``regions_class_order`` or None.
        ignore_label: LabelManager.ignore_label or None.
        all_labels: LabelManager.all_labels (sorted distinct labels, ignore label excluded).
        foreground_labels: LabelManager.foreground_labels.
        num_input_channels: what determine_num_input_channels gives (a cascade stage adds one
            channel per foreground label).
        num_output_channels: LabelManager.num_segmentation_heads.
        previous_stage: configuration whose prediction this cascade stage takes, or None.
        next_stage: ConfigurationManager.next_stage_names (list) or None.
        resampling: ``{"data" | "seg" | "probabilities": {"function", "order", "order_z",
            "force_separate_z", "separate_z_anisotropy_threshold"}}``: the resampling function
            name (None when the plans have none) and its keyword arguments, nnU-Net's defaults
            filled in.
        image_reader_writer: plans ``image_reader_writer`` (e.g. ``"SimpleITKIO"``) or None.
    """

    dataset_name: str
    plans_name: str
    configuration: str
    architecture: Dict[str, Any]
    converted_from_old_plans: bool
    patch_size: List[int]
    spacing: List[float]
    num_dimensions: int
    batch_size: Optional[int]
    transpose_forward: List[int]
    transpose_backward: List[int]
    normalization_schemes: List[str]
    use_mask_for_norm: List[bool]
    foreground_intensity_properties_per_channel: Dict[str, Dict[str, float]]
    channel_names: Dict[str, str]
    file_ending: str
    labels: Dict[str, Union[int, List[int]]]
    has_regions: bool
    regions: Optional[List[Union[int, List[int]]]]
    regions_class_order: Optional[List[int]]
    ignore_label: Optional[int]
    all_labels: List[int]
    foreground_labels: List[int]
    num_input_channels: int
    num_output_channels: int
    previous_stage: Optional[str]
    next_stage: Optional[List[str]]
    resampling: Dict[str, Dict[str, Any]]
    image_reader_writer: Optional[str]

    def to_dict(self) -> Dict[str, Any]:
        """Returns a deep copy of all fields as a dict, ready for ``json.dumps``."""
        return dataclasses.asdict(self)


def _find_checkpoint(folds: List[Path]) -> Optional[Path]:
    for name in _CHECKPOINT_NAMES:
        for fold in folds:
            if (fold / name).is_file():
                return fold / name
    return None


def _available_configurations(plans_path: str) -> str:
    # Only for the error message: a broken plans file must not hide the real problem, which the
    # full read reports precisely once a configuration is given.
    try:
        return ", ".join(_core.plans_configurations(plans_path))
    except PlansError:
        return "see plans.json"


def _configuration_from_checkpoint(model_dir: str, folds: List[Path], plans_path: Path) -> str:
    """The configuration the checkpoint was trained with (init_args.configuration), read safely."""
    available = _available_configurations(plans_path)
    checkpoint = _find_checkpoint(folds)
    if checkpoint is None:
        reason = "no fold_*/checkpoint_final.pth or checkpoint_best.pth to take it from"
        raise PlansError(kNoConfigurationError.format(model_dir=model_dir, reason=reason, available=available))
    configuration = read_checkpoint(checkpoint, keys=["init_args"])["init_args"]["configuration"]
    if not isinstance(configuration, str):
        raise PlansError(f"{checkpoint}: init_args.configuration is not a string: {configuration!r}")
    return configuration


def read_model_config(model_dir: Union[str, os.PathLike], configuration: Optional[str] = None) -> ModelConfig:
    """Reads plans.json and dataset.json of a trained nnU-Net model into one ModelConfig.

    Args:
        model_dir: a trained model folder (``<Trainer>__<Plans>__<configuration>`` holding
            plans.json, dataset.json and fold_X folders), or one of its ``fold_X`` folders.
        configuration: configuration name in the plans, e.g. ``"3d_fullres"``. Default: the
            configuration the checkpoint (``fold_*/checkpoint_final.pth``, then
            ``checkpoint_best.pth``) was trained with.

    Returns:
        A frozen :class:`ModelConfig`; ``to_dict()`` gives its JSON-ready dict.

    Raises:
        ModelFolderError: ``model_dir`` does not exist or holds no plans.json (nor does its
            parent, for a ``fold_X`` folder).
        PlansError: dataset.json is missing, a file is not JSON (message with line:column), lacks a key or has a
            wrong value (message names the file and the key path), the configuration is unknown
            (message lists the available ones) or none was given and none can be found.

    Example:
        >>> import json, os, tempfile, nnunet_export
        >>> d = tempfile.mkdtemp()
        >>> arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        ...         "arch_kwargs": {"n_stages": 2, "features_per_stage": [32, 64],
        ...                         "conv_op": "torch.nn.modules.conv.Conv2d",
        ...                         "kernel_sizes": [[3, 3], [3, 3]], "strides": [[1, 1], [2, 2]],
        ...                         "n_conv_per_stage": [2, 2], "n_conv_per_stage_decoder": [2]},
        ...         "_kw_requires_import": ["conv_op"]}
        >>> plans = {"dataset_name": "Dataset001_Demo", "plans_name": "nnUNetPlans",
        ...          "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        ...          "foreground_intensity_properties_per_channel": {},
        ...          "configurations": {"2d": {"patch_size": [64, 64], "spacing": [1.0, 1.0],
        ...              "normalization_schemes": ["ZScoreNormalization"],
        ...              "use_mask_for_norm": [False], "architecture": arch}}}
        >>> dataset = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "tumour": 1},
        ...            "file_ending": ".nii.gz"}
        >>> for name, content in (("plans.json", plans), ("dataset.json", dataset)):
        ...     with open(os.path.join(d, name), "w") as f:
        ...         json.dump(content, f)
        >>> cfg = nnunet_export.read_model_config(d, "2d")
        >>> cfg.num_input_channels, cfg.num_output_channels, cfg.patch_size
        (1, 2, [64, 64])
    """
    plans_dir, fold_from_path = resolve_model_dir(model_dir)
    folds = [plans_dir / f"fold_{fold_from_path}"] if fold_from_path is not None else fold_folders(plans_dir)
    plans_path = plans_dir / "plans.json"
    if configuration is None:
        configuration = _configuration_from_checkpoint(os.fspath(model_dir), folds, plans_path)
    _check_configuration_type(configuration)
    return ModelConfig(**_core.read_plans(os.fspath(plans_path), os.fspath(plans_dir / "dataset.json"), configuration))


def _check_configuration_type(configuration: Any) -> None:
    if not isinstance(configuration, str):
        raise TypeError(f"configuration must be a str or None, not {type(configuration).__name__}")


def model_config_from_json(plans: bytes, dataset: bytes, configuration: str, *, source: str) -> ModelConfig:
    """A ModelConfig from plans and dataset JSON documents held in memory (e.g. a predictor's
    ``plans_manager.plans``), checked exactly as files of a model folder are.

    Args:
        plans: the plans document as JSON bytes.
        dataset: the dataset.json document as JSON bytes.
        configuration: configuration name in the plans.
        source: what holds the documents, named in error messages instead of a file path.

    Raises:
        PlansError: as :func:`read_model_config`, naming ``source``.
    """
    _check_configuration_type(configuration)
    return ModelConfig(**_core.read_plans(plans, dataset, configuration,
                                          plans_source=f"{source} plans", dataset_source=f"{source} dataset.json"))
