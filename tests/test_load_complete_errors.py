"""load_complete refuses what does not fit, with messages that name the files, folds and keys.

Every broken model folder here is a copy of a real fixture (written by nnU-Net) with one thing
changed: plans.json edited, or a checkpoint re-saved with torch.save / copied between folds.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import nnunet_export
from nnunet_export import FoldMismatchError, ModelFolderError, UnsupportedArchitectureError, WeightsMismatchError

FINAL = "checkpoint_final.pth"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # conftest restores it


def _copy(fixture, tmp_path, name=None) -> Path:
    target = tmp_path / (name or fixture.model_dir.name)
    shutil.copytree(fixture.model_dir, target)
    return target


def _resave(path: Path, edit) -> None:
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    edit(checkpoint)
    torch.save(checkpoint, path)


def _edit_plans(model_dir: Path, configuration: str, edit) -> None:
    plans = json.loads((model_dir / "plans.json").read_text())
    edit(plans["configurations"][configuration]["architecture"])
    (model_dir / "plans.json").write_text(json.dumps(plans, indent=2))


def _expected_mismatch(model_dir: Path, configuration: str, checkpoint: Path) -> str:
    """The message, from nnU-Net's own network for the (edited) plans and torch.load's weights."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    config = nnunet_export.read_model_config(model_dir, configuration)
    arch = config.architecture
    network = get_network_from_plans(arch["network_class_name"], dict(arch["arch_kwargs"]),
                                     arch["_kw_requires_import"], config.num_input_channels,
                                     config.num_output_channels, allow_init=False, deep_supervision=False)
    expected = network.state_dict()
    weights = torch.load(checkpoint, map_location="cpu", weights_only=False)["network_weights"]
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    shaped = [f"{k} has {tuple(weights[k].shape)}, expected {tuple(expected[k].shape)}"
              for k in expected if k in weights and weights[k].shape != expected[k].shape]
    parts = []
    for title, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                        ("keys with the wrong shape", shaped)):
        if keys:
            more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
            parts.append(f"{len(keys)} {title}: {', '.join(keys[:5])}{more}")
    assert parts, "the edit did not change the network"
    return f"the weights in {checkpoint} do not fit the network: " + "; ".join(parts)


def _raises_exactly(error, message, call):
    with pytest.raises(error) as info:
        call()
    assert str(info.value) == message
    return info.value


# --- wrong plans -----------------------------------------------------------------------------

def test_features_per_stage_edited_lists_mis_shaped_keys(nnunet_fixture, tmp_path):
    model_dir = _copy(nnunet_fixture("3d_fullres"), tmp_path)

    def halve_last(arch):
        features = arch["arch_kwargs"]["features_per_stage"]
        features[-1] = features[-1] // 2
    _edit_plans(model_dir, "3d_fullres", halve_last)
    checkpoint = model_dir / "fold_0" / FINAL
    message = _expected_mismatch(model_dir, "3d_fullres", checkpoint)
    assert "keys with the wrong shape: " in message and "missing" not in message
    _raises_exactly(WeightsMismatchError, message, lambda: nnunet_export.load_complete(model_dir, folds=0))


def test_one_stage_fewer_lists_unexpected_keys(nnunet_fixture, tmp_path):
    model_dir = _copy(nnunet_fixture("3d_fullres"), tmp_path)

    def drop_stage(arch):
        kw = arch["arch_kwargs"]
        kw["n_stages"] -= 1
        for key in ("features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage"):
            kw[key] = kw[key][:-1]
        kw["n_conv_per_stage_decoder"] = kw["n_conv_per_stage_decoder"][:-1]
    _edit_plans(model_dir, "3d_fullres", drop_stage)
    checkpoint = model_dir / "fold_0" / FINAL
    message = _expected_mismatch(model_dir, "3d_fullres", checkpoint)
    assert "unexpected keys: " in message and "(+" in message
    _raises_exactly(WeightsMismatchError, message, lambda: nnunet_export.load_complete(model_dir, folds=0))


