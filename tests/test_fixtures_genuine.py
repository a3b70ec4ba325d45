"""Every fixture variant is a genuine nnU-Net model folder: nnU-Net's own predictor loads it and
predicts, its weights were trained, and each variant has the property it is named for."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import nnunet_fixtures
from nnunet_fixtures import FIXTURE_NAMES, checkpoint_path

PREFIXED = ("orig_mod_prefix", "module_prefix")
LOADABLE = tuple(n for n in FIXTURE_NAMES if n not in PREFIXED)
CHECKPOINT_KEYS = {"network_weights", "optimizer_state", "grad_scaler_state", "logging", "_best_ema",
                   "current_epoch", "init_args", "trainer_name", "inference_allowed_mirroring_axes"}


def _load(path):
    # The baseline loader (what nnU-Net does); tests may use it, the package may not.
    return torch.load(path, map_location="cpu", weights_only=False)


def _predictor(use_mirroring: bool):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    return nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=use_mirroring,
                           perform_everything_on_device=False, device=torch.device("cpu"),
                           verbose=False, verbose_preprocessing=False, allow_tqdm=False)


def _managers(fixture):
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(load_json(str(fixture.model_dir / "plans.json")))
    dataset_json = load_json(str(fixture.model_dir / "dataset.json"))
    return plans_manager, plans_manager.get_configuration(fixture.configuration), dataset_json


def _preprocessed_input(fixture, configuration_manager, plans_manager, dataset_json) -> torch.Tensor:
    """A real preprocessed training case, cropped to a bit more than one patch per axis so the
    sliding window needs several tiles; cascade input gets the one-hot previous-stage channels."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.label_handling.label_handling import convert_labelmap_to_one_hot

    folder = str(fixture.preprocessed_dir / fixture.dataset_name / configuration_manager.data_identifier)
    dataset = infer_dataset_class(folder)(folder)
    data, seg, _, _ = dataset.load_case(sorted(dataset.identifiers)[0])
    data, seg = np.asarray(data[:]), np.asarray(seg[:])
    patch = configuration_manager.patch_size
    spatial = data.shape[1:]
    crop = [min(s, p + p // 2) for s, p in zip(spatial[-len(patch):], patch)]
    window = (slice(None),) + tuple(slice(0, 3) for _ in spatial[:-len(patch)]) + tuple(slice(0, c) for c in crop)
    data, seg = data[window], seg[window]
    if configuration_manager.previous_stage_name is not None:
        label_manager = plans_manager.get_label_manager(dataset_json)
        one_hot = convert_labelmap_to_one_hot(seg[0], label_manager.foreground_labels, output_dtype=data.dtype)
        data = np.concatenate([data, one_hot])
    return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))


def test_fixture_names_are_the_published_set():
    assert FIXTURE_NAMES == ("2d", "3d_fullres", "cascade", "resenc", "bn", "regions", "multifold",
                             "best", "orig_mod_prefix", "module_prefix")


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_folder_layout_is_nnunets(nnunet_fixture, name):
    fixture = nnunet_fixture(name)
    assert fixture.model_dir.name == f"{fixture.trainer}__{fixture.plans_name}__{fixture.configuration}"
    assert fixture.model_dir.parent == fixture.results_dir / fixture.dataset_name
    for json_name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        assert (fixture.model_dir / json_name).is_file()
    fold_dirs = sorted(p.name for p in fixture.model_dir.iterdir() if p.name.startswith("fold_"))
    assert fold_dirs == sorted(f"fold_{f}" for f in fixture.folds)
    for fold in fixture.folds:
        present = sorted(p.name for p in (fixture.model_dir / f"fold_{fold}").glob("checkpoint_*.pth"))
        assert present == sorted(fixture.checkpoint_names)
    assert (fixture.raw_dir / fixture.dataset_name / "dataset.json").is_file()
    assert (fixture.preprocessed_dir / fixture.dataset_name / f"{fixture.plans_name}.json").is_file()


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_checkpoint_is_what_the_trainer_saved(nnunet_fixture, name):
    fixture = nnunet_fixture(name)
    for fold in fixture.folds:
        for checkpoint_name in fixture.checkpoint_names:
            checkpoint = _load(checkpoint_path(fixture, fold=fold, checkpoint_name=checkpoint_name))
            assert set(checkpoint) == CHECKPOINT_KEYS
            assert checkpoint["trainer_name"] == fixture.trainer
            assert checkpoint["init_args"]["configuration"] == fixture.configuration
            assert checkpoint["init_args"]["fold"] == fold
            assert checkpoint["init_args"]["plans"]["plans_name"] == fixture.plans_name
            assert checkpoint["grad_scaler_state"] is None  # trained on the CPU
            assert checkpoint["current_epoch"] >= 1
            assert len(checkpoint["optimizer_state"]["state"]) > 0  # SGD momentum buffers exist


