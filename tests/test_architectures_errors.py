"""Clear, exact errors for unsupported or malformed architecture plans and mismatching weights."""
import re
import sys

import pytest
import torch

from nnunet_export import ExportError, PlansError, WeightsMismatchError
from nnunet_export.architectures import UnsupportedArchitectureError, build_network, load_weights

try:
    from . import arch_cases
except ImportError:  # tests/ is not a package: pytest put tests/ on sys.path
    import arch_cases

PLAIN, RESENC = arch_cases.PLAIN, arch_cases.RESENC
PLAIN_KW = arch_cases.case_by_id("plain2d_in").arch_kwargs  # 2d, 4 stages
RESENC_KW = arch_cases.case_by_id("resenc3d_in_aniso").arch_kwargs  # 3d, 4 stages


def _build(kw, name=PLAIN):
    return build_network(name, kw, 1, 2, device="meta")


def _raises(exc, message):
    return pytest.raises(exc, match="^" + re.escape(message) + "$")


def test_unsupported_architecture_error_is_an_export_error():
    assert issubclass(UnsupportedArchitectureError, ExportError)


def test_unknown_network_class():
    with _raises(
        UnsupportedArchitectureError,
        "arch_kwargs: network_class_name: \"dynamic_network_architectures.architectures.unet.ResidualUNet\" "
        "is not supported; allowed: dynamic_network_architectures.architectures.unet.PlainConvUNet, "
        "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet, "
        "dynamic_network_architectures.architectures.residual_unet.ResidualEncoderUNet, "
        "PlainConvUNet, ResidualEncoderUNet",
    ):
        _build(PLAIN_KW, "dynamic_network_architectures.architectures.unet.ResidualUNet")


def test_unknown_op_name_is_never_imported():
    assert "antigravity" not in sys.modules
    with _raises(
        UnsupportedArchitectureError,
        "arch_kwargs: conv_op: \"antigravity.Conv2d\" is not supported; allowed: "
        "torch.nn.modules.conv.Conv1d, torch.nn.modules.conv.Conv2d, torch.nn.modules.conv.Conv3d",
    ):
        _build(dict(PLAIN_KW, conv_op="antigravity.Conv2d"))
    assert "antigravity" not in sys.modules


def test_unknown_nonlin_lists_the_allowed_ones():
    with _raises(
        UnsupportedArchitectureError,
        "arch_kwargs: nonlin: \"torch.nn.Tanh\" is not supported; allowed: "
        "torch.nn.modules.activation.LeakyReLU, torch.nn.modules.activation.ReLU, "
        "torch.nn.modules.activation.ELU, torch.nn.modules.activation.GELU, "
        "torch.nn.modules.activation.PReLU, torch.nn.modules.activation.SiLU, null",
    ):
        _build(dict(PLAIN_KW, nonlin="torch.nn.Tanh"))


def test_norm_of_other_dimension():
    with _raises(
        UnsupportedArchitectureError,
        "arch_kwargs: norm_op: \"torch.nn.modules.instancenorm.InstanceNorm3d\" is 3d, but conv_op "
        "\"torch.nn.modules.conv.Conv2d\" is 2d",
    ):
        _build(dict(PLAIN_KW, norm_op="torch.nn.modules.instancenorm.InstanceNorm3d"))


def test_op_keyword_outside_allowlist():
    with _raises(
        UnsupportedArchitectureError,
        "arch_kwargs: norm_op_kwargs.device: is not a keyword InstanceNorm2d accepts here; "
        "allowed: eps, momentum, affine, track_running_stats",
    ):
        _build(dict(PLAIN_KW, norm_op_kwargs={"eps": 1e-5, "device": "cuda"}))


def test_op_keyword_of_wrong_type():
    with _raises(PlansError, "arch_kwargs: nonlin_kwargs.inplace: expected a boolean, found \"yes\""):
        _build(dict(PLAIN_KW, nonlin_kwargs={"inplace": "yes"}))
    with _raises(PlansError, "arch_kwargs: dropout_op_kwargs.p: expected a number in [0, 1], found 1.5"):
        _build(dict(PLAIN_KW, dropout_op="torch.nn.Dropout2d", dropout_op_kwargs={"p": 1.5}))
    with _raises(PlansError, "arch_kwargs: norm_op_kwargs: expected an object or null, found a list"):
        _build(dict(PLAIN_KW, norm_op_kwargs=[1e-5]))


def test_unknown_block():
    with _raises(
        UnsupportedArchitectureError,
        "arch_kwargs: block: \"mypkg.MyBlock\" is not supported; allowed: "
        "dynamic_network_architectures.building_blocks.residual.BasicBlockD, "
        "dynamic_network_architectures.building_blocks.residual.BottleneckD",
    ):
        _build(dict(RESENC_KW, block="mypkg.MyBlock"), RESENC)


def test_keyword_of_the_other_architecture():
    with _raises(
        UnsupportedArchitectureError,
        "arch_kwargs: nonlin_first: is not an argument of ResidualEncoderUNet; allowed: n_stages, "
        "features_per_stage, conv_op, kernel_sizes, strides, n_conv_per_stage_decoder, n_blocks_per_stage, "
        "conv_bias, norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs, "
        "deep_supervision, block, bottleneck_channels, stem_channels",
    ):
        _build(dict(RESENC_KW, nonlin_first=True), RESENC)


