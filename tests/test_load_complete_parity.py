"""load_complete's module computes what nnU-Net's own network computes, on every fixture.

References, both built by nnU-Net's own code from the same model folder:
- nnUNetPredictor.initialize_from_trained_model_folder's network, with each requested fold's
  parameters (from the predictor's list_of_parameters) loaded in turn, ``.eval()``; several folds
  are summed and divided by the count, as predict_logits_from_preprocessed_data does;
- dynamic-network-architectures' class built by nnunetv2's get_network_from_plans, with the
  fold's weights (torch.load, prefixes removed by hand) loaded strictly.
"""
from __future__ import annotations

import copy
import json
import re

import pytest
import torch

import nnunet_export
from nnunet_export.architectures import EnsembleModule, PlainConvUNet, ResidualEncoderUNet
from checkpoint_helpers import file_mappings

TOLERANCE = 1e-5
SCRIPT_TOLERANCE = 1e-6
FINAL = "checkpoint_final.pth"

SINGLE_FOLD_FIXTURES = ("2d", "3d_fullres", "cascade", "resenc", "bn", "regions", "best",
                        "orig_mod_prefix", "module_prefix")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks: intra-op threads only add contention on a shared machine (conftest restores)."""
    torch.set_num_threads(1)


def _predictor(model_dir, folds, checkpoint_name=FINAL):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False,
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_dir), folds, checkpoint_name)
    return predictor


def _nnunet_logits(predictor, x):
    """nnU-Net's fold mean: load each fold's parameters in turn, sum the logits, divide."""
    network = predictor.network
    network.eval()
    total = None
    with torch.no_grad():
        for params in predictor.list_of_parameters:
            network.load_state_dict(params)
            logits = network(x)
            total = logits if total is None else total + logits
    if len(predictor.list_of_parameters) > 1:
        total /= len(predictor.list_of_parameters)
    return total


def _strip(state_dict, prefix):
    if prefix is None:
        return dict(state_dict)
    assert all(k.startswith(prefix) for k in state_dict), "the fixture's keys carry no prefix"
    return {k[len(prefix):]: v for k, v in state_dict.items()}


def _dna_network(fixture, fold=0, checkpoint_name=FINAL):
    """dynamic-network-architectures' class via get_network_from_plans, fold weights loaded strictly."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    plans = json.loads((fixture.model_dir / "plans.json").read_text())
    config = nnunet_export.read_model_config(fixture.model_dir, fixture.configuration)
    arch = copy.deepcopy(config.architecture)
    kwargs = dict(arch["arch_kwargs"])
    if fixture.trainer == "nnUNetTrainerBN":  # what nnUNetTrainerBN.build_network_architecture does
        kwargs["norm_op"] = kwargs["norm_op"].replace("instancenorm.InstanceNorm", "batchnorm.BatchNorm")
        kwargs["norm_op_kwargs"] = {"eps": 1e-5, "affine": True}
    assert plans["configurations"]  # the folder's own plans, nothing synthesised
    network = get_network_from_plans(arch["network_class_name"], kwargs, arch["_kw_requires_import"],
                                     config.num_input_channels, config.num_output_channels,
                                     allow_init=True, deep_supervision=False)
    checkpoint = torch.load(fixture.model_dir / f"fold_{fold}" / checkpoint_name, map_location="cpu",
                            weights_only=False)
    network.load_state_dict(_strip(checkpoint["network_weights"], fixture.key_prefix), strict=True)
    return network.eval()


def _inputs(model):
    """Random inputs of patch size and of another size divisible by the total stride."""
    config = model.info.config
    patch = [int(p) for p in config.patch_size]
    factor = [1] * len(patch)
    for stride in config.architecture["arch_kwargs"]["strides"]:
        stride = [stride] * len(patch) if isinstance(stride, int) else stride
        factor = [f * int(s) for f, s in zip(factor, stride)]
    other = [p + f for p, f in zip(patch, factor)]
    assert other != patch and all(o % f == 0 for o, f in zip(other, factor))
    generator = torch.Generator().manual_seed(12345)
    return [torch.randn(1, config.num_input_channels, *shape, generator=generator) for shape in (patch, other)]


def _max_diff(a, b):
    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.double() - b.double()).abs().max())


