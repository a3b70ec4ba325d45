"""Parity: every ModelConfig field equals what nnunetv2's own classes make of the same files."""
import dataclasses
import json
import os

import pytest

import nnunet_export
import nnunet_fixtures
from plans_cases import nnunet_reference, variants, write_model

VARIANTS = variants()


def as_json(value):
    # Compares int vs float too (1 == 1.0 in Python, but not in the exported metadata).
    return json.dumps(value, sort_keys=True)


def assert_same(model_dir, configuration):
    ours = nnunet_export.read_model_config(model_dir, configuration).to_dict()
    expected = nnunet_reference(model_dir, configuration)
    assert set(ours) == set(expected)
    for field in expected:
        assert ours[field] == expected[field], field
        assert as_json(ours[field]) == as_json(expected[field]), field


@pytest.mark.parametrize("variant", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_every_configuration_matches_nnunet(tmp_path, variant):
    _, plans, dataset = variant
    model_dir = write_model(tmp_path / "model", plans, dataset)
    for configuration in plans["configurations"]:
        assert_same(model_dir, configuration)


def test_variants_cover_the_interesting_cases(tmp_path):
    # Guards the parity matrix itself: each special case must really occur in it.
    seen = set()
    for name, plans, dataset in VARIANTS:
        model_dir = write_model(tmp_path / name, plans, dataset)
        for configuration in plans["configurations"]:
            cfg = nnunet_export.read_model_config(model_dir, configuration)
            cls = cfg.architecture["network_class_name"].rsplit(".", 1)[1]
            seen.add(("old" if cfg.converted_from_old_plans else "modern", cls, cfg.num_dimensions))
            seen.add("cascade" if cfg.previous_stage else "single")
            seen.add("regions" if cfg.has_regions else "labels")
            seen.add("ignore" if cfg.ignore_label is not None else "no ignore")
    for item in [("old", "PlainConvUNet", 2), ("old", "PlainConvUNet", 3), ("old", "ResidualEncoderUNet", 3),
                 ("modern", "PlainConvUNet", 3), ("modern", "ResidualEncoderUNet", 2),
                 "cascade", "regions", "ignore"]:
        assert item in seen, item


def test_cascade_adds_one_input_per_foreground_label(tmp_path):
    name, plans, dataset = next(v for v in VARIANTS if v[0] == "regions")
    model_dir = write_model(tmp_path / "m", plans, dataset)
    fullres = nnunet_export.read_model_config(model_dir, "3d_fullres")
    cascade = nnunet_export.read_model_config(model_dir, "3d_cascade_fullres")
    assert cascade.num_input_channels == fullres.num_input_channels + len(fullres.foreground_labels)
    assert cascade.previous_stage == "3d_lowres"


def test_model_config_is_frozen_and_json_ready(tmp_path):
    _, plans, dataset = VARIANTS[0]
    cfg = nnunet_export.read_model_config(write_model(tmp_path / "m", plans, dataset), "3d_fullres")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.patch_size = [1, 1, 1]
    assert json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()
    assert [f.name for f in dataclasses.fields(nnunet_export.ModelConfig)] == list(cfg.to_dict())


def test_fold_folder_is_accepted(tmp_path):
    _, plans, dataset = VARIANTS[0]
    model_dir = write_model(tmp_path / "m", plans, dataset)
    os.makedirs(os.path.join(model_dir, "fold_0"))
    assert nnunet_export.read_model_config(os.path.join(model_dir, "fold_0"), "2d") == \
        nnunet_export.read_model_config(model_dir, "2d")


def test_configuration_defaults_to_the_checkpoints(tmp_path, monkeypatch):
    # read_model_config takes the configuration from the safe checkpoint reader.
    _, plans, dataset = VARIANTS[0]
    model_dir = write_model(tmp_path / "m", plans, dataset)
    os.makedirs(os.path.join(model_dir, "fold_1"))
    os.makedirs(os.path.join(model_dir, "fold_0"))
    open(os.path.join(model_dir, "fold_0", "checkpoint_best.pth"), "wb").close()
    open(os.path.join(model_dir, "fold_1", "checkpoint_final.pth"), "wb").close()
    calls = []

    def fake_read_checkpoint(path, keys):
        calls.append((os.fspath(path), keys))
        return {"init_args": {"configuration": "3d_lowres"}}

    monkeypatch.setattr(nnunet_export.model_config, "read_checkpoint", fake_read_checkpoint)
    assert nnunet_export.read_model_config(model_dir).configuration == "3d_lowres"
    # checkpoint_final.pth wins over checkpoint_best.pth, as nnU-Net's default checkpoint_name.
    assert calls == [(os.path.join(model_dir, "fold_1", "checkpoint_final.pth"), ["init_args"])]
    assert nnunet_export.read_model_config(os.path.join(model_dir, "fold_0")).configuration == "3d_lowres"
    assert calls[-1][0] == os.path.join(model_dir, "fold_0", "checkpoint_best.pth")


def test_fixture_factory_models_match_nnunet(nnunet_fixture):
    # Real trained model folders from the shared fixture factory.
    checked = 0
    for name in nnunet_fixtures.FIXTURE_NAMES:
        model_dir = str(nnunet_fixture(name).model_dir)
        with open(os.path.join(model_dir, "plans.json")) as f:
            configurations = list(json.load(f)["configurations"])
        for configuration in configurations:
            assert_same(model_dir, configuration)
            checked += 1
        # Default configuration: the one in the folder name <Trainer>__<Plans>__<configuration>.
        trained_with = os.path.basename(os.path.normpath(model_dir)).split("__")[-1]
        assert nnunet_export.read_model_config(model_dir).configuration == trained_with
    assert checked > len(nnunet_fixtures.FIXTURE_NAMES)  # several configurations per plans file


def test_public_surface():
    assert {"read_model_config", "ModelConfig", "PlansError"} <= set(nnunet_export.__all__)
    assert issubclass(nnunet_export.PlansError, nnunet_export.ExportError)


def test_docstring_example_runs():
    import doctest

    from nnunet_export import model_config

    result = doctest.testmod(model_config)
    assert result.attempted > 0 and result.failed == 0
