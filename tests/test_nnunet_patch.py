"""patch_nnunet(): an unchanged nnUNetPredictor script, run against real model folders.

Each behaviour is shown twice where nnU-Net's own predictor differs: once without the patch (what
nnU-Net does) and once with it.
"""
from __future__ import annotations

import pickle
import shutil
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

import nnunet_export
from nnunet_export import nnunet_patch

from nnunetv2.inference import predict_from_raw_data
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

PATCHED = ("initialize_from_trained_model_folder", "predict_logits_from_preprocessed_data")
ORIGINALS = {name: nnUNetPredictor.__dict__[name] for name in PATCHED}


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: these networks are tiny, and on a shared, busy CPU two OpenMP threads
    waiting for each other made them ~50x slower. conftest restores the count after each test."""
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _always_unpatched():
    nnunet_export.unpatch_nnunet()
    assert all(nnUNetPredictor.__dict__[n] is ORIGINALS[n] for n in PATCHED)
    yield
    nnunet_export.unpatch_nnunet()


def make_predictor(**kwargs) -> nnUNetPredictor:
    kwargs.setdefault("use_mirroring", True)
    return nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, perform_everything_on_device=False,
                           device=torch.device("cpu"), verbose=False, verbose_preprocessing=False,
                           allow_tqdm=False, **kwargs)


def checkpoint_weights(path: Path) -> dict:
    """The test's own reference: the checkpoint read by torch.load, prefixes as saved."""
    return torch.load(path, map_location="cpu", weights_only=False)["network_weights"]


def strip(state_dict: dict, prefix: str | None) -> dict:
    return {k[len(prefix):] if prefix and k.startswith(prefix) else k: v for k, v in state_dict.items()}


def assert_state_equal(module: torch.nn.Module, expected: dict) -> None:
    got = module.state_dict()
    assert set(got) == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(got[key], tensor), key


def state_equal(module: torch.nn.Module, expected: dict) -> bool:
    got = module.state_dict()
    return set(got) == set(expected) and all(torch.equal(got[k], v) for k, v in expected.items())


