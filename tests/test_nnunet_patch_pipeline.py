"""patch_nnunet(pipeline=True): an unchanged nnUNetPredictor script gets the pipeline's prediction.

Every comparison runs nnU-Net's own predictor unpatched first (checkpoints read safely, see
tests/pipeline_reference.py), then the same calls patched, and checks that the pipeline really
ran: nnU-Net's sliding window is replaced by a function that fails the test.
"""
from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import nnunet_export
from nnunet_export import nnunet_patch

from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from pipeline_reference import nnunet_predictor
from preprocessing_cases import cases_for

ALWAYS = ("initialize_from_trained_model_folder", "predict_logits_from_preprocessed_data")
ALL = ALWAYS + ("predict_single_npy_array",)
ORIGINALS = {name: nnUNetPredictor.__dict__[name] for name in ALL}


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread on this shared CPU; conftest restores the count after each test."""
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _always_unpatched():
    nnunet_export.unpatch_nnunet()
    assert all(nnUNetPredictor.__dict__[n] is ORIGINALS[n] for n in ALL)
    yield
    nnunet_export.unpatch_nnunet()


@pytest.fixture
def pipeline_calls(monkeypatch):
    """Counts the pipeline's predict_logits calls (the patch's one call site) and fails on any
    call of nnU-Net's sliding window."""
    calls = []
    original = nnunet_patch._pipeline_logits

    def counted(pipeline, data):
        calls.append(tuple(data.shape))
        return original(pipeline, data)

    def forbidden(self, *args, **kwargs):
        raise AssertionError("nnU-Net's own sliding window ran")

    def arm():
        monkeypatch.setattr(nnunet_patch, "_pipeline_logits", counted)
        monkeypatch.setattr(nnUNetPredictor, "_internal_predict_sliding_window_return_logits", forbidden)
        return calls

    return arm


def patched_predictor(fixture, folds, **kwargs) -> nnUNetPredictor:
    nnunet_export.patch_nnunet(pipeline=True)
    predictor = nnUNetPredictor(tile_step_size=kwargs.get("tile_step_size", 0.5), use_gaussian=True,
                                use_mirroring=kwargs.get("use_mirroring", True), perform_everything_on_device=False,
                                device=torch.device("cpu"), verbose=False, verbose_preprocessing=False,
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(fixture.model_dir), folds, "checkpoint_final.pth")
    return predictor


def predict_case(predictor, image, spacing, probabilities=True):
    with warnings.catch_warnings():
        warnings.simplefilter("error", nnunet_patch.PipelineFallbackWarning)
        return predictor.predict_single_npy_array(image.copy(), {"spacing": list(spacing)}, None, None, probabilities)


def assert_same_prediction(expected, got, what):
    (seg_expected, prob_expected), (seg_got, prob_got) = expected, got
    assert seg_got.dtype == seg_expected.dtype and seg_got.shape == seg_expected.shape, what
    assert np.array_equal(seg_got, seg_expected), what
    assert prob_got.dtype == prob_expected.dtype == np.float32 and prob_got.shape == prob_expected.shape, what
    diff = float(np.abs(prob_got - prob_expected).max())
    print(f"{what}: probabilities max abs diff {diff:g}")
    assert diff <= 1e-6, what


# ------------------------------------------------------------------ predict_single_npy_array


@pytest.mark.parametrize("name,folds", [("3d_fullres", (0,)), ("regions", (0,)), ("masked", (0,)),
                                        ("multifold", (0, 1, 2))])
