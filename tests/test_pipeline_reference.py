"""The raw preprocessing cases and the nnU-Net reference wrappers do what the preprocessing and
export tests rely on: each case takes the nnU-Net code path it is named for, the masked fixture
normalises inside its nonzero mask, and nnU-Net's prediction comes back in the image's geometry."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_fill_holes

from pipeline_reference import nnunet_export_logits, nnunet_managers, nnunet_predict, nnunet_predictor, \
    nnunet_preprocess
from preprocessing_cases import ALL_CASES, REPRESENTATIVE_FIXTURES, cases_for

CASE_IDS = [c.id for c in ALL_CASES]


def _configuration_manager(nnunet_fixture, fixture_name):
    fixture = nnunet_fixture(fixture_name)
    _, configuration_manager, _ = nnunet_managers(fixture.model_dir, fixture.configuration)
    return configuration_manager


def test_case_ids_are_unique_and_cover_every_path():
    assert len(set(CASE_IDS)) == len(CASE_IDS)
    names = {c.id.split("-", 1)[1] for c in ALL_CASES}
    assert names == {"native", "iso", "aniso_z", "aniso_x", "odd", "zeros", "2d_file", "2d_stack"}
    assert {c.expected_separate_z_axis for c in ALL_CASES} == {None, 0, 2}
    assert {c.resampled for c in ALL_CASES} == {False, True}


@pytest.mark.parametrize("case", ALL_CASES, ids=CASE_IDS)
def test_case_images_are_deterministic_and_shaped_like_simpleitkio(case):
    image, spacing = case.image()
    again, _ = case.image()
    assert image.dtype == np.float32
    assert image.shape == ({"ct": 1, "regions": 2, "masked": 2}[case.kind], *case.shape_zyx)
    assert spacing == list(case.spacing_zyx) and all(type(s) is float for s in spacing)
    assert np.array_equal(image, again)
    if case.zeros:
        assert not image.any()
    elif case.kind == "ct":
        assert image.min() < -950 and (image != 0).all()  # air, and nothing for the nonzero mask
    elif case.kind == "masked":
        assert (image == 0).all(axis=0).any() and ((image == 0).all(axis=0) == (image == 0).any(axis=0)).all()


@pytest.mark.parametrize("name", REPRESENTATIVE_FIXTURES)
def test_native_spacing_is_the_plans_target(nnunet_fixture, name):
    configuration_manager = _configuration_manager(nnunet_fixture, name)
    native = next(c for c in cases_for(name) if c.id.endswith("-native"))
    assert list(native.target_spacing_zyx[-len(configuration_manager.spacing):]) == configuration_manager.spacing


@pytest.mark.parametrize("case", ALL_CASES, ids=CASE_IDS)
def test_preprocessing_takes_the_named_path(nnunet_fixture, case):
    from nnunetv2.preprocessing.resampling.default_resampling import determine_do_sep_z_and_axis

    fixture = nnunet_fixture(case.fixture)
    image, spacing = case.image()
    data, seg, properties = nnunet_preprocess(fixture.model_dir, fixture.configuration, image, spacing)
    assert np.array_equal(image, case.image()[0])  # the caller's image is left alone
    assert data.dtype == np.float32 and data.shape[0] == image.shape[0]
    assert seg.shape == (1, *data.shape[1:]) and seg.dtype == np.int8
    assert properties["shape_before_cropping"] == image.shape[1:]

    configuration_manager = _configuration_manager(nnunet_fixture, case.fixture)
    target = list(configuration_manager.spacing)
    if len(target) == 2:
        target = [spacing[0], *target]
    assert target == list(case.target_spacing_zyx)
    kwargs = configuration_manager.configuration["resampling_fn_data_kwargs"]
    do_separate_z, axis = determine_do_sep_z_and_axis(kwargs["force_separate_z"], spacing, target)
    assert (axis if do_separate_z else None) == case.expected_separate_z_axis
    resampled = tuple(data.shape[1:]) != tuple(properties["shape_after_cropping_and_before_resampling"])
    assert resampled == case.resampled


@pytest.mark.parametrize("name", ["masked", "masked_2d"])
def test_masked_fixture_normalises_inside_the_nonzero_mask(nnunet_fixture, name):
    import json

    fixture = nnunet_fixture(name)
    plans_manager, configuration_manager, dataset_json = nnunet_managers(fixture.model_dir, fixture.configuration)
    assert configuration_manager.use_mask_for_norm == [True, True]
    assert configuration_manager.normalization_schemes == ["ZScoreNormalization"] * 2
    fingerprint = json.loads((fixture.model_dir / "dataset_fingerprint.json").read_text())
    assert fingerprint["median_relative_size_after_cropping"] < 0.75
    assert dataset_json["channel_names"] == {"0": "T1", "1": "T2"}

    native = next(c for c in cases_for(name) if c.id.endswith("-native"))
    image, spacing = native.image()
    data, seg, properties = nnunet_preprocess(fixture.model_dir, fixture.configuration, image, spacing)
    cropped = properties["shape_after_cropping_and_before_resampling"]
    assert np.prod(cropped) < 0.75 * np.prod(image.shape[1:])
    # The cavity is zero in the image, inside the filled mask (seg 0) and so normalised; outside
    # the mask nnU-Net writes exactly 0.
    nonzero = (image != 0).any(axis=0)
    filled = binary_fill_holes(nonzero)
    assert filled.sum() > nonzero.sum()
    (z0, z1), (y0, y1), (x0, x1) = properties["bbox_used_for_cropping"]
    assert np.array_equal(seg[0] == 0, filled[z0:z1, y0:y1, x0:x1])
    assert (data[:, seg[0] < 0] == 0).all()
    cavity = filled[z0:z1, y0:y1, x0:x1] & ~nonzero[z0:z1, y0:y1, x0:x1]
    assert (data[:, cavity] < -1).all()  # (0 - mean) / std, mean ~ 300 and 150


def test_2d_file_has_nnunets_2d_spacing_and_its_cavity_is_not_filled():
    # SimpleITKIO gives a 2-D file the z spacing 999 * max(in-plane); with one slice every voxel
    # touches the z border, so nnU-Net's 3-D binary_fill_holes fills no cavity of a 2-D image.
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    import SimpleITK as sitk
    import tempfile
    from pathlib import Path

    case = next(c for c in cases_for("masked_2d") if c.id.endswith("-2d_file"))
    image, spacing = case.image()
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "case_0000.nii.gz")
        itk = sitk.GetImageFromArray(image[0, 0])
        itk.SetSpacing((spacing[2], spacing[1]))
        sitk.WriteImage(itk, path)
        read, properties = SimpleITKIO().read_images([path])
    assert read.shape == (1, *image.shape[1:])
    assert properties["spacing"] == pytest.approx(spacing, rel=1e-6)
    from nnunetv2.preprocessing.cropping.cropping import create_nonzero_mask

    nonzero = (image != 0).any(axis=0)
    assert binary_fill_holes(nonzero[0]).sum() > nonzero[0].sum()  # filled slice by slice, it has a cavity
    assert np.array_equal(create_nonzero_mask(image), nonzero)


@pytest.fixture(scope="module")
def predictors(nnunet_fixture):
    made = {}

    def get(name):
        if name not in made:
            fixture = nnunet_fixture(name)
            made[name] = nnunet_predictor(fixture.model_dir, fixture.folds, use_mirroring=False)
        return made[name]

    return get


PREDICTED = [c for c in ALL_CASES if c.id.split("-", 1)[1] in ("native", "aniso_z", "odd", "2d_file")]


@pytest.mark.parametrize("case", PREDICTED, ids=[c.id for c in PREDICTED])
def test_prediction_comes_back_in_the_image_geometry(nnunet_fixture, predictors, case):
    fixture = nnunet_fixture(case.fixture)
    image, spacing = case.image()
    threads = torch.get_num_threads()
    segmentation, probabilities = nnunet_predict(fixture.model_dir, fixture.folds, image, spacing,
                                                 return_probabilities=True, predictor=predictors(case.fixture))
    assert torch.get_num_threads() == threads
    num_classes = 2 if case.kind == "regions" else 3
    assert segmentation.shape == image.shape[1:]
    assert probabilities.shape == (num_classes, *image.shape[1:])
    assert set(np.unique(segmentation)) <= set(range(num_classes if case.kind != "regions" else 3))
    if case.kind == "masked":  # nnU-Net's un-cropping: background outside the crop's box
        _, _, properties = nnunet_preprocess(fixture.model_dir, fixture.configuration, image, spacing)
        inside = np.zeros(image.shape[1:], dtype=bool)
        inside[tuple(slice(lo, hi) for lo, hi in properties["bbox_used_for_cropping"])] = True
        assert not segmentation[~inside].any()


def test_export_of_logits_is_predict_single_npy_arrays_last_step(nnunet_fixture, predictors):
    case = next(c for c in cases_for("masked") if c.id.endswith("-aniso_z"))
    fixture = nnunet_fixture("masked")
    image, spacing = case.image()
    predictor = predictors("masked")
    data, _, properties = nnunet_preprocess(fixture.model_dir, fixture.configuration, image, spacing)
    threads = torch.get_num_threads()
    with torch.no_grad():
        logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu()
    torch.set_num_threads(threads)
    exported = nnunet_export_logits(fixture.model_dir, fixture.configuration, logits, properties)
    assert torch.get_num_threads() == threads
    whole = nnunet_predict(fixture.model_dir, fixture.folds, image, spacing, predictor=predictor)
    assert exported.shape == image.shape[1:]
    assert np.array_equal(exported, whole)
    seg, probabilities = nnunet_export_logits(fixture.model_dir, fixture.configuration, logits, properties,
                                              return_probabilities=True)
    assert np.array_equal(seg, whole) and probabilities.shape == (3, *image.shape[1:])


@pytest.mark.parametrize("name", ["3d_fullres", "masked"])
def test_all_zero_image_keeps_its_extent_and_masked_normalisation_gives_zeros(nnunet_fixture, name):
    # nnU-Net's crop of an empty nonzero mask is the whole image, every voxel outside the mask
    # (seg -1); mask normalisation then computes an empty mean (numpy warns) and writes 0 everywhere.
    fixture = nnunet_fixture(name)
    case = next(c for c in cases_for(name) if c.id.endswith("-zeros"))
    image, spacing = case.image()
    with pytest.warns(RuntimeWarning, match="Mean of empty slice") if name == "masked" else _no_warning():
        data, seg, properties = nnunet_preprocess(fixture.model_dir, fixture.configuration, image, spacing)
    assert properties["bbox_used_for_cropping"] == [[0, s] for s in image.shape[1:]]
    assert (seg == -1).all()
    assert not np.isnan(data).any()
    assert (data == 0).all() if name == "masked" else (np.unique(data).size == 1 and data.flat[0] != 0)


def _no_warning():
    import contextlib
    import warnings

    @contextlib.contextmanager
    def block():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            yield

    return block()
