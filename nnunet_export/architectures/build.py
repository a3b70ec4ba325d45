"""Build the network a model's plans describe: the package's own scriptable architectures
(PlainConvUNet, ResidualEncoderUNet) when the plans name one, nnU-Net's trainer as a fallback
for everything else. Weights go in through :mod:`.weights`."""
from __future__ import annotations

import copy
import inspect
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import torch
from torch import nn

from .. import _core
from .._core import PlansError
from .blocks import BasicBlockD
from .errors import UnsupportedArchitectureError
from .ops import CONV_DIMS, to_class, to_name
from .plain_unet import PlainConvUNet
from .residual_unet import ResidualEncoderUNet

__all__ = ["BuiltNetwork", "NATIVE_BUILDER", "NETWORK_CLASS_NAMES", "build_for_checkpoint", "build_network"]

kNotIntError = "{what} must be an integer >= {minimum}, got {value!r}"
_DNA_ARCH = "dynamic_network_architectures.architectures"
# Full names as nnU-Net writes them, plus the legacy `residual_unet` path that nnU-Net's old-plans
# conversion still emits (nnU-Net recovers it by searching dna for the bare class name) and the
# bare names themselves. The C core accepts exactly these (check_arch_kwargs).
NETWORK_CLASS_NAMES: Dict[str, type] = {
    f"{_DNA_ARCH}.unet.PlainConvUNet": PlainConvUNet,
    f"{_DNA_ARCH}.unet.ResidualEncoderUNet": ResidualEncoderUNet,
    f"{_DNA_ARCH}.residual_unet.ResidualEncoderUNet": ResidualEncoderUNet,
    "PlainConvUNet": PlainConvUNet,
    "ResidualEncoderUNet": ResidualEncoderUNet,
}