def test_predict_single_npy_array_identical(nnunet_fixture, pipeline_calls, name, folds):
    fixture = nnunet_fixture(name)
    cases = [c for c in cases_for(name) if c.id.split("-", 1)[1] in ("native", "aniso_z", "odd", "zeros")]
    images = [c.image() for c in cases]
    plain = nnunet_predictor(fixture.model_dir, folds)
    expected = [predict_case(plain, image, spacing) for image, spacing in images]

    patched = patched_predictor(fixture, folds)
    calls = pipeline_calls()
    for case, (image, spacing), reference in zip(cases, images, expected):
        before = image.copy()
        got = predict_case(patched, image, spacing)
        assert np.array_equal(image, before)
        assert_same_prediction(reference, got, case.id)
        # Without probabilities: the segmentation alone, as nnU-Net returns it.
        seg = predict_case(patched, image, spacing, probabilities=False)
        assert isinstance(seg, np.ndarray) and np.array_equal(seg, reference[0])
    assert len(calls) == 2 * len(cases)
    # Read at initialize, our own networks: scripted, as an exported file runs.
    assert isinstance(patched._nnunet_export_pipeline[3], torch.jit.ScriptModule)


def test_a_predictor_initialised_before_the_patch_uses_its_own_networks(nnunet_fixture, pipeline_calls):
    # nnU-Net's own initialise (its network, one entry of list_of_parameters per fold): the
    # pipeline is built from those, not from the model folder.
    fixture = nnunet_fixture("multifold")
    image, spacing = cases_for("multifold")[0].image()
    predictor = nnunet_predictor(fixture.model_dir, (0, 1, 2), use_mirroring=False)
    expected = predict_case(predictor, image, spacing)
    nnunet_export.patch_nnunet(pipeline=True)
    calls = pipeline_calls()
    assert_same_prediction(expected, predict_case(predictor, image, spacing), "multifold-native")
    assert len(calls) == 1
    pipeline = predictor._nnunet_export_pipeline[3]
    assert len(pipeline.networks) == 3 and pipeline.info.builder == "predictor"
    assert pipeline.mirror_axes == []
    # Built once: a second prediction with the same settings reuses it.
    predict_case(predictor, image, spacing)
    assert predictor._nnunet_export_pipeline[3] is pipeline
    # Changed settings rebuild it with the predictor's values.
    predictor.use_mirroring = True
    predictor.tile_step_size = 0.7
    predict_case(predictor, image, spacing)
    rebuilt = predictor._nnunet_export_pipeline[3]
    assert rebuilt is not pipeline and rebuilt.tile_step_size == 0.7 and len(rebuilt.mirror_axes) == 7


def test_use_gaussian_false_and_other_step_are_reproduced(nnunet_fixture, pipeline_calls):
    fixture = nnunet_fixture("3d_fullres")
    image, spacing = cases_for("3d_fullres")[1].image()
    plain = nnunet_predictor(fixture.model_dir, (0,), tile_step_size=0.3, use_mirroring=False)
    plain.use_gaussian = False
    expected = predict_case(plain, image, spacing)
    patched = patched_predictor(fixture, (0,), tile_step_size=0.3, use_mirroring=False)
    patched.use_gaussian = False
    calls = pipeline_calls()
    assert_same_prediction(expected, predict_case(patched, image, spacing), "3d_fullres-iso no gaussian")
    assert len(calls) == 1
    assert patched._nnunet_export_pipeline[3].use_gaussian is False


# ------------------------------------------------------------------ predict_from_files


def _write_case(folder: Path, case_id: str, image: np.ndarray, spacing) -> None:
    import SimpleITK as sitk

    for channel in range(image.shape[0]):
        itk = sitk.GetImageFromArray(image[channel])
        itk.SetSpacing([float(s) for s in reversed(spacing)])
        itk.SetOrigin((1.5, -2.0, 3.25))
        sitk.WriteImage(itk, str(folder / f"{case_id}_{channel:04d}.nii.gz"))


def _outputs(folder: Path) -> dict:
    import SimpleITK as sitk

    out = {}
    for path in sorted(folder.glob("*.nii.gz")):
        itk = sitk.ReadImage(str(path))
        out[path.name] = (sitk.GetArrayFromImage(itk), itk.GetSpacing(), itk.GetOrigin(), itk.GetDirection())
    for path in sorted(folder.glob("*.npz")):
        out[path.name] = np.load(path)["probabilities"]
    for path in sorted(folder.glob("*.pkl")):
        with open(path, "rb") as f:  # nnU-Net's own properties file, written by this test's run
            out[path.name] = pickle.load(f)
    return out


