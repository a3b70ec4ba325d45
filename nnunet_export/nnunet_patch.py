"""Drop-in fixes for unchanged nnUNetPredictor scripts.

After ``patch_nnunet()``, ``nnUNetPredictor.initialize_from_trained_model_folder`` reads every
fold through the safe C reader, checks the folds against each other, removes wrapper prefixes,
and leaves ``predictor.network`` complete (fold 0's weights, eval mode, exportable with
``to_torchscript``); ``predict_logits_from_preprocessed_data`` restores torch's thread count even
when it raises and puts fold 0's weights back afterwards. Predictions are unchanged.

``patch_nnunet(pipeline=True)`` (opt-in) also gives the predictor nnunet_export's prediction
pipeline (``load_complete(...).pipeline(tile_step_size=predictor.tile_step_size,
use_gaussian=predictor.use_gaussian, use_mirroring=predictor.use_mirroring)``, built from the
folds read at initialise, or from ``predictor.network`` and ``list_of_parameters`` otherwise):
``predict_logits_from_preprocessed_data`` (and so ``predict_from_files``,
``predict_from_list_of_npy_arrays``, the cascade included) runs the pipeline's sliding window and
fold ensemble, and ``predict_single_npy_array`` its preprocessing and export back to the image's
geometry too. The results are nnU-Net's (the same fp16 logits). Where the pipeline cannot
reproduce the predictor (a device other than the CPU, settings it refuses) a
:class:`PipelineFallbackWarning` says why and nnU-Net's own code runs; ``predict_single_npy_array``
with a previous stage's segmentation or an output file keeps nnU-Net's preprocessing and export.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import json
import os
import warnings
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
import torch

from ._core import ExportError, ThreadGuard
from .architectures import EnsembleModule
from .architectures.weights import checked_weights
from .digests import weights_sha256
from .export_writer import quiet_torchscript
from .loading import load_complete
from .model import ModelInfo, NnUNetModel, attach_info
from .model_config import ModelConfig, model_config_from_json
from .pipeline.build import build_pipeline
from .pipeline.module import Pipeline
from .prefixes import strip_state_dict_prefixes, unwrap_module

# The nnunetv2 releases whose predictor API this patch accepts (from 2.5.2, which loads fold 0 at
# initialise, to 2.8.1); the method names and signatures below are checked too. The test suite
# (tests/test_nnunet_patch.py) runs against nnunetv2 2.8.1.
TESTED_NNUNET_VERSIONS = ("2.5.2", "2.8.1")
_PATCHED = ("initialize_from_trained_model_folder", "predict_logits_from_preprocessed_data")
# Patched only with pipeline=True.
_PIPELINE_PATCHED = ("predict_single_npy_array",)
_EXPECTED_PARAMETERS = {
    "initialize_from_trained_model_folder": ("self", "model_training_output_dir", "use_folds", "checkpoint_name"),
    "predict_logits_from_preprocessed_data": ("self", "data"),
    "predict_single_npy_array": ("self", "input_image", "image_properties", "segmentation_previous_stage",
                                 "output_file_truncated", "save_or_return_probabilities"),
}
_originals: dict[str, object] = {}
_state = {"pipeline": False}

kPipelineDeviceWarning = (
    "patch_nnunet(pipeline=True): the predictor runs on {device}, the pipeline on the CPU only for now; "
    "nnU-Net's own prediction runs instead"
)
kPipelineSettingsWarning = (
    "patch_nnunet(pipeline=True): the pipeline cannot reproduce this predictor ({reason}); "
    "nnU-Net's own prediction runs instead"
)


class PipelineFallbackWarning(UserWarning):
    """patch_nnunet(pipeline=True) could not give a predictor the pipeline: nnU-Net's code runs."""


class UnsupportedNnUNetError(ExportError):
    """The installed nnunetv2 is missing, or its predictor is not the API the patch knows."""


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _predictor_class():
    try:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    except ImportError as err:
        raise UnsupportedNnUNetError(
            f"patch_nnunet needs nnunetv2 ('pip install nnunet_export[nnunet]'): {err}"
        ) from None
    version = importlib_metadata.version("nnunetv2")
    low, high = (_version_tuple(v) for v in TESTED_NNUNET_VERSIONS)
    if not low <= _version_tuple(version)[: len(low)] <= high + (99,):
        raise UnsupportedNnUNetError(
            f"nnunetv2 {version} is outside the versions patch_nnunet supports "
            f"({TESTED_NNUNET_VERSIONS[0]} to {TESTED_NNUNET_VERSIONS[1]}); nothing was patched"
        )
    for name, expected in _EXPECTED_PARAMETERS.items():
        method = _originals.get(name) or getattr(nnUNetPredictor, name, None)
        if method is None or tuple(inspect.signature(method).parameters)[: len(expected)] != expected:
            raise UnsupportedNnUNetError(
                f"nnunetv2 {version}: nnUNetPredictor.{name} does not have the signature "
                f"{expected}; nothing was patched"
            )
    return nnUNetPredictor