@pytest.mark.parametrize("name", SINGLE_FOLD_FIXTURES)
def test_single_fold_matches_nnunet_and_dna(nnunet_fixture, name):
    fixture = nnunet_fixture(name)
    fold = fixture.folds[0]
    model = nnunet_export.load_complete(fixture.model_dir, folds=fold)
    assert model.info.builder == "nnunet_export" and model.info.scriptable
    dna = _dna_network(fixture, fold)
    if fixture.key_prefix is None:
        predictor = _predictor(fixture.model_dir, (fold,))
    else:
        # nnU-Net's predictor cannot load prefixed keys at all (it strips none of them) ...
        with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: "' + fixture.key_prefix):
            _predictor(fixture.model_dir, (fold,))
        predictor = None
    for x in _inputs(model):
        with torch.no_grad():
            ours = model(x)
            expected_dna = dna(x)
        assert ours.shape == (1, model.info.config.num_output_channels, *x.shape[2:])
        assert _max_diff(ours, expected_dna) <= TOLERANCE
        if predictor is not None:
            assert _max_diff(ours, _nnunet_logits(predictor, x)) <= TOLERANCE


def test_prefixed_fixtures_equal_their_unprefixed_source(nnunet_fixture):
    """... so for them the predictor reference is the fixture they were derived from."""
    source = nnunet_export.load_complete(nnunet_fixture("3d_fullres").model_dir, folds=0)
    predictor = _predictor(nnunet_fixture("3d_fullres").model_dir, (0,))
    for name in ("orig_mod_prefix", "module_prefix"):
        model = nnunet_export.load_complete(nnunet_fixture(name).model_dir, folds=0)
        assert model.info.weights_sha256 == source.info.weights_sha256
        for x in _inputs(model):
            with torch.no_grad():
                assert _max_diff(model(x), _nnunet_logits(predictor, x)) <= TOLERANCE


@pytest.mark.parametrize("folds", [(0, 1, 2), (0, 1, 2, "all"), ("all", 2)], ids=str)
def test_ensemble_equals_nnunet_fold_mean(nnunet_fixture, folds):
    fixture = nnunet_fixture("multifold")
    model = nnunet_export.load_complete(fixture.model_dir, folds=folds)
    assert isinstance(model.network, EnsembleModule) and model.network.n_networks == len(folds)
    assert model.info.folds == folds
    predictor = _predictor(fixture.model_dir, folds)
    for x in _inputs(model):
        with torch.no_grad():
            ours = model(x)
        assert _max_diff(ours, _nnunet_logits(predictor, x)) <= TOLERANCE
        # and the folds really differ (otherwise a mean proves nothing)
        with torch.no_grad():
            singles = [m(x) for m in model.network.networks]
        assert _max_diff(singles[0], singles[1]) > 1e-4


@pytest.mark.parametrize("options", [{"copy": False}, {"copy": False, "verify_crc": False}, {"verify_crc": False}],
                         ids=str)
def test_reading_options_give_the_same_model(nnunet_fixture, options):
    fixture = nnunet_fixture("multifold")
    default = nnunet_export.load_complete(fixture.model_dir, folds=(0, 1, 2))
    other = nnunet_export.load_complete(fixture.model_dir, folds=(0, 1, 2), **options)
    assert other.info.weights_sha256 == default.info.weights_sha256
    x = _inputs(other)[0]
    with torch.no_grad():
        assert torch.equal(other(x), default(x))
    assert other.info.weights_mapped is (options.get("copy") is False) and not default.info.weights_mapped
    assert ("mapped from the checkpoint files" in repr(other)) is other.info.weights_mapped
    # copy=False: every fold's parameters are views of its own checkpoint's mapping
    assert len(other.network.networks) == 3
    for fold, net in zip((0, 1, 2), other.network.networks):
        spans = file_mappings(fixture.model_dir / f"fold_{fold}" / FINAL)
        inside = [any(a <= p.data_ptr() < b for a, b in spans) for p in net.parameters()]
        assert inside, "the fold network has no parameters"
        assert all(inside) if options.get("copy") is False else not any(inside)


def test_detected_folds_ensemble_equals_nnunet_default(nnunet_fixture):
    fixture = nnunet_fixture("multifold")
    model = nnunet_export.load_complete(fixture.model_dir)  # folds=None: detect like nnU-Net
    assert model.info.folds == (0, 1, 2)  # never fold_all
    predictor = _predictor(fixture.model_dir, None)
    assert len(predictor.list_of_parameters) == 3
    x = _inputs(model)[0]
    with torch.no_grad():
        assert _max_diff(model(x), _nnunet_logits(predictor, x)) <= TOLERANCE


@pytest.mark.parametrize("name, folds", [
    ("3d_fullres", 0), ("2d", 0), ("resenc", 0), ("bn", 0), ("cascade", 0), ("regions", 0),
    ("multifold", (0, 1, 2, "all")),
], ids=str)
def test_torchscript_matches_eager(nnunet_fixture, name, folds):
    model = nnunet_export.load_complete(nnunet_fixture(name).model_dir, folds=folds)
    assert model.info.scriptable and model.info.not_scriptable_reason is None
    scripted = torch.jit.script(model.network)
    for x in _inputs(model):
        with torch.no_grad():
            eager, compiled = model(x), scripted(x)
        assert isinstance(compiled, torch.Tensor)
        assert _max_diff(eager, compiled) <= SCRIPT_TOLERANCE


