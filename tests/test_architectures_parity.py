"""Parity of nnunet_export.architectures with dynamic-network-architectures (dna) / nnU-Net.

For every configuration in arch_cases.CASES: same state-dict keys (in order) and shapes, the
same alias structure, a strict load of dna's state dict, and equal eval-mode outputs at two
input sizes.
"""
import doctest
import io

import pytest
import torch

from nnunet_export.architectures import (
    PlainConvUNet,
    ResidualEncoderUNet,
    build_network,
    load_weights,
    prepare_for_inference,
)

try:
    from . import arch_cases
except ImportError:  # tests/ is not a package: pytest put tests/ on sys.path
    import arch_cases

CASES, CASE_IDS = arch_cases.CASES, arch_cases.CASE_IDS

TOL_FP32 = 1e-5


def _ours(case, **kw):
    return build_network(case.network_class_name, case.arch_kwargs, case.input_channels,
                         case.output_channels, deep_supervision=case.deep_supervision, **kw)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_state_dict_keys_order_and_shapes_match_dna(case):
    ref = arch_cases.build_reference(case)
    ours = _ours(case)
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert list(our_sd) == list(ref_sd)
    assert {k: tuple(v.shape) for k, v in our_sd.items()} == {k: tuple(v.shape) for k, v in ref_sd.items()}
    assert {k: v.dtype for k, v in our_sd.items()} == {k: v.dtype for k, v in ref_sd.items()}
    # Same alias structure: the keys that are one tensor in dna are one tensor in ours.
    assert arch_cases.alias_groups(ours) == arch_cases.alias_groups(ref)
    assert ours.decoder.encoder is ours.encoder


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_outputs_match_dna_after_strict_load(case):
    ref = arch_cases.build_reference(case)
    ours = load_weights(_ours(case), ref.state_dict(), strict=True).eval()
    for size_index in (0, 1):
        x = arch_cases.make_input(case, size_index)
        with torch.no_grad():
            expected = ref(x)
            got = ours(x.clone())
        assert isinstance(got, list) == case.deep_supervision
        # a constant output would make the comparison vacuous
        assert all(float(t.std()) > 1e-3 for t in arch_cases.as_list(expected))
        assert [t.shape for t in arch_cases.as_list(got)] == [t.shape for t in arch_cases.as_list(expected)]
        assert arch_cases.max_abs_diff(got, expected) <= TOL_FP32


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_torch_load_state_dict_strict_makes_every_alias_equal(case):
    ref = arch_cases.build_reference(case)
    ours = _ours(case)
    ours.load_state_dict(ref.state_dict(), strict=True)
    for key, value in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key


@pytest.mark.parametrize("case", [c for c in CASES if c.deep_supervision], ids=lambda c: c.id)
def test_deep_supervision_checkpoint_serves_full_resolution_head(case):
    # nnU-Net trains with deep supervision and predicts without: the same weights must give the
    # first (full-resolution) head.
    ref = arch_cases.build_reference(case)
    x = arch_cases.make_input(case, 0)
    with torch.no_grad():
        expected = ref(x)[0]
    ours = build_network(case.network_class_name, case.arch_kwargs, case.input_channels, case.output_channels)
    load_weights(ours, ref.state_dict())
    prepare_for_inference(ours)
    with torch.no_grad():
        got = ours(x)
    assert isinstance(got, torch.Tensor)
    assert arch_cases.max_abs_diff(got, expected) <= TOL_FP32


def test_meta_build_adopts_state_dict_tensors_without_copy():
    # BatchNorm: buffers (running stats, num_batches_tracked) are adopted too
    case = arch_cases.case_by_id("plain3d_bn_dropout_nlfirst_ds")
    ref = arch_cases.build_reference(case)
    sd = ref.state_dict()
    ours = _ours(case, device="meta")
    assert all(t.is_meta for t in ours.state_dict().values())
    load_weights(ours, sd)
    first = "encoder.stages.0.0.convs.0.conv.weight"
    assert ours.state_dict()[first].data_ptr() == sd[first].data_ptr()
    assert not any(t.is_meta for t in ours.state_dict().values())
    ours.eval()
    x = arch_cases.make_input(case, 0)
    with torch.no_grad():
        assert arch_cases.max_abs_diff(ours(x), ref(x)) <= TOL_FP32