def test_plain_checkpoint_against_resenc_plans(nnunet_fixture, tmp_path):
    model_dir = _copy(nnunet_fixture("3d_fullres"), tmp_path)
    shutil.copy(nnunet_fixture("resenc").model_dir / "plans.json", model_dir / "plans.json")
    checkpoint = model_dir / "fold_0" / FINAL
    message = _expected_mismatch(model_dir, "3d_fullres", checkpoint)
    error = _raises_exactly(WeightsMismatchError, message,
                            lambda: nnunet_export.load_complete(model_dir, folds=0))
    assert "missing keys: encoder.stem.convs.0.conv.weight" in str(error)
    assert "unexpected keys: encoder.stages.0.0.convs.0.conv.weight" in str(error)


@pytest.mark.parametrize("name", ["orig_mod_prefix", "module_prefix"])
def test_prefixed_keys_load_and_match_unprefixed(nnunet_fixture, name):
    fixture = nnunet_fixture(name)
    raw = torch.load(fixture.model_dir / "fold_0" / FINAL, map_location="cpu", weights_only=False)
    assert all(k.startswith(fixture.key_prefix) for k in raw["network_weights"])
    model = nnunet_export.load_complete(fixture.model_dir, folds=0)
    own = model.network.state_dict()
    assert set(own) == {k[len(fixture.key_prefix):] for k in raw["network_weights"]}
    for key, value in raw["network_weights"].items():
        assert torch.equal(own[key[len(fixture.key_prefix):]], value)


# --- folds -----------------------------------------------------------------------------------

def test_fold_spellings(nnunet_fixture):
    model_dir = nnunet_fixture("multifold").model_dir
    for folds, expected in ((1, (1,)), ("all", ("all",)), ("2", (2,)), ([2, "0"], (2, 0)),
                            ((0, 1, 2, "all"), (0, 1, 2, "all"))):
        info = nnunet_export.load_complete(model_dir, folds=folds).info
        assert info.folds == expected
        assert info.checkpoint_paths == tuple(str(model_dir / f"fold_{f}" / FINAL) for f in expected)


def test_fold_folder_path_selects_that_fold(nnunet_fixture):
    model_dir = nnunet_fixture("multifold").model_dir
    for fold in (1, "all"):
        model = nnunet_export.load_complete(model_dir / f"fold_{fold}")
        assert model.info.folds == (fold,)
        assert model.info.model_dir == str(model_dir)
        assert model.info.weights_sha256 == nnunet_export.load_complete(model_dir, folds=fold).info.weights_sha256


def test_fold_folder_path_and_other_folds_conflict(nnunet_fixture):
    model_dir = nnunet_fixture("multifold").model_dir
    assert nnunet_export.load_complete(model_dir / "fold_1", folds=1).info.folds == (1,)
    _raises_exactly(ModelFolderError,
                    f"{str(model_dir / 'fold_1')!r} names fold 1 but folds=[0, 2] was given: pass the "
                    "model folder to choose other folds",
                    lambda: nnunet_export.load_complete(model_dir / "fold_1", folds=[0, 2]))


def test_auto_detection_without_fold_n_is_a_clear_error(nnunet_fixture, tmp_path):
    model_dir = _copy(nnunet_fixture("multifold"), tmp_path)
    for fold in (0, 1, 2):
        shutil.rmtree(model_dir / f"fold_{fold}")
    _raises_exactly(ModelFolderError,
                    f"no fold_N folder with 'checkpoint_final.pth' in {str(model_dir)!r}: pass folds= "
                    "explicitly (e.g. folds='all') or check checkpoint_name",
                    lambda: nnunet_export.load_complete(model_dir))
    assert nnunet_export.load_complete(model_dir, folds="all").info.folds == ("all",)