def test_missing_keyword():
    kw = dict(PLAIN_KW)
    del kw["n_conv_per_stage"]
    with _raises(PlansError, "arch_kwargs: n_conv_per_stage: missing required key"):
        _build(kw)
    kw = dict(RESENC_KW, block="dynamic_network_architectures.building_blocks.residual.BottleneckD")
    with _raises(PlansError, "arch_kwargs: bottleneck_channels: missing required key (block BottleneckD needs it)"):
        _build(kw, RESENC)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"n_stages": 1}, "arch_kwargs: n_stages: expected an integer from 2 to 1000, found 1"),
        ({"n_stages": "4"}, "arch_kwargs: n_stages: expected an integer, found a string"),
        ({"features_per_stage": [4, 8, 16]},
         "arch_kwargs: features_per_stage: expected 4 entries (n_stages), found 3"),
        ({"features_per_stage": [4, 8, 16.0, 32]},
         "arch_kwargs: features_per_stage[2]: expected an integer, found 16.0"),
        ({"n_conv_per_stage_decoder": [2, 2, 2, 2]},
         "arch_kwargs: n_conv_per_stage_decoder: expected 3 entries (n_stages - 1), found 4"),
        ({"kernel_sizes": [[3, 3], [3, 3], [3, 3, 3], [3, 3]]},
         "arch_kwargs: kernel_sizes[2]: expected 2 entries (one per conv_op axis), found 3"),
        ({"strides": [[1, 1], [2, 2], [2, 0], [2, 2]]},
         "arch_kwargs: strides[2][1]: expected an integer from 1 to 2147483647, found 0"),
        ({"conv_bias": 1}, "arch_kwargs: conv_bias: expected a boolean or null, found 1"),
        ({"n_conv_per_stage": True}, "arch_kwargs: n_conv_per_stage: expected a list or an integer, "
         "found a boolean"),
        ({"nonlin_kwargs": {"negative_slope": float("nan")}},
         "value at arch_kwargs['nonlin_kwargs']['negative_slope'] is nan: JSON has no NaN or infinity"),
        ({"nonlin": "torch.nn.GELU", "nonlin_kwargs": {"approximate": "erf"}},
         "arch_kwargs: nonlin_kwargs.approximate: expected \"none\" or \"tanh\", found \"erf\""),
        ({"norm_op_kwargs": {"eps": 0}}, "arch_kwargs: norm_op_kwargs.eps: expected a positive number, found 0"),
    ],
)
def test_malformed_values(override, message):
    with _raises(PlansError, message):
        _build(dict(PLAIN_KW, **override))


def test_arch_kwargs_not_a_dict():
    with _raises(TypeError, "arch_kwargs must be a dict or a bytes-like JSON document, got list"):
        _build([("n_stages", 4)])


def _small_net():
    case = arch_cases.case_by_id("plain2d_in")
    ref = arch_cases.build_reference(case)
    net = build_network(case.network_class_name, case.arch_kwargs, case.input_channels, case.output_channels)
    return net, dict(ref.state_dict())


def test_load_weights_missing_and_unexpected_keys():
    net, sd = _small_net()
    del sd["decoder.seg_layers.0.bias"]
    with _raises(WeightsMismatchError,
                 "the weights in the state dict do not fit the network: 1 missing keys: decoder.seg_layers.0.bias"):
        load_weights(net, sd)
    net, sd = _small_net()
    sd["extra.weight"] = torch.zeros(1)
    with _raises(WeightsMismatchError,
                 "the weights in the state dict do not fit the network: 1 unexpected keys: extra.weight"):
        load_weights(net, sd)
    # a compiled network's prefixed keys are not stripped here: all keys are reported missing
    net, sd = _small_net()
    n = len(sd)
    with pytest.raises(WeightsMismatchError) as info:
        load_weights(net, {"_orig_mod." + k: v for k, v in sd.items()}, source="model.pth")
    assert str(info.value).startswith(f"the weights in model.pth do not fit the network: {n} missing keys: ")
    assert f"; {n} unexpected keys: _orig_mod." in str(info.value)


def test_load_weights_shape_mismatch():
    net, sd = _small_net()
    sd["decoder.seg_layers.2.weight"] = torch.zeros(5, 4, 1, 1)
    with _raises(WeightsMismatchError,
                 "the weights in the state dict do not fit the network: 1 keys with the wrong shape: "
                 "decoder.seg_layers.2.weight has (5, 4, 1, 1), expected (3, 4, 1, 1)"):
        load_weights(net, sd)


def test_load_weights_refuses_inconsistent_aliases():
    net, sd = _small_net()
    key = "encoder.stages.1.0.convs.0.all_modules.0.weight"
    sd[key] = sd[key] + 1
    with _raises(WeightsMismatchError,
                 "the weights in the state dict: entries 'encoder.stages.1.0.convs.0.conv.weight' and "
                 f"'{key}' name the same tensor in the network but hold different values"):
        load_weights(net, sd)


def test_load_weights_non_tensor_value():
    net, sd = _small_net()
    sd["decoder.seg_layers.0.bias"] = [0.0, 0.0, 0.0]
    with _raises(WeightsMismatchError, "the weights in the state dict do not fit the network: 1 values that are "
                                       "not tensors: decoder.seg_layers.0.bias is a list"):
        load_weights(net, sd)
