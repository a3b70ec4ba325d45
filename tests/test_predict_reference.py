"""tests/predict_reference.py does what the predict tests and benchmark rely on: the case folder
it writes is what nnU-Net's SimpleITKIO reads back, and nnU-Net's file-level prediction over that
folder writes what nnUNetv2_predict writes, with the segmentation nnU-Net's array-level
prediction (pipeline_reference.nnunet_predict) gives for the same image."""
from __future__ import annotations

import argparse
import inspect
import json
import pickle

import numpy as np
import pytest

from pipeline_reference import nnunet_predict, nnunet_predictor
from predict_reference import DEFAULT_DIRECTION, NNUNET_PREDICT_NPP, NNUNET_PREDICT_NPS, DEFAULT_ORIGIN, nnunet_predict_folder, read_segmentation, \
    write_case_folder
from preprocessing_cases import cases_for

FIXTURE = "3d_fullres"
CASES = [c for c in cases_for(FIXTURE) if c.id.split("-", 1)[1] in ("native", "aniso_z", "odd")]
# One case with geometry of its own (SimpleITK's x, y, z order), the others get the defaults.
OWN_ORIGIN = (3.5, -2.25, 100.0)
OWN_DIRECTION = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0)


def _float32(values):
    return [float(np.float32(v)) for v in values]


def _cases():
    cases = {}
    for index, case in enumerate(CASES):
        image, spacing = case.image()
        cases[f"case{index}"] = (image, spacing, OWN_ORIGIN, OWN_DIRECTION) if index == 1 else (image, spacing)
    return cases


def _geometry(cases, name):
    value = cases[name]
    return (value[2], value[3]) if len(value) == 4 else (DEFAULT_ORIGIN, DEFAULT_DIRECTION)


class _Parsed(Exception):
    pass


@pytest.mark.parametrize("entry_point, required", [
    ("predict_entry_point_modelfolder", ["-i", "in", "-o", "out", "-m", "model"]),
    ("predict_entry_point", ["-i", "in", "-o", "out", "-d", "1", "-c", "3d_fullres"]),
])
def test_defaults_are_nnunetv2_predicts(monkeypatch, entry_point, required):
    """nnunet_predict_folder's defaults are the CLI's (its parser read, nothing predicted)."""
    from nnunetv2.inference import predict_from_raw_data

    original = argparse.ArgumentParser.parse_args

    def parse_args(parser, args=None, namespace=None):
        raise _Parsed(original(parser, required))

    monkeypatch.delenv("nnUNet_npp", raising=False)
    monkeypatch.delenv("nnUNet_nps", raising=False)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
    with pytest.raises(_Parsed) as parsed:
        getattr(predict_from_raw_data, entry_point)()
    cli = parsed.value.args[0]
    defaults = inspect.signature(nnunet_predict_folder).parameters
    assert (cli.npp, cli.nps) == (NNUNET_PREDICT_NPP, NNUNET_PREDICT_NPS) == (3, 3)
    assert defaults["num_processes_preprocessing"].default == cli.npp
    assert defaults["num_processes_segmentation_export"].default == cli.nps
    assert defaults["tile_step_size"].default == cli.step_size
    assert defaults["use_mirroring"].default is not cli.disable_tta
    assert defaults["save_probabilities"].default is cli.save_probabilities
    assert defaults["checkpoint_name"].default == cli.chk


def test_written_cases_read_back_with_nnunet_simpleitkio(tmp_path):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    cases = _cases()
    files = write_case_folder(tmp_path, cases)
    assert [[p.name for p in f] for f in files] == [[f"{name}_0000.nii.gz"] for name in cases]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{name}_0000.nii.gz" for name in cases)
    for name, case_files in zip(cases, files):
        image, properties = SimpleITKIO().read_images([str(p) for p in case_files])
        expected, spacing = cases[name][:2]
        assert image.dtype == np.float32 and np.array_equal(image, expected), name
        # NIfTI stores the spacing as float32.
        assert properties["spacing"] == _float32(spacing), name
        origin, direction = _geometry(cases, name)
        assert properties["sitk_stuff"]["spacing"] == tuple(_float32(spacing[::-1])), name
        assert properties["sitk_stuff"]["origin"] == origin, name
        assert properties["sitk_stuff"]["direction"] == direction, name


def test_multichannel_cases_write_one_file_per_channel(tmp_path):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    image, spacing = cases_for("regions")[0].image()
    files = write_case_folder(tmp_path, {"mr": (image, spacing)}, file_ending=".nrrd")
    assert [p.name for p in files[0]] == ["mr_0000.nrrd", "mr_0001.nrrd"]
    read, properties = SimpleITKIO().read_images([str(p) for p in files[0]])
    assert np.array_equal(read, image) and properties["spacing"] == spacing