@pytest.mark.parametrize("name, folds", [("3d_fullres", 0), ("bn", 0), ("multifold", (0, "all"))], ids=str)
def test_returned_module_is_ready_for_inference(nnunet_fixture, name, folds):
    fixture = nnunet_fixture(name)
    model = nnunet_export.load_complete(fixture.model_dir, folds=folds)
    assert isinstance(model, nnunet_export.NnUNetModel)
    assert not model.training and all(not m.training for m in model.modules())
    assert all(not p.requires_grad for p in model.parameters())
    assert all(p.device.type == "cpu" for p in [*model.parameters(), *model.buffers()])
    nets = model.network.networks if isinstance(model.network, EnsembleModule) else [model.network]
    assert all(isinstance(n, (PlainConvUNet, ResidualEncoderUNet)) for n in nets)
    assert all(not n.decoder.deep_supervision for n in nets)
    x = _inputs(model)[0]
    with torch.no_grad():
        out = model(x)
    assert type(out) is torch.Tensor and out.shape[2:] == x.shape[2:]  # one full-resolution tensor

    info = model.info
    expected_folds = folds if isinstance(folds, tuple) else (folds,)
    assert info.folds == expected_folds
    assert info.checkpoint_name == FINAL
    assert info.checkpoint_paths == tuple(str(fixture.model_dir / f"fold_{f}" / FINAL) for f in expected_folds)
    assert info.trainer_name == fixture.trainer
    assert info.config.configuration == fixture.configuration
    checkpoint = torch.load(fixture.model_dir / f"fold_{expected_folds[0]}" / FINAL, map_location="cpu",
                            weights_only=False)
    assert info.mirroring_axes == tuple(checkpoint["inference_allowed_mirroring_axes"])
    assert len(info.weights_sha256) == len(expected_folds)
    assert all(re.fullmatch("[0-9a-f]{64}", h) for h in info.weights_sha256), info.weights_sha256
    assert len(set(info.weights_sha256)) == len(expected_folds)  # each fold its own digest
    assert f"folds           {', '.join(str(f) for f in expected_folds)}  [{FINAL}]" in repr(model)


def test_sha256_changes_when_one_weight_changes(nnunet_fixture, tmp_path):
    import shutil

    fixture = nnunet_fixture("3d_fullres")
    copy_dir = tmp_path / fixture.model_dir.name
    shutil.copytree(fixture.model_dir, copy_dir)
    before = nnunet_export.load_complete(copy_dir, folds=0).info.weights_sha256
    again = nnunet_export.load_complete(fixture.model_dir, folds=0).info.weights_sha256
    assert before == again  # deterministic, independent of the folder

    path = copy_dir / "fold_0" / FINAL
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    weight = checkpoint["network_weights"]["decoder.seg_layers.1.bias"]
    weight[0] = torch.nextafter(weight[0], torch.tensor(float("inf")))  # one ulp of one value
    torch.save(checkpoint, path)
    after = nnunet_export.load_complete(copy_dir, folds=0).info.weights_sha256
    assert after != before

    # an encoder weight, which dna stores under four alias keys, counts as well
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    checkpoint["network_weights"]["encoder.stages.0.0.convs.0.conv.weight"].view(-1)[0] += 1
    torch.save(checkpoint, path)
    assert nnunet_export.load_complete(copy_dir, folds=0).info.weights_sha256 != after


def test_weights_sha256_ignores_key_order_layout_and_workers(nnunet_fixture):
    from nnunet_export.digests import weights_sha256

    weights = nnunet_export.read_checkpoint(nnunet_fixture("3d_fullres").model_dir / "fold_0" / FINAL,
                                            ["network_weights"])["network_weights"]
    reference = weights_sha256(weights)
    assert weights_sha256(dict(reversed(list(weights.items())))) == reference
    assert weights_sha256({k: v.clone() for k, v in weights.items()}) == reference  # aliases as copies
    assert weights_sha256(weights, max_workers=4) == reference
    big = {k: v.repeat(64, *([1] * (v.dim() - 1))) if v.dim() else v for k, v in weights.items()}
    assert weights_sha256(big, max_workers=4) == weights_sha256(big, max_workers=1)
    renamed = dict(weights)
    renamed["decoder.seg_layers.1.bias_"] = renamed.pop("decoder.seg_layers.1.bias")
    assert weights_sha256(renamed) != reference