def _put_back_fold_zero(predictor) -> None:
    params = getattr(predictor, "list_of_parameters", None)
    network = getattr(predictor, "network", None)
    if params and network is not None:
        with torch.no_grad():
            unwrap_module(network).load_state_dict(params[0])
        network.eval()


def _initialize_from_trained_model_folder(self, model_training_output_dir, use_folds,
                                          checkpoint_name="checkpoint_final.pth"):
    model = load_complete(model_training_output_dir, folds=use_folds, checkpoint_name=checkpoint_name)
    _install(self, model)


def _install(predictor, model: NnUNetModel) -> None:
    """Sets a predictor's attributes from a loaded NnUNetModel, as nnU-Net's initialise would."""
    # nnunetv2 is optional: only a patched predictor, which exists only with nnunetv2, gets here.
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    info = model.info
    model_dir = Path(info.model_dir)
    plans_manager = PlansManager(json.loads((model_dir / "plans.json").read_text()))
    dataset_json = json.loads((model_dir / "dataset.json").read_text())
    folds = list(model.network.networks) if isinstance(model.network, EnsembleModule) else [model.network]
    # The predictor copies each fold's weights into one network in turn; that network needs
    # storage of its own so the folds' tensors (kept in list_of_parameters) are never overwritten.
    network = copy.deepcopy(folds[0]).eval()
    attach_info(network, dataclasses.replace(
        info, folds=info.folds[:1], checkpoint_paths=info.checkpoint_paths[:1],
        weights_sha256=tuple(info.weights_sha256[:1])))
    predictor.plans_manager = plans_manager
    predictor.configuration_manager = plans_manager.get_configuration(info.config.configuration)
    predictor.list_of_parameters = [fold.state_dict() for fold in folds]
    predictor.network = network
    predictor.dataset_json = dataset_json
    predictor.trainer_name = info.trainer_name
    predictor.allowed_mirroring_axes = info.mirroring_axes
    predictor.label_manager = plans_manager.get_label_manager(dataset_json)
    if os.environ.get("nnUNet_compile", "").lower() in ("true", "1", "t"):
        predictor.network = torch.compile(network)
    # The folds as read, for the pipeline (patch_nnunet(pipeline=True)); valid while the predictor
    # keeps this network and these parameters.
    predictor._nnunet_export_model = (predictor.network, predictor.list_of_parameters, model)


def _config_from_predictor(predictor) -> ModelConfig:
    """ModelConfig of a predictor set up without a model folder (manual_initialization)."""
    plans = predictor.plans_manager.plans
    wanted = predictor.configuration_manager.configuration
    names = [n for n in plans["configurations"]
             if predictor.plans_manager.get_configuration(n).configuration == wanted]
    if not names:
        raise ExportError("predictor.configuration_manager matches no configuration of its plans")
    # The C reader validates exactly the JSON nnU-Net would read from a model folder.
    return model_config_from_json(json.dumps(plans).encode(), json.dumps(predictor.dataset_json).encode(),
                                  names[0], source="the predictor's")


def complete(predictor) -> torch.nn.Module:
    """Load the weights that belong in ``predictor.network`` and return the complete network.

    For predictors initialised without ``initialize_from_trained_model_folder`` (for example
    ``manual_initialization`` or custom code): fold 0's weights
    (``predictor.list_of_parameters[0]``, wrapper prefixes removed) are loaded strictly into the
    network inside any ``torch.compile``/DDP wrapper, which is put in eval mode and returned,
    ready for :func:`nnunet_export.to_torchscript`.

    Raises:
        ExportError: the predictor holds no network or no weights.
        WeightsMismatchError: the weights do not fit the network (keys listed).
    """
    network = getattr(predictor, "network", None)
    params = getattr(predictor, "list_of_parameters", None)
    if network is None:
        raise ExportError("the predictor has no network: initialise it first")
    if not params:
        raise ExportError("the predictor holds no weights (list_of_parameters is empty): "
                          "pass parameters to manual_initialization or use initialize_from_trained_model_folder")
    inner = unwrap_module(network)
    state_dict = strip_state_dict_prefixes(params[0])
    checked_weights(inner.state_dict(keep_vars=True), state_dict, source="predictor.list_of_parameters[0]")
    with torch.no_grad():
        inner.load_state_dict(state_dict, strict=True)
    inner.eval()
    inner.requires_grad_(False)
    attach_info(inner, _predictor_info(predictor, [state_dict]))
    return inner