# Spawns nnU-Net's preprocessing and export workers (one each) per run: the slowest test here.
def test_predict_from_files_writes_identical_files(nnunet_fixture, tmp_path, pipeline_calls):
    fixture = nnunet_fixture("masked")
    inputs = tmp_path / "in"
    inputs.mkdir()
    cases = [c for c in cases_for("masked") if c.id.endswith(("-native", "-aniso_x"))]
    for case in cases:
        _write_case(inputs, case.id.replace("-", "_"), *case.image())
    results = {}
    for patched in (False, True):
        out = tmp_path / ("patched" if patched else "plain")
        if patched:
            predictor = patched_predictor(fixture, (0,), use_mirroring=False)
            calls = pipeline_calls()
        else:
            predictor = nnunet_predictor(fixture.model_dir, (0,), use_mirroring=False)
        predictor.predict_from_files(str(inputs), str(out), save_probabilities=True, overwrite=True,
                                     num_processes_preprocessing=1, num_processes_segmentation_export=1)
        results[patched] = _outputs(out)
    assert len(calls) == len(cases)
    names = sorted(c.id.replace("-", "_") for c in cases)
    assert sorted(results[False]) == sorted(results[True]) == sorted(
        f"{n}{ext}" for n in names for ext in (".nii.gz", ".npz", ".pkl"))
    for key, expected in results[False].items():
        got = results[True][key]
        if key.endswith(".nii.gz"):
            assert np.array_equal(got[0], expected[0]), key
            assert got[1:] == expected[1:], key
        elif key.endswith(".npz"):
            diff = float(np.abs(got - expected).max())
            print(f"{key}: probabilities max abs diff {diff:g}")
            assert got.shape == expected.shape and diff <= 1e-6, key
        else:
            assert repr(got) == repr(expected), key


# ------------------------------------------------------------------ cascade


def test_cascade_logits_and_previous_stage_prediction_identical(nnunet_fixture, pipeline_calls):
    fixture = nnunet_fixture("cascade")
    image, spacing = cases_for("3d_fullres")[0].image()
    previous = (image[:1] > np.median(image[0])).astype(np.int16)  # (1, z, y, x), signed, as read_seg gives it
    plain = nnunet_predictor(fixture.model_dir, (0,), use_mirroring=False)
    expected = plain.predict_single_npy_array(image.copy(), {"spacing": list(spacing)}, previous.copy(), None, True)
    patched = patched_predictor(fixture, (0,), use_mirroring=False)
    calls = pipeline_calls()
    # nnU-Net's preprocessing (the previous stage as one-hot channels) and export, the pipeline's logits.
    got = patched.predict_single_npy_array(image.copy(), {"spacing": list(spacing)}, previous.copy(), None, True)
    assert_same_prediction(expected, got, "cascade with previous stage")
    assert len(calls) == 1 and calls[0][0] == patched._nnunet_export_pipeline[3].num_input_channels


# ------------------------------------------------------------------ fallbacks


@pytest.fixture
def nnunet_sliding_window(monkeypatch):
    """nnU-Net's predict_sliding_window_return_logits, replaced by a recorder (zeros)."""
    seen = []

    def recorded(self, data):
        seen.append(tuple(data.shape))
        return torch.zeros((self.label_manager.num_segmentation_heads, *data.shape[1:]), dtype=torch.half)

    monkeypatch.setattr(nnUNetPredictor, "predict_sliding_window_return_logits", recorded)
    return seen


def test_a_device_other_than_cpu_falls_back_to_nnunet(nnunet_fixture, nnunet_sliding_window):
    fixture = nnunet_fixture("3d_fullres")
    predictor = patched_predictor(fixture, (0,))
    predictor.device = torch.device("cuda", 0)
    with pytest.warns(nnunet_patch.PipelineFallbackWarning) as record:
        logits = predictor.predict_logits_from_preprocessed_data(torch.zeros(1, 24, 40, 40))
    assert [str(w.message) for w in record] == [
        "patch_nnunet(pipeline=True): the predictor runs on cuda:0, the pipeline on the CPU only for now; "
        "nnU-Net's own prediction runs instead"]
    assert nnunet_sliding_window == [(1, 24, 40, 40)]
    assert logits.shape == (3, 24, 40, 40)


