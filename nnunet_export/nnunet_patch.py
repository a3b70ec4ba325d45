"""Drop-in fixes for unchanged nnUNetPredictor scripts.

After ``patch_nnunet()``, ``nnUNetPredictor.initialize_from_trained_model_folder`` reads every
fold through the safe C reader, checks the folds against each other, removes wrapper prefixes,
and leaves ``predictor.network`` complete (fold 0's weights, eval mode, exportable with
``to_torchscript``); ``predict_logits_from_preprocessed_data`` restores torch's thread count even
when it raises and puts fold 0's weights back afterwards. Predictions are unchanged.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import json
import os
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Iterator

import torch

from ._core import ExportError, ThreadGuard
from .architectures import EnsembleModule
from .architectures.weights import checked_weights
from .digests import weights_sha256
from .loading import load_complete
from .model import ModelInfo, NnUNetModel, attach_info
from .model_config import ModelConfig, model_config_from_json
from .prefixes import strip_state_dict_prefixes, unwrap_module

# The nnunetv2 releases whose predictor API this patch accepts (from 2.5.2, which loads fold 0 at
# initialise, to 2.8.1); the method names and signatures below are checked too. The test suite
# (tests/test_nnunet_patch.py) runs against nnunetv2 2.8.1.
TESTED_NNUNET_VERSIONS = ("2.5.2", "2.8.1")
_PATCHED = ("initialize_from_trained_model_folder", "predict_logits_from_preprocessed_data")
_EXPECTED_PARAMETERS = {
    "initialize_from_trained_model_folder": ("self", "model_training_output_dir", "use_folds", "checkpoint_name"),
    "predict_logits_from_preprocessed_data": ("self", "data"),
}
_originals: dict[str, object] = {}


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
    axes = getattr(predictor, "allowed_mirroring_axes", None)
    attach_info(inner, ModelInfo(
        model_dir="", config=_config_from_predictor(predictor), folds=(0,),
        checkpoint_name="", checkpoint_paths=("predictor.list_of_parameters[0]",),
        trainer_name=str(getattr(predictor, "trainer_name", "")),
        mirroring_axes=tuple(axes) if axes is not None else None,
        weights_sha256=(weights_sha256(state_dict),), scriptable=False,
        not_scriptable_reason="the predictor's own network (dynamic-network-architectures) is traced",
        builder="predictor",
    ))
    return inner


def _predict_logits_from_preprocessed_data(self, data):
    original = _originals["predict_logits_from_preprocessed_data"]
    with ThreadGuard():
        try:
            return original(self, data)
        finally:
            # nnU-Net leaves the LAST fold's weights in the network after an ensemble.
            _put_back_fold_zero(self)


def patch_nnunet() -> None:
    """Patch nnU-Net's predictor in this process (idempotent). See the module docstring.

    Raises:
        UnsupportedNnUNetError: nnunetv2 is missing or its predictor API is not the tested one.

    Example:
        >>> import nnunet_export
        >>> nnunet_export.patch_nnunet()  # doctest: +SKIP
        >>> predictor.initialize_from_trained_model_folder(model_dir, (0, 1), "checkpoint_final.pth")  # doctest: +SKIP
    """
    cls = _predictor_class()
    if _originals:
        return
    replacements = {
        "initialize_from_trained_model_folder": _initialize_from_trained_model_folder,
        "predict_logits_from_preprocessed_data": _predict_logits_from_preprocessed_data,
    }
    for name in _PATCHED:
        _originals[name] = cls.__dict__[name]
    for name, function in replacements.items():
        setattr(cls, name, function)


def unpatch_nnunet() -> None:
    """Restore nnU-Net's original predictor methods (no-op when not patched)."""
    if not _originals:
        return
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    for name, original in _originals.items():
        setattr(nnUNetPredictor, name, original)
    _originals.clear()


def is_patched() -> bool:
    return bool(_originals)


@contextlib.contextmanager
def patched_nnunet() -> Iterator[None]:
    """``with nnunet_export.patched_nnunet(): ...`` patches for the block only."""
    was_patched = is_patched()
    patch_nnunet()
    try:
        yield
    finally:
        if not was_patched:
            unpatch_nnunet()