def _mirroring_axes(predictor) -> Optional[tuple]:
    axes = getattr(predictor, "allowed_mirroring_axes", None)
    return tuple(axes) if axes is not None else None


def _predictor_info(predictor, state_dicts: list) -> ModelInfo:
    """ModelInfo of networks holding ``state_dicts`` (predictor.list_of_parameters, in order)."""
    return ModelInfo(
        model_dir="", config=_config_from_predictor(predictor), folds=tuple(range(len(state_dicts))),
        checkpoint_name="",
        checkpoint_paths=tuple(f"predictor.list_of_parameters[{i}]" for i in range(len(state_dicts))),
        trainer_name=str(getattr(predictor, "trainer_name", "")), mirroring_axes=_mirroring_axes(predictor),
        weights_sha256=tuple(weights_sha256(s) for s in state_dicts), scriptable=False,
        not_scriptable_reason="the predictor's own network (dynamic-network-architectures) is traced",
        builder="predictor",
    )


def _model_from_predictor(predictor) -> NnUNetModel:
    """The predictor's folds as an NnUNetModel: a copy of its network per entry of
    list_of_parameters (prefixes removed, loaded strictly), for predictors initialised without
    the patched initialize_from_trained_model_folder."""
    network = getattr(predictor, "network", None)
    params = getattr(predictor, "list_of_parameters", None)
    if network is None or not params:
        raise ExportError("the predictor holds no network or no weights: initialise it first")
    inner = unwrap_module(network)
    folds, state_dicts = [], []
    for index, parameters in enumerate(params):
        state_dict = strip_state_dict_prefixes(parameters)
        fold = copy.deepcopy(inner)
        checked_weights(fold.state_dict(keep_vars=True), state_dict, source=f"predictor.list_of_parameters[{index}]")
        with torch.no_grad():
            fold.load_state_dict(state_dict, strict=True)
        folds.append(fold.eval().requires_grad_(False))
        state_dicts.append(state_dict)
    return NnUNetModel(EnsembleModule(folds), _predictor_info(predictor, state_dicts))


def _pipeline_for(predictor) -> Optional[Union[Pipeline, torch.jit.ScriptModule]]:
    """The pipeline that reproduces ``predictor``'s prediction with its current settings (built
    once per network, weights and settings), or None after a PipelineFallbackWarning."""
    device = torch.device(getattr(predictor, "device", "cpu"))
    if device.type != "cpu":
        warnings.warn(kPipelineDeviceWarning.format(device=device), PipelineFallbackWarning, stacklevel=3)
        return None
    axes = _mirroring_axes(predictor)
    # nnU-Net skips mirroring where the checkpoints allow no axes (None).
    settings = (predictor.tile_step_size, bool(predictor.use_gaussian),
                bool(predictor.use_mirroring) and axes is not None, axes)
    network, params = predictor.network, predictor.list_of_parameters
    cached = predictor.__dict__.get("_nnunet_export_pipeline")
    if cached is not None and cached[0] is network and cached[1] is params and cached[2] == settings:
        return cached[3]
    try:
        stored = predictor.__dict__.get("_nnunet_export_model")
        if stored is not None and stored[0] is network and stored[1] is params:
            model = stored[2]
        else:
            model = _model_from_predictor(predictor)
        # The predictor's mirroring axes (a script may have changed them), not the checkpoint's.
        info = dataclasses.replace(model.info, mirroring_axes=axes)
        pipeline = build_pipeline(model.network, info, tile_step_size=settings[0], use_gaussian=settings[1],
                                  use_mirroring=settings[2])
        if info.scriptable:
            # Scripted, as an exported file runs: the same code without Python's per-tile overhead.
            with quiet_torchscript():
                pipeline = torch.jit.script(pipeline)
    except (ExportError, ValueError) as err:
        warnings.warn(kPipelineSettingsWarning.format(reason=err), PipelineFallbackWarning, stacklevel=3)
        return None
    predictor._nnunet_export_pipeline = (network, params, settings, pipeline)
    return pipeline


