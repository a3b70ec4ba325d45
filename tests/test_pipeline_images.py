"""Pipeline.preprocess / forward / predict_with_probabilities against nnU-Net's own code on raw
images: preprocessing bit for bit DefaultPreprocessor.run_case_npy, the segmentation voxel for
voxel (and dtype) predict_single_npy_array, eager, scripted and from the exported file in a
fresh process; probabilities bit for bit at nnU-Net's export thread count, within 1e-6 at any
other (torch's CPU softmax rounds by its thread partition)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import nnunet_export
from fresh_process import run_fresh
from pipeline_reference import nnunet_predict, nnunet_predictor, nnunet_preprocess
from preprocessing_cases import ALL_CASES, cases_for

# One thread: the reference and the pipeline run the same kernels in the same order.
THREADS = 1
# nnU-Net's export runs torch with default_num_processes threads (8), which decides how the
# CPU softmax splits the volume and so the last bit of some probabilities.
NNUNET_EXPORT_THREADS = 8

FOLD_CASES = [c for c in cases_for("multifold") if c.id.split("-")[1] in ("iso", "aniso_z")] + \
    [c for c in cases_for("resenc") if c.id.split("-")[1] == "odd"]
CASES = list(ALL_CASES) + FOLD_CASES


def _folds(nnunet_fixture, name):
    return tuple(f for f in nnunet_fixture(name).folds if f != "all")


@pytest.fixture(scope="module")
def pipelines(nnunet_fixture):
    cache = {}

    def get(name, scripted=False):
        if (name, scripted) not in cache:
            if scripted:
                cache[(name, True)] = torch.jit.script(get(name))
            else:
                model = nnunet_export.load_complete(nnunet_fixture(name).model_dir,
                                                    folds=list(_folds(nnunet_fixture, name)))
                cache[(name, False)] = model.pipeline()
        return cache[(name, scripted)]

    return get


@pytest.fixture(scope="module")
def reference(nnunet_fixture):
    """nnU-Net's (segmentation, probabilities) of a case, computed once each."""
    predictors, cache = {}, {}

    def get(case):
        if case.id not in cache:
            if case.fixture not in predictors:
                predictors[case.fixture] = nnunet_predictor(nnunet_fixture(case.fixture).model_dir,
                                                            _folds(nnunet_fixture, case.fixture))
            image, spacing = case.image()
            torch.set_num_threads(THREADS)
            cache[case.id] = nnunet_predict(None, (), image, spacing, return_probabilities=True,
                                            predictor=predictors[case.fixture])
        return cache[case.id]

    return get


def _configuration(nnunet_fixture, name):
    return nnunet_export.read_model_config(nnunet_fixture(name).model_dir).configuration


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_preprocess_is_bit_identical_to_nnunet(case, pipelines, nnunet_fixture):
    image, spacing = case.image()
    expected, _, properties = nnunet_preprocess(nnunet_fixture(case.fixture).model_dir,
                                                _configuration(nnunet_fixture, case.fixture), image, spacing)
    torch.set_num_threads(THREADS)
    source = torch.from_numpy(image.copy())
    data, ours = pipelines(case.fixture).preprocess(source, spacing)
    assert data.dtype == torch.float32 and tuple(data.shape) == expected.shape
    assert torch.equal(data, torch.from_numpy(expected)), f"{int((data != torch.from_numpy(expected)).sum())} differ"
    assert torch.equal(source, torch.from_numpy(image)), "preprocess wrote into the caller's image"
    assert ours["spacing"].tolist() == properties["spacing"]
    assert ours["shape_before_cropping"].tolist() == list(properties["shape_before_cropping"])
    assert ours["bbox_used_for_cropping"].tolist() == [list(b) for b in properties["bbox_used_for_cropping"]]
    assert ours["shape_after_cropping_and_before_resampling"].tolist() == \
        list(properties["shape_after_cropping_and_before_resampling"])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_segmentation_is_identical_to_nnunet(case, pipelines, reference):
    image, spacing = case.image()
    expected, _ = reference(case)
    torch.set_num_threads(THREADS)
    got = pipelines(case.fixture)(torch.from_numpy(image), spacing).numpy()
    assert got.dtype == expected.dtype and got.shape == expected.shape == image.shape[1:]
    assert np.array_equal(got, expected), f"{int((got != expected).sum())} of {got.size} voxels differ"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_probabilities_match_nnunet(case, pipelines, reference):
    image, spacing = case.image()
    expected_segmentation, expected = reference(case)
    torch.set_num_threads(THREADS)
    segmentation, probabilities = pipelines(case.fixture).predict_with_probabilities(torch.from_numpy(image), spacing)
    assert probabilities.dtype == torch.float32 and tuple(probabilities.shape) == expected.shape
    assert np.array_equal(segmentation.numpy(), expected_segmentation)
    assert float((probabilities - torch.from_numpy(expected)).abs().max()) <= 1e-6
    torch.set_num_threads(NNUNET_EXPORT_THREADS)
    try:
        _, at_nnunet_threads = pipelines(case.fixture).predict_with_probabilities(torch.from_numpy(image), spacing)
    finally:
        torch.set_num_threads(THREADS)
    assert torch.equal(at_nnunet_threads, torch.from_numpy(expected))