def test_missing_fold_and_missing_checkpoint(nnunet_fixture):
    model_dir = nnunet_fixture("3d_fullres").model_dir
    _raises_exactly(ModelFolderError,
                    f"checkpoint {str(model_dir / 'fold_3' / FINAL)!r} does not exist; that fold folder does not exist",
                    lambda: nnunet_export.load_complete(model_dir, folds=[0, 3]))
    best = model_dir / "fold_0" / "checkpoint_best.pth"
    _raises_exactly(ModelFolderError,
                    f"checkpoint {str(best)!r} does not exist; that fold has ['checkpoint_final.pth']",
                    lambda: nnunet_export.load_complete(model_dir, folds=0, checkpoint_name="checkpoint_best.pth"))
    _raises_exactly(ModelFolderError, f"model folder {str(model_dir / 'nope')!r} does not exist",
                    lambda: nnunet_export.load_complete(model_dir / "nope"))


def test_best_checkpoint_is_a_different_state(nnunet_fixture):
    model_dir = nnunet_fixture("best").model_dir
    final = nnunet_export.load_complete(model_dir, folds=0)
    best = nnunet_export.load_complete(model_dir, folds=0, checkpoint_name="checkpoint_best.pth")
    assert best.info.checkpoint_name == "checkpoint_best.pth"
    assert best.info.weights_sha256 != final.info.weights_sha256


def _set_fold(fold):
    def edit(checkpoint):
        checkpoint["init_args"]["fold"] = fold
    return edit


@pytest.mark.parametrize("source, what, theirs, ours", [
    ("2d", "configuration", "'2d'", "'3d_fullres'"),
    ("bn", "trainer_name", "'nnUNetTrainerBN'", "'nnUNetTrainer'"),
])
def test_folds_that_disagree_name_both(nnunet_fixture, tmp_path, source, what, theirs, ours):
    model_dir = _copy(nnunet_fixture("multifold"), tmp_path)
    fold_1 = model_dir / "fold_1" / FINAL
    shutil.copy(nnunet_fixture(source).model_dir / "fold_0" / FINAL, fold_1)
    _resave(fold_1, _set_fold(1))  # so the wrong-fold-folder check is not what fires
    fold_0 = model_dir / "fold_0" / FINAL
    _raises_exactly(FoldMismatchError,
                    f"fold 1 has {what} {theirs} but fold 0 has {ours} ({fold_1} vs {fold_0})",
                    lambda: nnunet_export.load_complete(model_dir, folds=(0, 1)))


def test_fold_with_other_weights_same_trainer_and_configuration(nnunet_fixture, tmp_path):
    model_dir = _copy(nnunet_fixture("multifold"), tmp_path)
    fold_2 = model_dir / "fold_2" / FINAL
    shutil.copy(nnunet_fixture("regions").model_dir / "fold_0" / FINAL, fold_2)  # other label count
    _resave(fold_2, _set_fold(2))
    own = torch.load(model_dir / "fold_0" / FINAL, map_location="cpu", weights_only=False)["network_weights"]
    other = torch.load(fold_2, map_location="cpu", weights_only=False)["network_weights"]
    differing = sorted(k for k in own if own[k].shape != other[k].shape)
    assert set(own) == set(other) and differing
    _raises_exactly(FoldMismatchError,
                    f"fold 2 ({fold_2}) holds different weights than fold 0: {len(differing)} keys differ in "
                    f"name, shape or dtype, e.g. {differing[:5]}",
                    lambda: nnunet_export.load_complete(model_dir, folds=(0, 2)))


def test_checkpoint_copied_into_the_wrong_fold_folder(nnunet_fixture, tmp_path):
    model_dir = _copy(nnunet_fixture("multifold"), tmp_path)
    shutil.copy(model_dir / "fold_0" / FINAL, model_dir / "fold_1" / FINAL)
    _raises_exactly(FoldMismatchError,
                    f"{model_dir / 'fold_1' / FINAL} lies in fold_1 but was trained as fold 0: "
                    "a checkpoint was copied into the wrong fold folder",
                    lambda: nnunet_export.load_complete(model_dir))


