"""Builds the network a checkpoint belongs to: the package's own scriptable architectures when
the plans name one, nnU-Net's trainer as a fallback for everything else."""
from __future__ import annotations

import copy
import inspect
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from .architectures import UnsupportedArchitectureError

# Trainers shipped with nnU-Net whose build_network_architecture only reads the plans.
# Everything else is checked against nnU-Net's class when nnunetv2 is importable.
_PLANS_ONLY_TRAINER = re.compile(r"nnUNetTrainer(_\d+epochs?)?")
_BATCHNORM_TRAINERS = ("nnUNetTrainerBN",)

_BATCHNORM_FOR_CONV = {
    "torch.nn.modules.conv.Conv1d": "torch.nn.modules.batchnorm.BatchNorm1d",
    "torch.nn.modules.conv.Conv2d": "torch.nn.modules.batchnorm.BatchNorm2d",
    "torch.nn.modules.conv.Conv3d": "torch.nn.modules.batchnorm.BatchNorm3d",
}


#: BuiltNetwork.builder of the package's own (scriptable) architectures.
NATIVE_BUILDER = "nnunet_export"


@dataclass(frozen=True)
class BuiltNetwork:
    network: torch.nn.Module
    scriptable: bool
    builder: str  # "nnunet_export" or "nnunetv2 <Trainer>.build_network_architecture"
    not_scriptable_reason: str | None = None


def _weights_have_batchnorm(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return any(key.endswith(".running_mean") for key in state_dict)


def _is_plans_only_trainer(trainer_name: str) -> bool:
    # nnUNetTrainer_250epochs, nnUNetTrainer_1epoch ... change the schedule only.
    return trainer_name in _BATCHNORM_TRAINERS or _PLANS_ONLY_TRAINER.fullmatch(trainer_name) is not None


def _trainer_class(trainer_name: str):
    """nnU-Net's trainer class, or None when nnunetv2 or the trainer is not importable."""
    try:
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    except ImportError:
        return None
    try:
        return recursive_find_trainer_class_by_name(trainer_name)
    except (RuntimeError, ImportError):
        return None


def _uses_default_build(trainer_cls) -> bool:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    return getattr(trainer_cls.build_network_architecture, "__func__", trainer_cls.build_network_architecture) is \
        getattr(nnUNetTrainer.build_network_architecture, "__func__", nnUNetTrainer.build_network_architecture)


def native_arch_kwargs(arch_kwargs: Mapping[str, Any], trainer_name: str,
                       state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The plans' arch_kwargs with the normalisation the weights were trained with.

    nnUNetTrainerBN keeps InstanceNorm in its plans and swaps in BatchNorm when it builds the
    network; its running statistics in the weights are the evidence we follow.
    """
    kwargs = copy.deepcopy(dict(arch_kwargs))
    if trainer_name in _BATCHNORM_TRAINERS or _weights_have_batchnorm(state_dict):
        conv_op = kwargs.get("conv_op")
        if conv_op in _BATCHNORM_FOR_CONV and "instancenorm" in str(kwargs.get("norm_op", "")).lower():
            kwargs["norm_op"] = _BATCHNORM_FOR_CONV[conv_op]
            kwargs["norm_op_kwargs"] = {"eps": 1e-5, "affine": True}
    return kwargs


def build_for_checkpoint(config, trainer_name: str, state_dict: Mapping[str, torch.Tensor],
                         model_dir: Path) -> BuiltNetwork:
    """Builds the (uninitialised) network for ``state_dict`` from the resolved model config."""
    from .architectures import NETWORK_CLASS_NAMES, build_network

    arch = config.architecture
    class_name = arch["network_class_name"]
    native_class = class_name in NETWORK_CLASS_NAMES
    trainer_known = _is_plans_only_trainer(trainer_name)
    trainer_cls = None
    if native_class and not trainer_known:
        trainer_cls = _trainer_class(trainer_name)
        if trainer_cls is not None and _uses_default_build(trainer_cls):
            trainer_known = True
    if native_class and (trainer_known or trainer_cls is None):
        # An unknown trainer that nnU-Net cannot tell us about: build from the plans; the strict
        # key and shape check still refuses weights of a different structure.
        network = build_network(
            class_name,
            native_arch_kwargs(arch["arch_kwargs"], trainer_name, state_dict),
            config.num_input_channels,
            config.num_output_channels,
            device="meta",  # no memory, no random init: the checkpoint's tensors are adopted
        )
        return BuiltNetwork(network, True, NATIVE_BUILDER)
    if trainer_cls is None:
        trainer_cls = _trainer_class(trainer_name)
    if trainer_cls is None:
        raise UnsupportedArchitectureError(
            f"network class {class_name!r} (trainer {trainer_name!r}) is not one nnunet_export "
            "implements (PlainConvUNet, ResidualEncoderUNet); to build it with the trainer's own "
            "code install nnunetv2 ('pip install nnunet_export[nnunet]') and make the trainer "
            "importable (nnunetv2.training.nnUNetTrainer or $nnUNet_extTrainer)"
        )
    try:
        network = _build_with_trainer(trainer_cls, config, model_dir)
    except Exception as error:  # nnU-Net's or the trainer's code: any failure means "cannot build"
        raise UnsupportedArchitectureError(
            f"{trainer_name}.build_network_architecture could not build network class {class_name!r}: "
            f"{type(error).__name__}: {error}"
        ) from error
    if not isinstance(network, torch.nn.Module):
        raise UnsupportedArchitectureError(
            f"{trainer_name}.build_network_architecture returned a {type(network).__name__}, not a "
            "torch.nn.Module"
        )
    # A trainer may ignore enable_deep_supervision=False; dna's decoders then still return a list.
    for module in network.modules():
        if isinstance(getattr(module, "deep_supervision", None), bool):
            module.deep_supervision = False
    reason = (
        f"built by {trainer_name}.build_network_architecture (network class {class_name}); "
        "nnunet_export's scriptable implementations cover PlainConvUNet and ResidualEncoderUNet "
        "with plans-defined networks only"
    )
    return BuiltNetwork(network, False, f"nnunetv2 {trainer_name}.build_network_architecture", reason)


def _build_with_trainer(trainer_cls, config, model_dir: Path) -> torch.nn.Module:
    """Calls the trainer's static build_network_architecture with whichever signature it has."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    # nnU-Net's own classes take the raw JSON; the C reader has already validated both files.
    plans = json.loads((model_dir / "plans.json").read_text())
    dataset_json = json.loads((model_dir / "dataset.json").read_text())
    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(config.configuration)
    build = trainer_cls.build_network_architecture
    params = inspect.signature(build).parameters
    if "plans_manager" in params and "dataset_json" in params:  # nnU-Net 2.2
        return build(plans_manager, dataset_json, configuration_manager,
                     config.num_input_channels, enable_deep_supervision=False)
    if "plans_manager" in params:  # 2.7+
        return build(plans_manager, configuration_manager, config.num_input_channels,
                     config.num_output_channels, enable_deep_supervision=False)
    return build(  # 2.3 - 2.6
        configuration_manager.network_arch_class_name,
        configuration_manager.network_arch_init_kwargs,
        configuration_manager.network_arch_init_kwargs_req_import,
        config.num_input_channels, config.num_output_channels, enable_deep_supervision=False,
    )