SCRIPTED_FIXTURES = ("3d_fullres", "2d", "regions", "masked", "masked_2d")


@pytest.mark.parametrize("name", SCRIPTED_FIXTURES)
def test_scripted_pipeline_gives_the_same_results(name, pipelines, reference):
    scripted = pipelines(name, scripted=True)
    torch.set_num_threads(THREADS)
    for case in cases_for(name):
        image, spacing = case.image()
        expected, _ = reference(case)
        spacing_tensor = torch.tensor(spacing, dtype=torch.float64)
        got = scripted(torch.from_numpy(image), spacing_tensor).numpy()
        assert got.dtype == expected.dtype and np.array_equal(got, expected), case.id
        data, _ = scripted.preprocess(torch.from_numpy(image), spacing_tensor)
        eager, _ = pipelines(name).preprocess(torch.from_numpy(image), spacing)
        assert torch.equal(data, eager), case.id


_FRESH_BODY = r"""
import torch
torch.set_num_threads(1)
module = torch.jit.load(sys.argv[1], map_location="cpu")
cases = torch.load(sys.argv[2], weights_only=True)
out = {}
for case_id, (image, spacing) in cases.items():
    segmentation, probabilities = module.predict_with_probabilities(image, spacing)
    out[case_id] = (module(image, spacing), segmentation, probabilities)
torch.save(out, sys.argv[3])
"""


@pytest.mark.parametrize("name", ["3d_fullres", "masked_2d", "regions"])
def test_exported_pipeline_segments_images_in_a_fresh_process(name, pipelines, reference, tmp_path):
    path = tmp_path / "pipeline.pt"
    report = nnunet_export.to_torchscript(pipelines(name), path)
    assert report.verified and report.max_abs_diff == 0.0
    preprocessing = nnunet_export.read_metadata(path)["pipeline"]["preprocessing"]
    assert preprocessing["resampling"]["data"]["function"] == "resample_data_or_seg_to_shape"
    cases = {c.id: (torch.from_numpy(c.image()[0]), torch.tensor(c.image()[1], dtype=torch.float64))
             for c in cases_for(name)}
    torch.save(cases, tmp_path / "cases.pt")
    result = run_fresh(_FRESH_BODY, path, tmp_path / "cases.pt", tmp_path / "out.pt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    for case in cases_for(name):
        expected_segmentation, expected_probabilities = reference(case)
        segmentation, from_probabilities, probabilities = out[case.id]
        assert np.array_equal(segmentation.numpy(), expected_segmentation), case.id
        assert np.array_equal(from_probabilities.numpy(), expected_segmentation), case.id
        assert float((probabilities - torch.from_numpy(expected_probabilities)).abs().max()) <= 1e-6, case.id


def test_cases_exercise_every_step():
    # The parity above means little unless the cases make each step matter.
    assert any(c.resampled and c.expected_separate_z_axis is not None for c in CASES)
    assert any(c.resampled and c.expected_separate_z_axis is None for c in CASES)
    assert any(not c.resampled for c in CASES)
    assert any(c.zeros for c in CASES)
    assert {c.fixture for c in CASES} >= {"3d_fullres", "2d", "regions", "masked", "masked_2d", "multifold"}