def test_requested_configuration_must_match_the_checkpoint(nnunet_fixture):
    model_dir = nnunet_fixture("3d_fullres").model_dir
    _raises_exactly(FoldMismatchError,
                    f"configuration '2d' was requested but {model_dir / 'fold_0' / FINAL} was trained with "
                    "'3d_fullres'",
                    lambda: nnunet_export.load_complete(model_dir, folds=0, configuration="2d"))
    assert nnunet_export.load_complete(model_dir, folds=0, configuration="3d_fullres").info.folds == (0,)


def test_checkpoint_of_another_configuration_in_a_model_folder(nnunet_fixture, tmp_path):
    model_dir = _copy(nnunet_fixture("3d_fullres"), tmp_path)
    shutil.copy(nnunet_fixture("2d").model_dir / "fold_0" / FINAL, model_dir / "fold_0" / FINAL)
    _raises_exactly(FoldMismatchError,
                    f"{model_dir / 'fold_0' / FINAL} was trained with configuration '2d' but lies in "
                    "'nnUNetTrainer__nnUNetPlans__3d_fullres' (configuration '3d_fullres')",
                    lambda: nnunet_export.load_complete(model_dir, folds=0))


# --- custom trainers and unknown architectures -------------------------------------------------

CUSTOM_TRAINER = "nnUNetTrainerExportTestNet"
CUSTOM_TRAINER_SOURCE = f'''
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class {CUSTOM_TRAINER}(nnUNetTrainer):
    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                   num_output_channels, enable_deep_supervision=True):
        # ignores enable_deep_supervision=False on purpose: load_complete must still turn it off
        network = nnUNetTrainer.build_network_architecture(
            plans_manager, configuration_manager, num_input_channels, num_output_channels, True)
        network.built_by_custom_trainer = True
        return network
'''


@pytest.fixture
def custom_trainer_folder(nnunet_fixture, tmp_path, monkeypatch):
    """A 3d_fullres model folder whose checkpoint names a trainer that lives outside nnunetv2."""
    ext = tmp_path / "ext_trainers"
    ext.mkdir()
    (ext / "export_test_trainers.py").write_text(CUSTOM_TRAINER_SOURCE)
    monkeypatch.setenv("nnUNet_extTrainer", str(ext))  # nnunetv2 2.8 reads it at lookup time
    model_dir = _copy(nnunet_fixture("3d_fullres"), tmp_path, f"{CUSTOM_TRAINER}__nnUNetPlans__3d_fullres")

    def rename(checkpoint):
        checkpoint["trainer_name"] = CUSTOM_TRAINER
    _resave(model_dir / "fold_0" / FINAL, rename)
    return model_dir


