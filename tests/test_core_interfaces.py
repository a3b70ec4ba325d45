"""The C core's direct interfaces: check_arch_kwargs, in-memory read_plans, default checkpoint keys."""
import json
import re

import pytest

import nnunet_export
from nnunet_export import PlansError, UnsupportedArchitectureError, _core, architectures, checkpoint

try:
    from . import arch_cases
except ImportError:  # tests/ is not a package: pytest put tests/ on sys.path
    import arch_cases

RESENC_KW = arch_cases.case_by_id("resenc3d_in_aniso").arch_kwargs
PLAIN_KW = arch_cases.case_by_id("plain2d_in").arch_kwargs


def _raises(exc, message):
    return pytest.raises(exc, match="^" + re.escape(message) + "$")


def test_unsupported_architecture_error_is_one_class():
    assert nnunet_export.UnsupportedArchitectureError is _core.UnsupportedArchitectureError
    assert architectures.UnsupportedArchitectureError is _core.UnsupportedArchitectureError
    assert issubclass(UnsupportedArchitectureError, nnunet_export.ExportError)


def test_default_checkpoint_keys_live_in_the_core():
    assert checkpoint.DEFAULT_KEYS is _core.DEFAULT_CHECKPOINT_KEYS
    assert _core.DEFAULT_CHECKPOINT_KEYS == (
        "network_weights", "trainer_name", "init_args", "inference_allowed_mirroring_axes", "current_epoch")


def test_check_arch_kwargs_accepts_valid_dicts_and_documents():
    assert _core.check_arch_kwargs(arch_cases.PLAIN, PLAIN_KW) is None
    assert _core.check_arch_kwargs(arch_cases.RESENC, json.dumps(RESENC_KW).encode()) is None
    assert _core.check_arch_kwargs("ResidualEncoderUNet", bytearray(json.dumps(RESENC_KW).encode())) is None


def test_check_arch_kwargs_names_the_source():
    doc = json.dumps(dict(PLAIN_KW, n_stages=1001)).encode()
    with _raises(PlansError, "my_plans.json: n_stages: expected an integer from 2 to 1000, found 1001"):
        _core.check_arch_kwargs(arch_cases.PLAIN, doc, source="my_plans.json")
    with _raises(PlansError, "arch_kwargs:1:3: malformed JSON: parsing stopped at this position"):
        _core.check_arch_kwargs(arch_cases.PLAIN, b"{,}")


def test_check_arch_kwargs_resenc_rules():
    bottleneck = "dynamic_network_architectures.building_blocks.residual.BottleneckD"
    with _raises(PlansError, "arch_kwargs: bottleneck_channels: missing required key (block BottleneckD needs it)"):
        _core.check_arch_kwargs(arch_cases.RESENC, dict(RESENC_KW, block=bottleneck))
    assert _core.check_arch_kwargs(arch_cases.RESENC, dict(RESENC_KW, block=bottleneck, bottleneck_channels=4)) is None
    with _raises(PlansError, "arch_kwargs: stem_channels: expected an integer from 1 to 2147483647, found 0"):
        _core.check_arch_kwargs(arch_cases.RESENC, dict(RESENC_KW, stem_channels=0))
    with _raises(PlansError, "arch_kwargs: bottleneck_channels: expected 4 entries (n_stages), found 2"):
        _core.check_arch_kwargs(arch_cases.RESENC, dict(RESENC_KW, bottleneck_channels=[4, 4]))


def test_build_network_takes_allowlisted_classes():
    import torch

    net = architectures.build_network(
        architectures.PlainConvUNet, dict(PLAIN_KW, conv_op=torch.nn.Conv2d, nonlin=torch.nn.ReLU, nonlin_kwargs=None),
        1, 2, device="meta")
    assert isinstance(net, architectures.PlainConvUNet)
    with _raises(UnsupportedArchitectureError,
                 "arch_kwargs: nonlin: \"torch.nn.modules.activation.Tanh\" is not supported; allowed: "
                 "torch.nn.modules.activation.LeakyReLU, torch.nn.modules.activation.ReLU, "
                 "torch.nn.modules.activation.ELU, torch.nn.modules.activation.GELU, "
                 "torch.nn.modules.activation.PReLU, torch.nn.modules.activation.SiLU, null"):
        architectures.build_network("PlainConvUNet", dict(PLAIN_KW, nonlin=torch.nn.Tanh), 1, 2, device="meta")


def _minimal_plans():
    return {"dataset_name": "D", "plans_name": "P", "configurations": {"2d": {}, "3d_fullres": {}}}


def test_plans_configurations_from_bytes():
    doc = json.dumps(_minimal_plans()).encode()
    assert _core.plans_configurations(doc) == ["2d", "3d_fullres"]
    assert _core.plans_configurations(memoryview(doc), plans_source="x.json") == ["2d", "3d_fullres"]
    with _raises(PlansError, "plans.json (in memory): expected an object at the top level, found a list"):
        _core.plans_configurations(b"[]")
    with _raises(PlansError, "x.json: configurations: missing required key"):
        _core.plans_configurations(b"{}", plans_source="x.json")


def test_read_plans_from_bytes_names_each_source():
    plans = json.dumps(_minimal_plans()).encode()
    with _raises(PlansError, "dataset.json (in memory): expected an object at the top level, found a number"):
        _core.read_plans(plans, b"3", "2d")
    with _raises(PlansError, "ds.json: expected an object at the top level, found a list"):
        _core.read_plans(plans, b"[]", "2d", dataset_source="ds.json")
    with _raises(PlansError, "mine/plans.json: configurations: unknown configuration \"3d\"; available: 2d, 3d_fullres"):
        _core.read_plans(plans, b"{}", "3d", plans_source="mine/plans.json")
    with _raises(PlansError, "plans.json (in memory): configurations.2d.patch_size: missing required key"):
        _core.read_plans(plans, b"{}", "2d", dataset_source="ds")