def _check_int(what: str, v: Any, minimum: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        raise PlansError(kNotIntError.format(what=what, minimum=minimum, value=v))
    return v


def _per_stage(v: Any, n: int) -> List[int]:
    """int -> [v] * n; a list of n ints -> a copy (dna's rule for features, convs, blocks)."""
    return [v] * n if isinstance(v, int) else list(v)


def _per_stage_axes(v: Any, n: int, dim: int) -> List[List[int]]:
    """Kernel sizes / strides: an int, or n entries each an int or a list of ``dim`` ints."""
    entries = [v] * n if isinstance(v, int) else v
    return [[e] * dim if isinstance(e, int) else list(e) for e in entries]


def _op_kwargs(op: Optional[type], kwargs: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    # Without the op, dna ignores its kwargs.
    return {} if op is None or kwargs is None else dict(kwargs)


def _constructor_kwargs(cls: type, kw: Mapping[str, Any]) -> Dict[str, Any]:
    """Constructor arguments (lists, classes) of arch_kwargs that _core.check_arch_kwargs passed."""
    n = kw["n_stages"]
    conv_op = to_class(kw["conv_op"])
    dim = CONV_DIMS[conv_op]
    norm_op, dropout_op, nonlin = (to_class(kw.get(k)) for k in ("norm_op", "dropout_op", "nonlin"))
    out: Dict[str, Any] = dict(
        features_per_stage=_per_stage(kw["features_per_stage"], n),
        conv_op=conv_op,
        kernel_sizes=_per_stage_axes(kw["kernel_sizes"], n, dim),
        strides=_per_stage_axes(kw["strides"], n, dim),
        n_conv_per_stage_decoder=_per_stage(kw["n_conv_per_stage_decoder"], n - 1),
        conv_bias=kw.get("conv_bias") is True,  # null means the constructor's default, False
        norm_op=norm_op,
        norm_op_kwargs=_op_kwargs(norm_op, kw.get("norm_op_kwargs")),
        dropout_op=dropout_op,
        dropout_op_kwargs=_op_kwargs(dropout_op, kw.get("dropout_op_kwargs")),
        nonlin=nonlin,
        nonlin_kwargs=_op_kwargs(nonlin, kw.get("nonlin_kwargs")),
    )
    if cls is PlainConvUNet:
        out["n_conv_per_stage"] = _per_stage(kw["n_conv_per_stage"], n)
        out["nonlin_first"] = kw.get("nonlin_first") is True
    else:
        out["n_blocks_per_stage"] = _per_stage(kw["n_blocks_per_stage"], n)
        out["block"] = to_class(kw["block"]) if kw.get("block") is not None else BasicBlockD
        bottleneck = kw.get("bottleneck_channels")
        out["bottleneck_channels"] = None if bottleneck is None else _per_stage(bottleneck, n)
        out["stem_channels"] = kw.get("stem_channels")
    return out


def build_network(
    network_class_name: Union[str, type],
    arch_kwargs: Mapping[str, Any],
    input_channels: int,
    output_channels: int,
    *,
    deep_supervision: bool = False,
    device: Union[str, torch.device] = "cpu",
) -> nn.Module:
    """Build nnU-Net's network from a plans ``architecture`` block, without initialising weights.

    The network is constructed on the meta device (no memory, no random init) and then given
    uninitialised storage on ``device``: its values are garbage until :func:`load_weights`.
    State-dict keys, order and shapes equal dynamic-network-architectures' for the same kwargs.

    Args:
        network_class_name: ``architecture['network_class_name']`` from plans.json (e.g.
            ``"dynamic_network_architectures.architectures.unet.PlainConvUNet"``), a bare class
            name, or one of this package's classes.
        arch_kwargs: ``architecture['arch_kwargs']`` as in plans.json: op classes as dotted names
            (``"torch.nn.modules.conv.Conv3d"``), ints or per-stage lists.
        input_channels: number of input channels (image channels, plus one per foreground label
            for a cascade's second stage).
        output_channels: number of segmentation outputs (labels incl. background, or regions).
        deep_supervision: return every decoder head (list, full resolution first) instead of
            the full-resolution logits only; overrides ``arch_kwargs['deep_supervision']``, as
            nnU-Net's predictor does.
        device: where to allocate the (uninitialised) tensors; ``"meta"`` allocates nothing, and
            :func:`load_weights` then adopts the state dict's tensors without copying.

    Returns:
        A :class:`PlainConvUNet` or :class:`ResidualEncoderUNet` in training mode (call
        :func:`prepare_for_inference` before use or scripting).

    Raises:
        UnsupportedArchitectureError: unknown class name, op, block or keyword.
        PlansError: a required keyword is missing or a value has the wrong type, range or length
            (the message names ``arch_kwargs`` and the key path).
        TypeError: ``arch_kwargs`` is not a dict.

    Example:
        >>> net = build_network("dynamic_network_architectures.architectures.unet.PlainConvUNet",
        ...     {"n_stages": 2, "features_per_stage": [4, 8], "conv_op": "torch.nn.modules.conv.Conv2d",
        ...      "kernel_sizes": 3, "strides": [1, 2], "n_conv_per_stage": 2,
        ...      "n_conv_per_stage_decoder": 2, "conv_bias": True,
        ...      "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
        ...      "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "nonlin": "torch.nn.LeakyReLU",
        ...      "nonlin_kwargs": {"inplace": True}}, input_channels=1, output_channels=3)
        >>> sorted(net.state_dict())[0]
        'decoder.encoder.stages.0.0.convs.0.all_modules.0.bias'
    """
    if network_class_name in (PlainConvUNet, ResidualEncoderUNet):
        network_class_name = network_class_name.__name__
    if isinstance(arch_kwargs, Mapping):  # classes as the names plans.json would hold
        arch_kwargs = {key: to_name(value) for key, value in arch_kwargs.items()}
    # Every rule lives in the C core; its messages name the key path.
    _core.check_arch_kwargs(str(to_name(network_class_name)), arch_kwargs)
    cls = NETWORK_CLASS_NAMES[network_class_name]
    kwargs = _constructor_kwargs(cls, arch_kwargs)
    _check_int("input_channels", input_channels, 1)
    _check_int("output_channels", output_channels, 1)
    if not isinstance(deep_supervision, bool):
        raise TypeError(f"deep_supervision must be a bool, got {deep_supervision!r}")
    device = torch.device(device)
    # Parameters created under the meta device have no storage, so the constructors' default
    # init (kaiming_uniform_ in every conv) costs nothing; to_empty then allocates without init.
    with torch.device("meta"):
        net = cls(input_channels=input_channels, num_classes=output_channels, deep_supervision=deep_supervision, **kwargs)
    if device.type != "meta":
        net.to_empty(device=device)
    return net


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
    # nnunetv2 is an optional dependency (the [nnunet] extra) and slow to import: the functions
    # that ask nnU-Net's own code import it when they run, never at package import.
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