def test_custom_trainer_builds_the_network(nnunet_fixture, custom_trainer_folder):
    model = nnunet_export.load_complete(custom_trainer_folder, folds=0)
    info = model.info
    assert info.trainer_name == CUSTOM_TRAINER
    assert info.builder == f"nnunetv2 {CUSTOM_TRAINER}.build_network_architecture"
    assert getattr(model.network, "built_by_custom_trainer", False) is True
    assert not info.scriptable
    assert info.not_scriptable_reason == (
        f"built by {CUSTOM_TRAINER}.build_network_architecture (network class "
        "dynamic_network_architectures.architectures.unet.PlainConvUNet); nnunet_export's scriptable "
        "implementations cover PlainConvUNet and ResidualEncoderUNet with plans-defined networks only")
    assert "scriptable      no: built by" in repr(model)
    # loaded strictly: every tensor equals the checkpoint's
    weights = torch.load(custom_trainer_folder / "fold_0" / FINAL, map_location="cpu",
                         weights_only=False)["network_weights"]
    own = model.network.state_dict()
    assert set(own) == set(weights) and all(torch.equal(own[k], weights[k]) for k in weights)
    assert not model.training and all(not p.requires_grad for p in model.parameters())
    native = nnunet_export.load_complete(nnunet_fixture("3d_fullres").model_dir, folds=0)
    x = torch.randn(1, 1, *native.info.config.patch_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(x)
        assert type(out) is torch.Tensor and out.shape[2:] == x.shape[2:]
        assert float((out - native(x)).abs().max()) <= 1e-5


def test_custom_trainer_ensemble_and_trace_export(custom_trainer_folder, tmp_path):
    shutil.copytree(custom_trainer_folder / "fold_0", custom_trainer_folder / "fold_1")
    _resave(custom_trainer_folder / "fold_1" / FINAL, _set_fold(1))
    model = nnunet_export.load_complete(custom_trainer_folder)
    assert model.info.folds == (0, 1) and not model.info.scriptable
    with pytest.raises(nnunet_export.ExportError, match=r"^method='script' is impossible: built by "):
        nnunet_export.to_torchscript(model, tmp_path / "model.pt", method="script")
    report = nnunet_export.to_torchscript(model, tmp_path / "model.pt")
    assert report.method == "trace" and report.verified


def _block_nnunetv2(monkeypatch):
    """Simulate an environment without nnunetv2: every nnunetv2 import raises ImportError."""
    for name in [n for n in sys.modules if n == "nnunetv2" or n.startswith("nnunetv2.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "nnunetv2", None)
    with pytest.raises(ImportError):
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name  # noqa: F401


def test_unknown_network_class_without_nnunetv2(nnunet_fixture, tmp_path, monkeypatch):
    model_dir = _copy(nnunet_fixture("3d_fullres"), tmp_path)

    def rename(arch):
        arch["network_class_name"] = "my_models.FancyUNet"
    _edit_plans(model_dir, "3d_fullres", rename)
    _block_nnunetv2(monkeypatch)
    _raises_exactly(
        UnsupportedArchitectureError,
        "network class 'my_models.FancyUNet' (trainer 'nnUNetTrainer') is not one nnunet_export implements "
        "(PlainConvUNet, ResidualEncoderUNet); to build it with the trainer's own code install nnunetv2 "
        "('pip install nnunet_export[nnunet]') and make the trainer importable "
        "(nnunetv2.training.nnUNetTrainer or $nnUNet_extTrainer)",
        lambda: nnunet_export.load_complete(model_dir, folds=0))


def test_unknown_network_class_with_nnunetv2_is_an_export_error(nnunet_fixture, tmp_path):
    model_dir = _copy(nnunet_fixture("3d_fullres"), tmp_path)

    def rename(arch):
        arch["network_class_name"] = "my_models.FancyUNet"
    _edit_plans(model_dir, "3d_fullres", rename)
    with pytest.raises(UnsupportedArchitectureError) as info:
        nnunet_export.load_complete(model_dir, folds=0)
    assert str(info.value).startswith(
        "nnUNetTrainer.build_network_architecture could not build network class 'my_models.FancyUNet': ")


def test_custom_trainer_without_nnunetv2_builds_from_plans(custom_trainer_folder, monkeypatch):
    """Documented fallback: nothing can tell us what the trainer does, so the plans (checked
    strictly against the weights) decide."""
    _block_nnunetv2(monkeypatch)
    model = nnunet_export.load_complete(custom_trainer_folder, folds=0)
    assert model.info.builder == "nnunet_export" and model.info.scriptable


def test_native_load_does_not_import_nnunetv2(nnunet_fixture):
    fixtures = [nnunet_fixture(n) for n in ("3d_fullres", "bn", "resenc", "orig_mod_prefix", "multifold")]
    script = textwrap.dedent("""
        import sys
        import nnunet_export
        assert "nnunetv2" not in sys.modules, "importing nnunet_export imported nnunetv2"
        for model_dir, folds in zip(sys.argv[1::2], sys.argv[2::2]):
            folds = None if folds == "detect" else int(folds)
            model = nnunet_export.load_complete(model_dir, folds=folds)
            assert model.info.builder == "nnunet_export", model.info.builder
        leaked = sorted(n for n in sys.modules if n.split(".")[0] in ("nnunetv2", "dynamic_network_architectures"))
        print("LEAKED", leaked)
    """)
    args = []
    for fixture in fixtures:
        args += [str(fixture.model_dir), "detect" if fixture.name == "multifold" else "0"]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "LEAKED []"