@pytest.mark.parametrize("value, message", [
    ((np.zeros((4, 5, 6), np.float32), [1.0, 1.0, 1.0]),
     "case 'bad': expected an image of shape (channels, z, y, x) with a spacing of 3 values (z, y, x), "
     "got shape (4, 5, 6) and spacing [1.0, 1.0, 1.0]"),
    ((np.zeros((1, 4, 5, 6), np.float32), [1.0, 1.0]),
     "case 'bad': expected an image of shape (channels, z, y, x) with a spacing of 3 values (z, y, x), "
     "got shape (1, 4, 5, 6) and spacing [1.0, 1.0]"),
    ((np.zeros((1, 4, 5, 6), np.float32), [1.0, 1.0, 1.0], (0.0, 0.0, 0.0)),
     "case 'bad': expected (image, spacing) or (image, spacing, origin, direction), got a tuple of 3 items"),
    (np.zeros((1, 4, 5, 6), np.float32),
     "case 'bad': expected (image, spacing) or (image, spacing, origin, direction), got a ndarray"),
], ids=["3d_image", "2_spacings", "3_items", "bare_array"])
def test_bad_cases_are_refused_before_writing(tmp_path, value, message):
    with pytest.raises(ValueError) as raised:
        write_case_folder(tmp_path / "in", {"bad": value})
    assert str(raised.value) == message
    assert list((tmp_path / "in").iterdir()) == []


@pytest.fixture(scope="module")
def predicted_folder(nnunet_fixture, tmp_path_factory):
    """nnU-Net's predict_from_files over three cases, with the probabilities; one worker each
    for preprocessing and export (spawning nnUNetv2_predict's 3 + 3 costs half a minute here)."""
    fixture = nnunet_fixture(FIXTURE)
    root = tmp_path_factory.mktemp("predict_reference")
    cases = _cases()
    write_case_folder(root / "in", cases)
    nnunet_predict_folder(fixture.model_dir, (0,), root / "in", root / "out", save_probabilities=True,
                          num_processes_preprocessing=1, num_processes_segmentation_export=1)
    return fixture, cases, root


def test_nnunet_predict_folder_writes_what_nnunetv2_predict_writes(predicted_folder):
    fixture, cases, root = predicted_folder
    out = root / "out"
    per_case = {f"{name}{suffix}" for name in cases for suffix in (".nii.gz", ".npz", ".pkl")}
    assert {p.name for p in out.iterdir()} == per_case | {"dataset.json", "plans.json",
                                                         "predict_from_raw_data_args.json"}
    assert json.loads((out / "dataset.json").read_text()) == json.loads((fixture.model_dir / "dataset.json").read_text())
    assert json.loads((out / "plans.json").read_text()) == json.loads((fixture.model_dir / "plans.json").read_text())
    arguments = json.loads((out / "predict_from_raw_data_args.json").read_text())
    assert arguments == {"list_of_lists_or_source_folder": str(root / "in"),
                         "output_folder_or_list_of_truncated_output_files": str(out),
                         "save_probabilities": True, "overwrite": True, "num_processes_preprocessing": 1,
                         "num_processes_segmentation_export": 1, "folder_with_segs_from_prev_stage": None,
                         "num_parts": 1, "part_id": 0}


def test_folder_prediction_equals_nnunet_array_prediction(predicted_folder):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    fixture, cases, root = predicted_folder
    predictor = nnunet_predictor(fixture.model_dir, (0,))
    labels = set(json.loads((fixture.model_dir / "dataset.json").read_text())["labels"].values())
    for name in cases:
        # What nnU-Net's reader gives for the written file (spacing float32-rounded by NIfTI).
        image, properties = SimpleITKIO().read_images([str(root / "in" / f"{name}_0000.nii.gz")])
        expected, probabilities = nnunet_predict(fixture.model_dir, (0,), image, properties["spacing"],
                                                 return_probabilities=True, predictor=predictor)
        segmentation, spacing, origin, direction = read_segmentation(root / "out" / f"{name}.nii.gz")
        assert segmentation.dtype == np.uint8 and np.array_equal(segmentation, expected), name
        assert set(np.unique(segmentation)) <= labels and len(np.unique(segmentation)) > 1, name
        assert (spacing, origin, direction) == (properties["sitk_stuff"]["spacing"], *_geometry(cases, name)), name
        with np.load(root / "out" / f"{name}.npz") as stored:
            assert np.array_equal(stored["probabilities"], probabilities), name
        with open(root / "out" / f"{name}.pkl", "rb") as f:  # nnU-Net's own file, written by this test
            stored_properties = pickle.load(f)
        assert stored_properties["spacing"] == properties["spacing"], name