def test_settings_the_pipeline_refuses_fall_back_to_nnunet(nnunet_fixture, nnunet_sliding_window):
    fixture = nnunet_fixture("3d_fullres")
    predictor = patched_predictor(fixture, (0,))
    predictor.tile_step_size = 1.5
    with pytest.warns(nnunet_patch.PipelineFallbackWarning) as record:
        predictor.predict_logits_from_preprocessed_data(torch.zeros(1, 24, 40, 40))
    assert [str(w.message) for w in record] == [
        "patch_nnunet(pipeline=True): the pipeline cannot reproduce this predictor (tile_step_size must be a "
        "number in (0, 1], got 1.5); nnU-Net's own prediction runs instead"]
    assert nnunet_sliding_window == [(1, 24, 40, 40)]


def test_without_pipeline_the_patch_predicts_with_nnunet(nnunet_fixture, nnunet_sliding_window):
    fixture = nnunet_fixture("3d_fullres")
    predictor = patched_predictor(fixture, (0,))
    nnunet_export.patch_nnunet()  # switches the pipeline off again
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predictor.predict_logits_from_preprocessed_data(torch.zeros(1, 24, 40, 40))
    assert nnunet_sliding_window == [(1, 24, 40, 40)]


# ------------------------------------------------------------------ patching itself


def test_pipeline_patch_switches_and_unpatch_restores_everything():
    nnunet_export.patch_nnunet(pipeline=True)
    assert nnUNetPredictor.__dict__["predict_single_npy_array"] is nnunet_patch._predict_single_npy_array
    assert nnUNetPredictor.__dict__["predict_logits_from_preprocessed_data"] is \
        nnunet_patch._predict_logits_from_preprocessed_data
    nnunet_export.patch_nnunet(pipeline=True)  # idempotent: the originals stay recorded
    nnunet_export.patch_nnunet()
    assert nnUNetPredictor.__dict__["predict_single_npy_array"] is ORIGINALS["predict_single_npy_array"]
    assert nnUNetPredictor.__dict__["initialize_from_trained_model_folder"] is \
        nnunet_patch._initialize_from_trained_model_folder
    assert not nnunet_patch._state["pipeline"]
    nnunet_export.patch_nnunet(pipeline=True)
    nnunet_export.unpatch_nnunet()
    assert all(nnUNetPredictor.__dict__[n] is ORIGINALS[n] for n in ALL)
    assert not nnunet_patch._state["pipeline"] and not nnunet_patch.is_patched()


def test_patched_nnunet_pipeline_block_restores_the_state_before_it():
    with nnunet_export.patched_nnunet(pipeline=True):
        assert nnunet_patch._state["pipeline"]
        assert nnUNetPredictor.__dict__["predict_single_npy_array"] is nnunet_patch._predict_single_npy_array
    assert all(nnUNetPredictor.__dict__[n] is ORIGINALS[n] for n in ALL)
    nnunet_export.patch_nnunet()
    with pytest.raises(ValueError, match="^inside$"):
        with nnunet_export.patched_nnunet(pipeline=True):
            raise ValueError("inside")
    assert nnunet_patch.is_patched() and not nnunet_patch._state["pipeline"]
    assert nnUNetPredictor.__dict__["predict_single_npy_array"] is ORIGINALS["predict_single_npy_array"]


def test_pipeline_patch_keeps_the_thread_count(nnunet_fixture, pipeline_calls):
    fixture = nnunet_fixture("3d_fullres")
    image, spacing = cases_for("3d_fullres")[0].image()
    predictor = patched_predictor(fixture, (0,), use_mirroring=False)
    pipeline_calls()
    torch.set_num_threads(2)
    predict_case(predictor, image, spacing)
    predictor.predict_logits_from_preprocessed_data(torch.zeros(1, 24, 40, 40))
    assert torch.get_num_threads() == 2