@pytest.mark.parametrize("use_mirroring", [False, True], ids=["no_mirroring", "mirroring"])
@pytest.mark.parametrize("name", LOADABLE)
def test_nnunet_predictor_loads_and_predicts(nnunet_fixture, name, use_mirroring):
    fixture = nnunet_fixture(name)
    predictor = _predictor(use_mirroring)
    predictor.initialize_from_trained_model_folder(str(fixture.model_dir), use_folds=fixture.folds,
                                                   checkpoint_name=fixture.checkpoint_names[-1])
    data = _preprocessed_input(fixture, predictor.configuration_manager, predictor.plans_manager,
                               predictor.dataset_json)
    with torch.no_grad():
        logits = predictor.predict_logits_from_preprocessed_data(data)
    label_manager = predictor.label_manager
    expected_channels = len(label_manager.foreground_regions) if label_manager.has_regions \
        else len(label_manager.all_labels)
    assert logits.shape == (expected_channels, *data.shape[1:])
    assert torch.isfinite(logits).all()
    assert logits.abs().sum() > 0


def _fresh_network(fixture):
    """The network nnU-Net builds from the same plans, freshly He-initialised."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    plans_manager, configuration_manager, dataset_json = _managers(fixture)
    trainer_class = recursive_find_trainer_class_by_name(fixture.trainer)
    return trainer_class.build_network_architecture(
        plans_manager, configuration_manager,
        determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=True)


def _strip(weights, prefix):
    return {k[len(prefix):] if prefix and k.startswith(prefix) else k: v for k, v in weights.items()}


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_weights_are_trained_not_initial(nnunet_fixture, name):
    fixture = nnunet_fixture(name)
    fresh = _fresh_network(fixture).state_dict()
    # nnU-Net's He init zeroes conv biases; norm affine weights start constant (1, or 0 for the
    # ResEnc norm before each residual add). A trained network no longer has them there.
    conv_biases = [k for k in fresh if re.search(r"\.conv\.bias$", k)]
    norm_weights = [k for k in fresh if re.search(r"\.norm\.weight$", k)]
    assert conv_biases and norm_weights
    assert all(torch.count_nonzero(fresh[k]) == 0 for k in conv_biases)
    assert all(torch.equal(fresh[k], torch.full_like(fresh[k], fresh[k][0].item())) for k in norm_weights)
    for fold in fixture.folds:
        trained = _strip(_load(checkpoint_path(fixture, fold=fold))["network_weights"], fixture.key_prefix)
        assert {k: v.shape for k, v in trained.items()} == {k: v.shape for k, v in fresh.items()}
        assert all(torch.count_nonzero(trained[k]) > 0 for k in conv_biases)
        assert all(not torch.equal(trained[k], fresh[k]) for k in norm_weights)


def test_bn_fixture_has_trained_running_statistics(nnunet_fixture):
    weights = _load(checkpoint_path(nnunet_fixture("bn")))["network_weights"]
    means = [v for k, v in weights.items() if k.endswith("running_mean")]
    variances = [v for k, v in weights.items() if k.endswith("running_var")]
    counts = [v for k, v in weights.items() if k.endswith("num_batches_tracked")]
    assert means and len(means) == len(variances) == len(counts)
    assert all(torch.count_nonzero(m) > 0 for m in means)  # BatchNorm starts at mean 0 ...
    assert all(not torch.allclose(v, torch.ones_like(v)) for v in variances)  # ... and variance 1
    assert all(c.dtype == torch.int64 and int(c) > 0 for c in counts)


def test_plain_fixture_has_no_batchnorm(nnunet_fixture):
    weights = _load(checkpoint_path(nnunet_fixture("3d_fullres")))["network_weights"]
    assert not any(k.endswith("running_mean") for k in weights)


@pytest.mark.parametrize("name", PREFIXED)
def test_prefixed_fixture_keys_and_nnunet_refuses_them(nnunet_fixture, name):
    fixture = nnunet_fixture(name)
    base = _load(checkpoint_path(nnunet_fixture("3d_fullres")))["network_weights"]
    prefixed = _load(checkpoint_path(fixture))["network_weights"]
    assert fixture.key_prefix in ("_orig_mod.", "module.")
    assert all(k.startswith(fixture.key_prefix) for k in prefixed)
    stripped = _strip(prefixed, fixture.key_prefix)
    assert list(stripped) == list(base)
    assert all(torch.equal(stripped[k], base[k]) for k in base)
    # nnU-Net's predictor strips no prefix: its strict load_state_dict fails (what nnunet_export fixes).
    with pytest.raises(RuntimeError) as refused:
        _predictor(False).initialize_from_trained_model_folder(str(fixture.model_dir), use_folds=fixture.folds)
    message = str(refused.value)
    assert message.startswith("Error(s) in loading state_dict for PlainConvUNet")
    assert 'Missing key(s) in state_dict: "encoder.stages.0.0.convs.0.conv.weight"' in message
    assert f'Unexpected key(s) in state_dict: "{fixture.key_prefix}encoder.stages.0.0.convs.0.conv.weight"' in message


def test_best_and_final_are_different_training_states(nnunet_fixture):
    fixture = nnunet_fixture("best")
    assert fixture.checkpoint_names == ("checkpoint_final.pth", "checkpoint_best.pth")
    final = _load(checkpoint_path(fixture, checkpoint_name="checkpoint_final.pth"))
    best = _load(checkpoint_path(fixture, checkpoint_name="checkpoint_best.pth"))
    assert best["current_epoch"] < final["current_epoch"]
    assert any(not torch.equal(best["network_weights"][k], v) for k, v in final["network_weights"].items())


def test_multifold_folds_differ_and_autodetection_skips_fold_all(nnunet_fixture):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    fixture = nnunet_fixture("multifold")
    assert fixture.folds == (0, 1, 2, "all")
    weights = [_load(checkpoint_path(fixture, fold=f))["network_weights"] for f in fixture.folds]
    key = next(k for k in weights[0] if k.endswith("conv.weight"))
    for i in range(len(weights)):
        for j in range(i + 1, len(weights)):
            assert not torch.equal(weights[i][key], weights[j][key])
    detected = nnUNetPredictor.auto_detect_available_folds(str(fixture.model_dir), "checkpoint_final.pth")
    assert sorted(detected) == [0, 1, 2]


def test_cascade_has_both_stages(nnunet_fixture):
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    fixture = nnunet_fixture("cascade")
    lowres_dir = fixture.extra_model_dirs["3d_lowres"]
    assert lowres_dir.name == "nnUNetTrainer__nnUNetPlans__3d_lowres"
    assert (lowres_dir / "fold_0" / "checkpoint_final.pth").is_file()
    # nnU-Net's own lowres validation wrote the segmentations the cascade stage trained on.
    assert any((lowres_dir / "predicted_next_stage" / "3d_cascade_fullres").iterdir())
    plans_manager, configuration_manager, dataset_json = _managers(fixture)
    assert configuration_manager.previous_stage_name == "3d_lowres"
    assert plans_manager.get_configuration("3d_lowres").next_stage_names == ["3d_cascade_fullres"]
    # one image channel plus one-hot of the two foreground labels
    assert determine_num_input_channels(plans_manager, configuration_manager, dataset_json) == 3


def test_regions_fixture_is_region_based(nnunet_fixture):
    fixture = nnunet_fixture("regions")
    plans_manager, _, dataset_json = _managers(fixture)
    assert dataset_json["regions_class_order"] == [1, 2]
    assert dataset_json["labels"]["whole"] == [1, 2]
    label_manager = plans_manager.get_label_manager(dataset_json)
    assert label_manager.has_regions and label_manager.num_segmentation_heads == 2
    assert len(dataset_json["channel_names"]) == 2


def test_resenc_fixture_uses_residual_encoder(nnunet_fixture):
    _, configuration_manager, _ = _managers(nnunet_fixture("resenc"))
    assert configuration_manager.network_arch_class_name.endswith(".ResidualEncoderUNet")
    weights = _load(checkpoint_path(nnunet_fixture("resenc")))["network_weights"]
    assert any(".stem." in k for k in weights) and any(".blocks." in k for k in weights)


def test_2d_fixture_uses_2d_convolutions(nnunet_fixture):
    _, configuration_manager, _ = _managers(nnunet_fixture("2d"))
    assert len(configuration_manager.patch_size) == 2
    weights = _load(checkpoint_path(nnunet_fixture("2d")))["network_weights"]
    assert weights["encoder.stages.0.0.convs.0.conv.weight"].ndim == 4


def test_shim_lets_nnunet_find_variant_trainers():
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    assert recursive_find_trainer_class_by_name("nnUNetTrainerBN").__name__ == "nnUNetTrainerBN"


def test_cached_fixtures_are_not_rebuilt(nnunet_fixture, monkeypatch):
    nnunet_fixture("3d_fullres")  # built (or found) through the session fixture

    def refuse(*args, **kwargs):
        raise AssertionError("cached fixture was rebuilt")

    monkeypatch.setattr(nnunet_fixtures, "_run_builder", refuse)
    fixture = nnunet_fixtures.get_fixture("3d_fullres")
    assert fixture.model_dir.is_dir()
    # Builds happen in .tmp-* folders renamed into place: none may be left behind.
    key_dir = fixture.results_dir.parent.parent.parent
    assert key_dir.name == nnunet_fixtures.cache_key()
    assert not list(key_dir.glob("*/.tmp-*"))


def test_checkpoint_path_rejects_unknown_fold_and_checkpoint(nnunet_fixture):
    fixture = nnunet_fixture("3d_fullres")
    with pytest.raises(ValueError, match="fold 3 is not one of fixture '3d_fullres'"):
        checkpoint_path(fixture, fold=3)
    with pytest.raises(ValueError, match="checkpoint 'checkpoint_best.pth' is not one of"):
        checkpoint_path(fixture, checkpoint_name="checkpoint_best.pth")


def test_get_fixture_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown fixture 'nope'"):
        nnunet_fixtures.get_fixture("nope")
    with pytest.raises(ValueError, match="unknown fixture size 'huge'"):
        nnunet_fixtures.get_fixture("3d_fullres", size="huge")