def _nnunet_threads() -> int:
    """The thread count nnU-Net predicts and exports with (its default_num_processes)."""
    from nnunetv2.inference import predict_from_raw_data

    return int(predict_from_raw_data.default_num_processes)


def _pipeline_logits(pipeline: Pipeline, data) -> torch.Tensor:
    # nnU-Net predicts with at most default_num_processes threads.
    with ThreadGuard(min(_nnunet_threads(), torch.get_num_threads())), torch.inference_mode():
        return pipeline.predict_logits(torch.as_tensor(data))


def _predict_single_npy_array(self, input_image, image_properties, segmentation_previous_stage=None,
                              output_file_truncated=None, save_or_return_probabilities=False):
    pipeline = _pipeline_for(self)
    if pipeline is None or pipeline.image_path_error or segmentation_previous_stage is not None \
            or output_file_truncated is not None:
        # nnU-Net's preprocessing and export; its predict_logits_from_preprocessed_data is the
        # pipeline's wherever the pipeline exists.
        return _originals["predict_single_npy_array"](self, input_image, image_properties,
                                                      segmentation_previous_stage, output_file_truncated,
                                                      save_or_return_probabilities)
    image = torch.from_numpy(np.array(input_image, dtype=np.float32))  # a copy, as nnU-Net's astype
    with torch.inference_mode():
        spacing = torch.tensor([float(s) for s in image_properties["spacing"]], dtype=torch.float64)
        data, properties = pipeline.preprocess(image, spacing)
    logits = _pipeline_logits(pipeline, data)
    # nnU-Net exports with default_num_processes threads, whatever the machine has.
    with ThreadGuard(_nnunet_threads()), torch.inference_mode():
        if save_or_return_probabilities:
            segmentation, probabilities = pipeline.probabilities_from_logits(logits, properties)
            return segmentation.numpy(), probabilities.numpy()
        return pipeline.segmentation_from_logits(logits, properties).numpy()


def _predict_logits_from_preprocessed_data(self, data):
    pipeline = _pipeline_for(self) if _state["pipeline"] else None
    if pipeline is not None:
        return _pipeline_logits(pipeline, data)
    original = _originals["predict_logits_from_preprocessed_data"]
    with ThreadGuard():
        try:
            return original(self, data)
        finally:
            # nnU-Net leaves the LAST fold's weights in the network after an ensemble.
            _put_back_fold_zero(self)


_REPLACEMENTS = {
    "initialize_from_trained_model_folder": _initialize_from_trained_model_folder,
    "predict_logits_from_preprocessed_data": _predict_logits_from_preprocessed_data,
    "predict_single_npy_array": _predict_single_npy_array,
}


def patch_nnunet(pipeline: bool = False) -> None:
    """Patch nnU-Net's predictor in this process (idempotent). See the module docstring.

    Args:
        pipeline: also predict with nnunet_export's pipeline (same results, faster). A later call
            with the other value switches.

    Raises:
        UnsupportedNnUNetError: nnunetv2 is missing or its predictor API is not the tested one.

    Example:
        >>> import nnunet_export
        >>> nnunet_export.patch_nnunet()  # doctest: +SKIP
        >>> predictor.initialize_from_trained_model_folder(model_dir, (0, 1), "checkpoint_final.pth")  # doctest: +SKIP
    """
    cls = _predictor_class()
    wanted = _PATCHED + (_PIPELINE_PATCHED if pipeline else ())
    for name in wanted:
        if name not in _originals:
            _originals[name] = cls.__dict__[name]
            setattr(cls, name, _REPLACEMENTS[name])
    for name in set(_originals) - set(wanted):
        setattr(cls, name, _originals.pop(name))
    _state["pipeline"] = bool(pipeline)


def unpatch_nnunet() -> None:
    """Restore nnU-Net's original predictor methods (no-op when not patched)."""
    _state["pipeline"] = False
    if not _originals:
        return
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    for name, original in _originals.items():
        setattr(nnUNetPredictor, name, original)
    _originals.clear()


def is_patched() -> bool:
    return bool(_originals)


@contextlib.contextmanager
def patched_nnunet(pipeline: bool = False) -> Iterator[None]:
    """``with nnunet_export.patched_nnunet(): ...`` patches for the block only (``pipeline`` as
    for :func:`patch_nnunet`); a patch made before the block is as it was afterwards."""
    was_patched, was_pipeline = is_patched(), _state["pipeline"]
    patch_nnunet(pipeline)
    try:
        yield
    finally:
        if was_patched:
            patch_nnunet(was_pipeline)
        else:
            unpatch_nnunet()
