"""Build a network from plans' ``architecture`` block, load weights, prepare for inference."""
from typing import Any, Dict, List, Mapping, Union

import torch
from torch import nn

from .._core import PlansError, WeightsMismatchError
from .blocks import BasicBlockD, BottleneckD
from .decoder import UNetDecoder, deep_supervision_enabled
from .errors import UnsupportedArchitectureError
from .ops import CONV_OPS, DROPOUT_OPS, NONLINS, NORM_OPS, conv_dim, resolve_block, resolve_op, validate_op_kwargs
from .plain_unet import PlainConvUNet
from .residual_unet import ResidualEncoderUNet

__all__ = ["build_network", "load_weights", "prepare_for_inference", "NETWORK_CLASS_NAMES"]

kUnsupportedClassError = "network_class_name {name!r} is not supported; allowed: {allowed}"
kUnknownKwargError = "arch_kwargs[{key!r}] is not an argument of {cls}; allowed: {allowed}"
kMissingKwargError = "arch_kwargs[{key!r}] is missing; {cls} requires it"
kNotIntError = "{what} must be an integer >= {minimum}, got {value!r}"
kNotBoolError = "arch_kwargs[{key!r}] must be true or false, got {value!r}"
kBadLengthError = "arch_kwargs[{key!r}] must be an integer or a list of {n} entries ({per}), got {value!r}"
kDimMismatchError = "arch_kwargs['norm_op'] = {norm!r} is {norm_dim}d but conv_op {conv!r} is {conv_dim}d"
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
# bare names themselves.
NETWORK_CLASS_NAMES: Dict[str, type] = {
    f"{_DNA_ARCH}.unet.PlainConvUNet": PlainConvUNet,
    f"{_DNA_ARCH}.unet.ResidualEncoderUNet": ResidualEncoderUNet,
    f"{_DNA_ARCH}.residual_unet.ResidualEncoderUNet": ResidualEncoderUNet,
    "PlainConvUNet": PlainConvUNet,
    "ResidualEncoderUNet": ResidualEncoderUNet,
}

