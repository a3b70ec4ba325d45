"""read_checkpoint on every checkpoint nnU-Net's own trainer wrote for the fixtures: every key,
every tensor byte-identical to torch.load(weights_only=False)'s (the baseline), metadata equal."""
import pytest
import torch

import nnunet_export
from checkpoint_helpers import assert_checkpoint_parity
from nnunet_fixtures import FIXTURE_NAMES, checkpoint_path

# Every top-level key nnU-Net's save_checkpoint writes.
ALL_KEYS = ["network_weights", "optimizer_state", "grad_scaler_state", "logging", "_best_ema",
            "current_epoch", "init_args", "trainer_name", "inference_allowed_mirroring_axes"]


def _fixture_checkpoints(nnunet_fixture, name):
    fixture = nnunet_fixture(name)
    for fold in fixture.folds:
        for checkpoint_name in fixture.checkpoint_names:
            yield checkpoint_path(fixture, fold=fold, checkpoint_name=checkpoint_name)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_every_key_matches_torch_load(nnunet_fixture, name):
    paths = list(_fixture_checkpoints(nnunet_fixture, name))
    assert paths
    for path in paths:
        reference = torch.load(path, map_location="cpu", weights_only=False)  # the unsafe baseline
        keys = [k for k in ALL_KEYS if k in reference]
        assert set(keys) == set(reference), f"{path}: keys beyond nnU-Net's {set(reference) - set(keys)}"
        ours = nnunet_export.read_checkpoint(path, keys=keys)
        assert list(ours) == keys
        assert_checkpoint_parity(ours, reference)


@pytest.mark.parametrize("name", ["3d_fullres", "multifold", "bn", "orig_mod_prefix"])
def test_default_keys_leave_out_plans_and_optimizer(nnunet_fixture, name):
    path = next(_fixture_checkpoints(nnunet_fixture, name))
    reference = torch.load(path, map_location="cpu", weights_only=False)
    ours = nnunet_export.read_checkpoint(path)
    assert set(ours) == {"network_weights", "trainer_name", "init_args",
                         "inference_allowed_mirroring_axes", "current_epoch"}
    assert "plans" not in ours["init_args"] and "dataset_json" not in ours["init_args"]
    expected_init_args = {k: v for k, v in reference["init_args"].items() if k not in ("plans", "dataset_json")}
    assert ours["init_args"] == expected_init_args
    assert_checkpoint_parity({"network_weights": ours["network_weights"]}, reference)
