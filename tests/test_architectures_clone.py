"""clone_with_weights: another fold's network as a copy of fold 0's module tree.

The reference is the network built and loaded from scratch for the same fold (build_network +
load_weights), which the parity tests tie to nnU-Net's own numbers.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import nnunet_export
from nnunet_export import WeightsMismatchError
from nnunet_export.architectures import load_weights, prepare_for_inference
from nnunet_export.architectures.clone import clone_with_weights
from nnunet_export.model_config import read_model_config
from nnunet_export.architectures.build import build_for_checkpoint


def _fold_weights(fixture, fold):
    path = fixture.model_dir / f"fold_{fold}" / "checkpoint_final.pth"
    return nnunet_export.read_checkpoint(path, ["network_weights"])["network_weights"]


def _built(fixture, state_dict):
    config = read_model_config(fixture.model_dir, fixture.configuration)
    built = build_for_checkpoint(config, fixture.trainer, state_dict, fixture.model_dir)
    return prepare_for_inference(load_weights(built.network, state_dict))


@pytest.fixture(params=["multifold", "resenc", "bn"])
def folds_of(request, nnunet_fixture):
    """(template network of fold 0, another fold's state dict, that fold built from scratch)."""
    fixture = nnunet_fixture(request.param)
    other = 1 if request.param == "multifold" else 0  # single-fold fixtures: fold 0 again, as a new read
    template = _built(fixture, _fold_weights(fixture, 0))
    weights = _fold_weights(fixture, other)
    return template, weights, _built(fixture, weights), fixture


def _input(fixture, network):
    config = read_model_config(fixture.model_dir, fixture.configuration)
    return torch.randn(1, config.num_input_channels, *[int(p) for p in config.patch_size],
                       generator=torch.Generator().manual_seed(3))


def test_clone_computes_exactly_what_a_fresh_build_computes(folds_of):
    template, weights, fresh, fixture = folds_of
    clone = clone_with_weights(template, weights)
    x = _input(fixture, clone)
    with torch.no_grad():
        assert torch.equal(clone(x), fresh(x))
        assert torch.equal(torch.jit.script(clone)(x), torch.jit.script(fresh)(x))
    assert list(clone.state_dict()) == list(fresh.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(clone.state_dict().values(), fresh.state_dict().values()))


def test_clone_has_its_own_modules_with_the_templates_aliasing(folds_of):
    template, weights, _, _ = folds_of
    clone = clone_with_weights(template, weights)
    template_ids = {id(m) for m in template.modules()}
    assert not any(id(m) in template_ids for m in clone.modules())
    assert [type(m) for m in clone.modules()] == [type(m) for m in template.modules()]
    assert clone.decoder.encoder is clone.encoder  # dna's decoder.encoder.* keys: one module
    assert len(list(clone.modules())) == len(list(template.modules()))


def test_clone_adopts_the_weights_without_copying_and_leaves_the_template_alone(folds_of):
    template, weights, _, _ = folds_of
    before = {k: (v.data_ptr(), v.clone()) for k, v in template.state_dict().items()}
    clone = clone_with_weights(template, weights)
    for key, value in clone.state_dict().items():
        assert value.data_ptr() == weights[key].data_ptr(), key
    for key, value in template.state_dict().items():
        assert value.data_ptr() == before[key][0] and torch.equal(value, before[key][1]), key
    assert all(isinstance(p, nn.Parameter) and not p.requires_grad for p in clone.parameters())
    assert not clone.training and not any(m.training for m in clone.modules())
    assert not clone.decoder.deep_supervision


def test_hooks_and_settings_changed_on_a_clone_stay_there(folds_of):
    template, weights, _, _ = folds_of
    clone = clone_with_weights(template, weights)
    clone.register_forward_hook(lambda *args: None)
    next(iter(clone.encoder.modules())).register_forward_pre_hook(lambda *args: None)
    clone.decoder.deep_supervision = True
    clone.train()
    assert not template._forward_hooks and not next(iter(template.encoder.modules()))._forward_pre_hooks
    assert not template.decoder.deep_supervision and not template.training


def test_mismatched_weights_are_refused_like_load_weights(folds_of):
    template, weights, _, _ = folds_of
    missing = dict(weights)
    dropped = sorted(missing)[-1]
    del missing[dropped]
    with pytest.raises(WeightsMismatchError, match="missing"):
        clone_with_weights(template, missing)
    key = next(k for k, v in weights.items() if v.dim() > 1)
    reshaped = dict(weights)
    reshaped[key] = weights[key][:1]
    with pytest.raises(WeightsMismatchError, match="shape"):
        clone_with_weights(template, reshaped)


class _WithConstant(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.register_buffer("scale", torch.full((2,), 2.0), persistent=False)
        self.settings = {"names": ["a", "b"]}

    def forward(self, x):
        return self.linear(x) * self.scale


def test_non_persistent_buffers_and_containers_are_per_clone():
    template = _WithConstant()
    weights = {"linear.weight": torch.ones(2, 3), "linear.bias": torch.zeros(2)}
    clone = clone_with_weights(template, weights)
    assert torch.equal(clone(torch.ones(1, 3)), torch.full((1, 2), 6.0))
    clone.scale.fill_(1.0)
    clone.settings["names"].append("c")
    assert torch.equal(template.scale, torch.full((2,), 2.0))
    assert template.settings == {"names": ["a", "b"]}