def preprocessed_case(predictor: nnUNetPredictor, fixture) -> torch.Tensor:
    """The first raw training image, preprocessed by nnU-Net's own preprocessor for this model."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    image_file = sorted((fixture.raw_dir / fixture.dataset_name / "imagesTr").glob("*_0000.nii.gz"))[0]
    image, properties = SimpleITKIO().read_images([str(image_file)])
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    data, _, _ = preprocessor.run_case_npy(image, None, properties, predictor.plans_manager,
                                           predictor.configuration_manager, predictor.dataset_json)
    return torch.from_numpy(np.ascontiguousarray(data)).float()


# ------------------------------------------------------------------ patching itself


def test_patch_is_idempotent_and_unpatch_restores_the_original_functions():
    nnunet_export.patch_nnunet()
    first = {n: nnUNetPredictor.__dict__[n] for n in PATCHED}
    assert first["initialize_from_trained_model_folder"] is nnunet_patch._initialize_from_trained_model_folder
    assert first["predict_logits_from_preprocessed_data"] is nnunet_patch._predict_logits_from_preprocessed_data
    nnunet_export.patch_nnunet()  # a second call must not record the patched functions as originals
    assert {n: nnUNetPredictor.__dict__[n] for n in PATCHED} == first
    nnunet_export.unpatch_nnunet()
    for name in PATCHED:
        assert nnUNetPredictor.__dict__[name] is ORIGINALS[name]
    nnunet_export.unpatch_nnunet()  # no-op when not patched
    for name in PATCHED:
        assert nnUNetPredictor.__dict__[name] is ORIGINALS[name]


def test_patched_nnunet_context_manager_restores_also_on_error():
    with pytest.raises(ValueError, match="^inside$"):
        with nnunet_export.patched_nnunet():
            assert nnUNetPredictor.__dict__["initialize_from_trained_model_folder"] is \
                nnunet_patch._initialize_from_trained_model_folder
            raise ValueError("inside")
    for name in PATCHED:
        assert nnUNetPredictor.__dict__[name] is ORIGINALS[name]
    # Already patched before the block: the block leaves it patched.
    nnunet_export.patch_nnunet()
    with nnunet_export.patched_nnunet():
        pass
    assert nnUNetPredictor.__dict__["predict_logits_from_preprocessed_data"] is \
        nnunet_patch._predict_logits_from_preprocessed_data


@pytest.mark.parametrize("version", ["2.9.0", "2.5.1", "3.0.0", "2.8.2"])
def test_unsupported_nnunet_version_fails_clearly_and_patches_nothing(monkeypatch, version):
    real = nnunet_patch.importlib_metadata.version
    monkeypatch.setattr(nnunet_patch.importlib_metadata, "version",
                        lambda name: version if name == "nnunetv2" else real(name))
    with pytest.raises(nnunet_export.UnsupportedNnUNetError) as err:
        nnunet_export.patch_nnunet()
    assert str(err.value) == (f"nnunetv2 {version} is outside the versions patch_nnunet supports "
                              "(2.5.2 to 2.8.1); nothing was patched")
    assert isinstance(err.value, nnunet_export.ExportError)
    for name in PATCHED:
        assert nnUNetPredictor.__dict__[name] is ORIGINALS[name]
    assert not nnunet_patch.is_patched()


def test_changed_predictor_signature_fails_clearly_and_patches_nothing(monkeypatch):
    def changed(self, model_dir, folds):  # an API the patch does not know
        raise AssertionError("never called")

    monkeypatch.setattr(nnUNetPredictor, "initialize_from_trained_model_folder", changed)
    with pytest.raises(nnunet_export.UnsupportedNnUNetError) as err:
        nnunet_export.patch_nnunet()
    version = nnunet_patch.importlib_metadata.version("nnunetv2")
    assert str(err.value) == (
        f"nnunetv2 {version}: nnUNetPredictor.initialize_from_trained_model_folder does not have the "
        "signature ('self', 'model_training_output_dir', 'use_folds', 'checkpoint_name'); nothing was patched")
    assert nnUNetPredictor.__dict__["initialize_from_trained_model_folder"] is changed
    assert nnUNetPredictor.__dict__["predict_logits_from_preprocessed_data"] is \
        ORIGINALS["predict_logits_from_preprocessed_data"]


# ------------------------------------------------------------------ initialisation


def _forbid_unpickling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("unrestricted unpickling was attempted")

    class RefusingUnpickler:
        def __init__(self, *args, **kwargs):
            refuse()

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", RefusingUnpickler)


def test_initialise_reads_every_fold_through_the_safe_reader(nnunet_fixture, monkeypatch):
    fixture = nnunet_fixture("multifold")
    folds = (0, 1, 2)
    expected = [checkpoint_weights(fixture.model_dir / f"fold_{f}" / "checkpoint_final.pth") for f in folds]
    with monkeypatch.context() as forbidden:
        _forbid_unpickling(forbidden)
        # nnU-Net's own initialise unpickles without restriction: the guard above catches it ...
        with pytest.raises(AssertionError, match="^unrestricted unpickling was attempted$"):
            make_predictor().initialize_from_trained_model_folder(str(fixture.model_dir), folds,
                                                                  "checkpoint_final.pth")
        # ... and the patched one never gets there.
        nnunet_export.patch_nnunet()
        predictor = make_predictor()
        predictor.initialize_from_trained_model_folder(str(fixture.model_dir), folds, "checkpoint_final.pth")
    assert len(predictor.list_of_parameters) == 3
    for params, reference in zip(predictor.list_of_parameters, expected):
        assert set(params) == set(reference)
        assert all(torch.equal(params[k], reference[k]) for k in reference)
    assert_state_equal(predictor.network, expected[0])
    assert not predictor.network.training
    assert predictor.trainer_name == "nnUNetTrainer"
    assert predictor.configuration_manager.configuration == \
        predictor.plans_manager.get_configuration("3d_fullres").configuration
    assert predictor.allowed_mirroring_axes == (0, 1, 2)
    assert predictor.label_manager.num_segmentation_heads == 3


def _copy_model_folder(src: Path, dst: Path, folds) -> Path:
    dst.mkdir(parents=True)
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        shutil.copy2(src / name, dst / name)
    for fold in folds:
        (dst / f"fold_{fold}").mkdir()
        shutil.copy2(src / f"fold_{fold}" / "checkpoint_final.pth", dst / f"fold_{fold}" / "checkpoint_final.pth")
    return dst


def test_a_bad_fold_fails_at_initialise_not_at_predict(nnunet_fixture, tmp_path):
    fixture = nnunet_fixture("multifold")
    model_dir = _copy_model_folder(fixture.model_dir, tmp_path / fixture.model_dir.name, (0, 1))
    bad = model_dir / "fold_1" / "checkpoint_final.pth"
    checkpoint = torch.load(bad, map_location="cpu", weights_only=False)
    dropped = "decoder.seg_layers.0.bias"
    del checkpoint["network_weights"][dropped]
    torch.save(checkpoint, bad)

    # nnU-Net: initialise succeeds (only fold 0 is loaded), the prediction fails later.
    predictor = make_predictor(use_mirroring=False)
    predictor.initialize_from_trained_model_folder(str(model_dir), (0, 1), "checkpoint_final.pth")
    with pytest.raises(RuntimeError, match=f'Missing key\\(s\\) in state_dict: "{dropped}"'):
        predictor.predict_logits_from_preprocessed_data(torch.zeros(1, 24, 40, 40))

    nnunet_export.patch_nnunet()
    with pytest.raises(nnunet_export.FoldMismatchError) as err:
        make_predictor().initialize_from_trained_model_folder(str(model_dir), (0, 1), "checkpoint_final.pth")
    assert str(err.value) == (
        f"fold 1 ({bad}) holds different weights than fold 0: 1 keys differ in name, shape or dtype, "
        f"e.g. ['{dropped}']")


@pytest.mark.parametrize("name", ["orig_mod_prefix", "module_prefix"])
def test_prefixed_keys_are_unwrapped(nnunet_fixture, name):
    fixture = nnunet_fixture(name)
    raw = checkpoint_weights(fixture.model_dir / "fold_0" / "checkpoint_final.pth")
    assert all(k.startswith(fixture.key_prefix) for k in raw)

    with pytest.raises(RuntimeError, match=f'Unexpected key\\(s\\) in state_dict: "{fixture.key_prefix}'):
        make_predictor().initialize_from_trained_model_folder(str(fixture.model_dir), (0,), "checkpoint_final.pth")

    with nnunet_export.patched_nnunet():
        predictor = make_predictor()
        predictor.initialize_from_trained_model_folder(str(fixture.model_dir), (0,), "checkpoint_final.pth")
    assert_state_equal(predictor.network, strip(raw, fixture.key_prefix))
    assert not predictor.network.training


# ------------------------------------------------------------------ prediction


def test_multi_fold_logits_unchanged_and_network_holds_fold_zero_afterwards(nnunet_fixture):
    fixture = nnunet_fixture("multifold")
    folds = (0, 1, 2)
    weights = [checkpoint_weights(fixture.model_dir / f"fold_{f}" / "checkpoint_final.pth") for f in folds]

    # Mirroring only adds passes of the same network; left out to keep the suite fast on a busy CPU.
    plain = make_predictor(use_mirroring=False)
    plain.initialize_from_trained_model_folder(str(fixture.model_dir), folds, "checkpoint_final.pth")
    data = preprocessed_case(plain, fixture)
    expected = plain.predict_logits_from_preprocessed_data(data)
    assert state_equal(plain.network, weights[2])  # nnU-Net leaves the LAST fold in the network
    assert not state_equal(plain.network, weights[0])

    nnunet_export.patch_nnunet()
    patched = make_predictor(use_mirroring=False)
    patched.initialize_from_trained_model_folder(str(fixture.model_dir), folds, "checkpoint_final.pth")
    got = patched.predict_logits_from_preprocessed_data(data)
    assert got.shape == expected.shape == (3, *data.shape[1:])
    assert float((got - expected).abs().max()) <= 1e-6
    assert_state_equal(patched.network, weights[0])
    assert not patched.network.training


def test_thread_count_is_restored_when_a_prediction_raises(nnunet_fixture, monkeypatch):
    fixture = nnunet_fixture("3d_fullres")
    monkeypatch.setattr(predict_from_raw_data, "default_num_processes", 1)
    seen = []

    def failing_sliding_window(self, input_image):
        seen.append(torch.get_num_threads())
        raise RuntimeError("injected failure")

    monkeypatch.setattr(nnUNetPredictor, "predict_sliding_window_return_logits", failing_sliding_window)
    torch.set_num_threads(2)
    predictor = make_predictor()
    predictor.initialize_from_trained_model_folder(str(fixture.model_dir), (0,), "checkpoint_final.pth")
    with pytest.raises(RuntimeError, match="^injected failure$"):
        predictor.predict_logits_from_preprocessed_data(torch.zeros(1, 24, 40, 40))
    assert seen == [1]
    assert torch.get_num_threads() == 1  # nnU-Net leaks its setting

    torch.set_num_threads(2)
    nnunet_export.patch_nnunet()
    predictor = make_predictor()
    predictor.initialize_from_trained_model_folder(str(fixture.model_dir), (0,), "checkpoint_final.pth")
    with pytest.raises(RuntimeError, match="^injected failure$"):
        predictor.predict_logits_from_preprocessed_data(torch.zeros(1, 24, 40, 40))
    assert seen == [1, 1]
    assert torch.get_num_threads() == 2


def _read_segmentations(folder: Path) -> dict[str, np.ndarray]:
    import SimpleITK as sitk

    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.glob("*.nii.gz"))}


def test_single_fold_2d_logits_with_mirroring_unchanged(nnunet_fixture):
    fixture = nnunet_fixture("2d")
    plain = make_predictor(use_mirroring=True)
    plain.initialize_from_trained_model_folder(str(fixture.model_dir), (0,), "checkpoint_final.pth")
    data = preprocessed_case(plain, fixture)
    expected = plain.predict_logits_from_preprocessed_data(data)
    with nnunet_export.patched_nnunet():
        patched = make_predictor(use_mirroring=True)
        patched.initialize_from_trained_model_folder(str(fixture.model_dir), (0,), "checkpoint_final.pth")
        got = patched.predict_logits_from_preprocessed_data(data)
    assert patched.allowed_mirroring_axes == plain.allowed_mirroring_axes == (0, 1)
    assert got.shape == expected.shape == (3, *data.shape[1:])
    assert float((got - expected).abs().max()) <= 1e-6


# Spawns nnU-Net's preprocessing and export workers (one each) per call: the slowest test here.
@pytest.mark.parametrize("name,folds,mirroring", [("multifold", (0, 1, 2), False)])
def test_predict_from_files_writes_identical_segmentations(nnunet_fixture, tmp_path, name, folds, mirroring):
    fixture = nnunet_fixture(name)
    images = sorted((fixture.raw_dir / fixture.dataset_name / "imagesTr").glob("*_0000.nii.gz"))[:1]
    inputs = [[str(p)] for p in images]
    results = {}
    for patched in (False, True):
        out = tmp_path / ("patched" if patched else "plain")
        with nnunet_export.patched_nnunet() if patched else _nothing():
            predictor = make_predictor(use_mirroring=mirroring)
            predictor.initialize_from_trained_model_folder(str(fixture.model_dir), folds, "checkpoint_final.pth")
            predictor.predict_from_files(inputs, str(out), save_probabilities=False, overwrite=True,
                                         num_processes_preprocessing=1, num_processes_segmentation_export=1)
        results[patched] = _read_segmentations(out)
    assert sorted(results[False]) == [p.name.replace("_0000", "") for p in images]
    assert sorted(results[True]) == sorted(results[False])
    for case, seg in results[False].items():
        assert seg.shape == results[True][case].shape
        assert np.array_equal(seg, results[True][case]), case


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# ------------------------------------------------------------------ export


def test_patched_network_exports_directly(nnunet_fixture, tmp_path):
    fixture = nnunet_fixture("2d")
    nnunet_export.patch_nnunet()
    predictor = make_predictor()
    predictor.initialize_from_trained_model_folder(str(fixture.model_dir), (0,), "checkpoint_final.pth")
    report = nnunet_export.to_torchscript(predictor.network, tmp_path / "model.pt")
    assert report.verified and report.max_abs_diff <= 1e-6
    loaded = torch.jit.load(str(tmp_path / "model.pt"))
    patch = predictor.configuration_manager.patch_size
    x = torch.randn(1, 1, *patch, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert float((loaded(x) - predictor.network(x)).abs().max()) <= 1e-6
    meta = nnunet_export.read_metadata(tmp_path / "model.pt")
    assert meta["folds"] == [0]
    assert meta["configuration"] == "2d"


def test_compiled_predictor_network_exports_its_orig_mod(nnunet_fixture, tmp_path, monkeypatch):
    # nnUNet_compile=true wraps the network in torch.compile. Exporting unwraps it, so nothing is
    # compiled here (an inductor compile on this CPU would take minutes).
    fixture = nnunet_fixture("3d_fullres")
    monkeypatch.setenv("nnUNet_compile", "true")
    weights = checkpoint_weights(fixture.model_dir / "fold_0" / "checkpoint_final.pth")
    nnunet_export.patch_nnunet()
    predictor = make_predictor()
    predictor.initialize_from_trained_model_folder(str(fixture.model_dir), (0,), "checkpoint_final.pth")
    assert isinstance(predictor.network, torch._dynamo.eval_frame.OptimizedModule)
    assert_state_equal(predictor.network._orig_mod, weights)
    assert not predictor.network._orig_mod.training
    report = nnunet_export.to_torchscript(predictor.network, tmp_path / "compiled.pt")
    assert report.verified and report.max_abs_diff <= 1e-6
    assert nnunet_export.read_metadata(tmp_path / "compiled.pt")["folds"] == [0]


# ------------------------------------------------------------------ complete()


def _manual_predictor(fixture, parameters):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from batchgenerators.utilities.file_and_folder_operations import load_json

    plans_manager = PlansManager(str(fixture.model_dir / "plans.json"))
    dataset_json = load_json(str(fixture.model_dir / "dataset.json"))
    configuration_manager = plans_manager.get_configuration(fixture.configuration)
    network = nnUNetTrainer.build_network_architecture(
        plans_manager, configuration_manager,
        determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads,
        enable_deep_supervision=False)
    predictor = make_predictor()
    predictor.manual_initialization(network, plans_manager, configuration_manager, parameters, dataset_json,
                                    fixture.trainer, (0, 1, 2))
    return predictor


@pytest.mark.parametrize("name", ["3d_fullres", "orig_mod_prefix"])
def test_complete_after_manual_initialization(nnunet_fixture, tmp_path, name):
    fixture = nnunet_fixture(name)
    raw = checkpoint_weights(fixture.model_dir / "fold_0" / "checkpoint_final.pth")
    expected = strip(raw, fixture.key_prefix)
    predictor = _manual_predictor(fixture, [raw])
    assert not state_equal(predictor.network, expected)  # nnU-Net built it randomly initialised

    network = nnunet_export.complete(predictor)
    assert network is predictor.network
    assert_state_equal(network, expected)
    assert not network.training
    report = nnunet_export.to_torchscript(network, tmp_path / "manual.pt")
    assert report.verified and report.method == "trace" and report.max_abs_diff <= 1e-6
    meta = nnunet_export.read_metadata(tmp_path / "manual.pt")
    assert meta["configuration"] == "3d_fullres"
    assert meta["trainer_name"] == "nnUNetTrainer"


def test_complete_refuses_a_predictor_without_network_or_weights(nnunet_fixture):
    with pytest.raises(nnunet_export.ExportError) as err:
        nnunet_export.complete(make_predictor())
    assert str(err.value) == "the predictor has no network: initialise it first"
    predictor = _manual_predictor(nnunet_fixture("3d_fullres"), [])
    with pytest.raises(nnunet_export.ExportError) as err:
        nnunet_export.complete(predictor)
    assert str(err.value) == (
        "the predictor holds no weights (list_of_parameters is empty): pass parameters to "
        "manual_initialization or use initialize_from_trained_model_folder")


def test_complete_names_weights_that_do_not_fit(nnunet_fixture):
    fixture = nnunet_fixture("3d_fullres")
    raw = OrderedDict(checkpoint_weights(fixture.model_dir / "fold_0" / "checkpoint_final.pth"))
    del raw["decoder.seg_layers.0.bias"]
    predictor = _manual_predictor(fixture, [raw])
    with pytest.raises(nnunet_export.WeightsMismatchError) as err:
        nnunet_export.complete(predictor)
    assert "decoder.seg_layers.0.bias" in str(err.value)
    assert "predictor.list_of_parameters[0]" in str(err.value)