def test_build_runs_no_random_init_on_real_memory(monkeypatch):
    # Every conv's reset_parameters calls init.kaiming_uniform_; under build_network it must
    # only ever see meta tensors (no time spent initialising weights that will be replaced).
    seen = []
    real = torch.nn.init.kaiming_uniform_

    def spy(tensor, *args, **kwargs):
        seen.append(tensor.is_meta)
        return real(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.nn.init, "kaiming_uniform_", spy)
    case = arch_cases.case_by_id("resenc3d_in_aniso")
    net = _ours(case)
    assert seen and all(seen)
    assert not any(t.is_meta for t in net.state_dict().values())


@pytest.mark.parametrize(
    "name, cls",
    [
        ("dynamic_network_architectures.architectures.unet.PlainConvUNet", PlainConvUNet),
        ("PlainConvUNet", PlainConvUNet),
        ("dynamic_network_architectures.architectures.unet.ResidualEncoderUNet", ResidualEncoderUNet),
        # what nnU-Net's conversion of pre-2.3 plans writes; nnU-Net recovers it by bare name
        ("dynamic_network_architectures.architectures.residual_unet.ResidualEncoderUNet", ResidualEncoderUNet),
    ],
)
def test_network_class_names_accepted(name, cls):
    case = arch_cases.case_by_id("plain2d_in" if cls is PlainConvUNet else "resenc3d_in_aniso")
    net = build_network(name, case.arch_kwargs, case.input_channels, case.output_channels, device="meta")
    assert type(net) is cls


def test_ops_given_as_torch_classes_build_the_same_network():
    case = arch_cases.case_by_id("plain3d_in_aniso")
    kw = dict(case.arch_kwargs, conv_op=torch.nn.Conv3d, norm_op=torch.nn.InstanceNorm3d, nonlin=torch.nn.LeakyReLU)
    a = build_network(case.network_class_name, kw, 2, 3, device="meta")
    b = _ours(case, device="meta")
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    assert repr(a) == repr(b)


def test_prepare_for_inference_sets_eval_no_grad_and_single_output():
    case = arch_cases.case_by_id("plain3d_bn_dropout_nlfirst_ds")
    net = _ours(case)
    assert net.training and net.decoder.deep_supervision
    assert prepare_for_inference(net) is net
    assert not net.training and not any(m.training for m in net.modules())
    assert not any(p.requires_grad for p in net.parameters())
    assert net.decoder.deep_supervision is False


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("case_id", ["plain3d_bn_dropout_nlfirst_ds", "resenc3d_bottleneck_stem"])
def test_checkpoint_round_trip_loads_strictly(case_id, device):
    # What nnUNetTrainer.save_checkpoint writes and the predictor reads back: after torch.load
    # the alias keys are views of one storage, as in a real checkpoint file.
    case = arch_cases.case_by_id(case_id)
    ref = arch_cases.build_reference(case)
    buf = io.BytesIO()
    torch.save({"network_weights": ref.state_dict(), "current_epoch": 1}, buf)
    buf.seek(0)
    weights = torch.load(buf, map_location="cpu", weights_only=True)["network_weights"]
    ours = load_weights(_ours(case, device=device), weights, strict=True).eval()
    x = arch_cases.make_input(case, 1)
    with torch.no_grad():
        assert arch_cases.max_abs_diff(ours(x), ref(x)) <= TOL_FP32


def test_build_network_docstring_example_runs():
    import nnunet_export.architectures.build as build_module

    result = doctest.testmod(build_module)
    assert result.attempted >= 2 and result.failed == 0


def test_random_configurations_match_dna():
    # A seeded sweep beyond the hand-written matrix: keys in order, alias structure, outputs.
    for case in arch_cases.random_cases(24, seed=0):
        ref = arch_cases.build_reference(case)
        ours = load_weights(_ours(case), ref.state_dict()).eval()
        assert list(ours.state_dict()) == list(ref.state_dict()), case
        assert arch_cases.alias_groups(ours) == arch_cases.alias_groups(ref), case
        x = arch_cases.make_input(case, 0)
        with torch.no_grad():
            assert arch_cases.max_abs_diff(ours(x), ref(x)) <= TOL_FP32, case
