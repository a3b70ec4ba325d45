"""Build a network from plans' ``architecture`` block, load weights, prepare for inference."""
from typing import Any, Dict, List, Mapping, Optional, Union

import torch
from torch import nn

from .. import _core
from .._core import PlansError, WeightsMismatchError
from .blocks import BasicBlockD
from .decoder import UNetDecoder, deep_supervision_enabled
from .ops import CONV_DIMS, to_class, to_name
from .plain_unet import PlainConvUNet
from .residual_unet import ResidualEncoderUNet

__all__ = ["build_network", "load_weights", "prepare_for_inference", "NETWORK_CLASS_NAMES"]

kNotIntError = "{what} must be an integer >= {minimum}, got {value!r}"
kMissingWeightsError = "state dict does not fit the network: {n} missing key(s), e.g. {keys}"
kUnexpectedWeightsError = "state dict does not fit the network: {n} unexpected key(s), e.g. {keys}"
kShapeMismatchError = "state dict entry {key!r} has shape {got}, the network expects {want}"
kNotTensorError = "state dict entry {key!r} is a {kind}, not a tensor"
kAliasMismatchError = (
    "state dict entries {a!r} and {b!r} name the same tensor in the network but hold different values"
)
kStillMetaError = "after loading, {n} tensor(s) have no data (not in the state dict), e.g. {keys}"

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


def _describe(keys: List[str], limit: int = 5) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (", ..." if len(keys) > limit else "")


def checked_weights(own: Mapping[str, torch.Tensor], state_dict: Mapping[str, Any],
                    strict: bool = True) -> Dict[str, torch.Tensor]:
    """The entries of ``state_dict`` to write into a network whose ``state_dict(keep_vars=True)``
    is ``own``: one key per underlying tensor (dna's state dict names every encoder weight
    four times), after checking keys, shapes and that aliases carry equal values.

    Raises:
        WeightsMismatchError: as :func:`load_weights`.
    """
    if strict:
        missing = [k for k in own if k not in state_dict]
        if missing:
            raise WeightsMismatchError(kMissingWeightsError.format(n=len(missing), keys=_describe(missing)))
        unexpected = [k for k in state_dict if k not in own]
        if unexpected:
            raise WeightsMismatchError(kUnexpectedWeightsError.format(n=len(unexpected), keys=_describe(unexpected)))
    first_key_of: Dict[int, str] = {}
    for key, target in own.items():
        if key not in state_dict:
            continue
        value = state_dict[key]
        if not isinstance(value, torch.Tensor):
            raise WeightsMismatchError(kNotTensorError.format(key=key, kind=type(value).__name__))
        if value.shape != target.shape:
            raise WeightsMismatchError(
                kShapeMismatchError.format(key=key, got=tuple(value.shape), want=tuple(target.shape))
            )
        # Aliases are one tensor here; loading different values into them would silently keep
        # whichever came last, so refuse. Views of one storage (what dna checkpoints hold) pass
        # without comparing data.
        first = first_key_of.setdefault(id(target), key)
        if first != key:
            ref = state_dict[first]
            same_view = (
                ref.device == value.device and ref.dtype == value.dtype and ref.stride() == value.stride()
                and ref.data_ptr() == value.data_ptr()
            )
            if not same_view and not torch.equal(ref, value.to(ref.device, ref.dtype)):
                raise WeightsMismatchError(kAliasMismatchError.format(a=first, b=key))
    return {key: state_dict[key] for key in own if key in state_dict and first_key_of[id(own[key])] == key}


def load_weights(module: nn.Module, state_dict: Mapping[str, Any], strict: bool = True) -> nn.Module:
    """Load a dynamic-network-architectures state dict (e.g. ``checkpoint['network_weights']``).

    Before anything is written, the keys and shapes are checked, and every group of alias keys
    (``...conv.weight`` / ``...all_modules.0.weight`` / ``decoder.encoder.*``, which are one
    tensor in the network) must carry equal values; each tensor is then written once. If the
    network lives on the meta device (``build_network(..., device="meta")``) the state dict's
    tensors are adopted without a copy (``assign=True``, so the network then shares memory with
    ``state_dict``); otherwise they are copied into the network's own storage.

    Args:
        module: a network from :func:`build_network` (or any module).
        state_dict: mapping of key -> tensor, keys exactly as dna's ``state_dict()`` (no
            ``module.`` / ``_orig_mod.`` prefixes).
        strict: require the key sets to be equal.

    Returns:
        ``module``, for chaining.

    Raises:
        WeightsMismatchError: missing or unexpected keys (strict), a shape mismatch, a value that
            is not a tensor, inconsistent aliases, or tensors left without data.
    """
    own = module.state_dict(keep_vars=True)
    once = checked_weights(own, state_dict, strict)
    on_meta = any(t.is_meta for t in own.values())
    module.load_state_dict(once, strict=False, assign=on_meta)
    if on_meta:
        left = [k for k, t in module.state_dict(keep_vars=True).items() if t.is_meta]
        if left:
            raise WeightsMismatchError(kStillMetaError.format(n=len(left), keys=_describe(left)))
    return module


def prepare_for_inference(module: nn.Module) -> nn.Module:
    """Switch a network (or an ensemble of them) to inference: eval mode, no gradients, no deep supervision.

    Call it before ``torch.jit.script``: under TorchScript, deep supervision is compiled in as
    a constant and cannot be switched off afterwards.

    Args:
        module: a network from :func:`build_network`, an :class:`EnsembleModule`, or any module
            containing them.

    Returns:
        ``module``, for chaining.

    Raises:
        ValueError: ``module`` contains a scripted network compiled with deep supervision on.

    Example:
        >>> net = prepare_for_inference(net)  # doctest: +SKIP
        >>> scripted = torch.jit.script(net)  # doctest: +SKIP
    """
    for m in module.modules():
        if isinstance(m, UNetDecoder):
            m.deep_supervision = False
    if deep_supervision_enabled(module):  # only a scripted decoder can still have it on
        raise ValueError(
            "a scripted network was compiled with deep supervision on; call prepare_for_inference "
            "before torch.jit.script"
        )
    module.eval()
    module.requires_grad_(False)
    return module