_COMMON_REQUIRED = ("n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides", "n_conv_per_stage_decoder")
_COMMON_OPTIONAL = (
    "conv_bias", "norm_op", "norm_op_kwargs", "dropout_op", "dropout_op_kwargs",
    "nonlin", "nonlin_kwargs", "deep_supervision",
)
_REQUIRED = {
    PlainConvUNet: _COMMON_REQUIRED + ("n_conv_per_stage",),
    ResidualEncoderUNet: _COMMON_REQUIRED + ("n_blocks_per_stage",),
}
_OPTIONAL = {
    PlainConvUNet: _COMMON_OPTIONAL + ("nonlin_first",),
    ResidualEncoderUNet: _COMMON_OPTIONAL + ("block", "bottleneck_channels", "stem_channels"),
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_int(what: str, v: Any, minimum: int) -> int:
    if not _is_int(v) or v < minimum:
        raise PlansError(kNotIntError.format(what=what, minimum=minimum, value=v))
    return v


def _check_bool(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise PlansError(kNotBoolError.format(key=key, value=v))
    return v


def _per_stage(key: str, v: Any, n: int, per: str, minimum: int) -> List[int]:
    """int -> [v] * n; list/tuple of n ints -> list. dna's rule for features, convs, blocks."""
    if _is_int(v):
        return [_check_int(f"arch_kwargs[{key!r}]", v, minimum)] * n
    if not isinstance(v, (list, tuple)) or len(v) != n:
        raise PlansError(kBadLengthError.format(key=key, n=n, per=per, value=v))
    return [_check_int(f"arch_kwargs[{key!r}][{i}]", e, minimum) for i, e in enumerate(v)]


def _per_stage_axes(key: str, v: Any, n: int, dim: int) -> List[List[int]]:
    """Kernel sizes / strides: int, or n entries each an int or a list of ``dim`` ints."""
    entries = [v] * n if _is_int(v) else v
    if not isinstance(entries, (list, tuple)) or len(entries) != n:
        raise PlansError(kBadLengthError.format(key=key, n=n, per="one per stage", value=v))
    out: List[List[int]] = []
    for i, e in enumerate(entries):
        if _is_int(e):
            out.append([_check_int(f"arch_kwargs[{key!r}][{i}]", e, 1)] * dim)
        elif isinstance(e, (list, tuple)) and len(e) == dim:
            out.append([_check_int(f"arch_kwargs[{key!r}][{i}][{j}]", a, 1) for j, a in enumerate(e)])
        else:
            raise PlansError(
                kNotIntError.format(what=f"arch_kwargs[{key!r}][{i}] (or a list of {dim} such)", minimum=1, value=e)
            )
    return out


def _normalise(cls: type, arch_kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    """Validate plans' arch_kwargs for ``cls`` and return constructor arguments (lists, classes)."""
    if not isinstance(arch_kwargs, Mapping):
        raise PlansError(f"arch_kwargs must be a dict, got {type(arch_kwargs).__name__}")
    required, optional = _REQUIRED[cls], _OPTIONAL[cls]
    for key in arch_kwargs:
        if key not in required and key not in optional:
            raise UnsupportedArchitectureError(
                kUnknownKwargError.format(key=key, cls=cls.__name__, allowed=", ".join(required + optional))
            )
    for key in required:
        if key not in arch_kwargs:
            raise PlansError(kMissingKwargError.format(key=key, cls=cls.__name__))
    kw = arch_kwargs

    n = _check_int("arch_kwargs['n_stages']", kw["n_stages"], 2)
    conv_op = resolve_op("conv_op", kw["conv_op"], CONV_OPS, allow_none=False)
    dim = conv_dim(conv_op)
    norm_op = resolve_op("norm_op", kw.get("norm_op"), NORM_OPS, allow_none=True)
    if norm_op is not None and NORM_OPS[norm_op] != dim:
        raise UnsupportedArchitectureError(
            kDimMismatchError.format(norm=kw["norm_op"], norm_dim=NORM_OPS[norm_op], conv=kw["conv_op"], conv_dim=dim)
        )
    dropout_op = resolve_op("dropout_op", kw.get("dropout_op"), DROPOUT_OPS, allow_none=True)
    nonlin = resolve_op("nonlin", kw.get("nonlin"), NONLINS, allow_none=True)
    out: Dict[str, Any] = dict(
        features_per_stage=_per_stage("features_per_stage", kw["features_per_stage"], n, "one per stage", 1),
        conv_op=conv_op,
        kernel_sizes=_per_stage_axes("kernel_sizes", kw["kernel_sizes"], n, dim),
        strides=_per_stage_axes("strides", kw["strides"], n, dim),
        n_conv_per_stage_decoder=_per_stage(
            "n_conv_per_stage_decoder", kw["n_conv_per_stage_decoder"], n - 1, "one per stage except the first", 1
        ),
        conv_bias=_check_bool("conv_bias", kw.get("conv_bias", False)),
        norm_op=norm_op,
        norm_op_kwargs=validate_op_kwargs("norm_op_kwargs", norm_op, kw.get("norm_op_kwargs")),
        dropout_op=dropout_op,
        dropout_op_kwargs=validate_op_kwargs("dropout_op_kwargs", dropout_op, kw.get("dropout_op_kwargs")),
        nonlin=nonlin,
        nonlin_kwargs=validate_op_kwargs("nonlin_kwargs", nonlin, kw.get("nonlin_kwargs")),
    )
    if "deep_supervision" in kw:
        _check_bool("deep_supervision", kw["deep_supervision"])
    if cls is PlainConvUNet:
        out["n_conv_per_stage"] = _per_stage("n_conv_per_stage", kw["n_conv_per_stage"], n, "one per stage", 1)
        out["nonlin_first"] = _check_bool("nonlin_first", kw.get("nonlin_first", False))
    else:
        out["n_blocks_per_stage"] = _per_stage("n_blocks_per_stage", kw["n_blocks_per_stage"], n, "one per stage", 1)
        block = resolve_block(kw.get("block", BasicBlockD))
        out["block"] = block
        bottleneck = kw.get("bottleneck_channels")
        if bottleneck is not None:
            bottleneck = _per_stage("bottleneck_channels", bottleneck, n, "one per stage", 1)
        elif block is BottleneckD:
            raise PlansError(kMissingKwargError.format(key="bottleneck_channels", cls="BottleneckD"))
        out["bottleneck_channels"] = bottleneck
        stem = kw.get("stem_channels")
        out["stem_channels"] = None if stem is None else _check_int("arch_kwargs['stem_channels']", stem, 1)
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
        PlansError: a required keyword is missing or a value has the wrong type, range or length.

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
    if isinstance(network_class_name, type) and network_class_name in (PlainConvUNet, ResidualEncoderUNet):
        cls = network_class_name
    elif isinstance(network_class_name, str) and network_class_name in NETWORK_CLASS_NAMES:
        cls = NETWORK_CLASS_NAMES[network_class_name]
    else:
        raise UnsupportedArchitectureError(
            kUnsupportedClassError.format(name=network_class_name, allowed=", ".join(NETWORK_CLASS_NAMES))
        )
    kwargs = _normalise(cls, arch_kwargs)
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
