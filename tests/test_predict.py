"""nnunet_export.predict and `nnunet-export predict` against nnU-Net's own file-level prediction
(nnUNetPredictor.predict_from_files, tests/predict_reference.py) on folders of .nii.gz cases
written with a non-trivial origin and direction: the same voxels, dtype, spacing, origin and
direction, the same .npz probabilities and .pkl properties, the same dataset.json / plans.json;
per-case failures with their messages; atomic outputs; --continue_prediction."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

SimpleITK = pytest.importorskip("SimpleITK")
pytest.importorskip("nnunetv2")

import nnunet_export  # noqa: E402
from nnunet_export.cli import main  # noqa: E402
from nnunet_fixtures import get_fixture  # noqa: E402
from predict_reference import nnunet_predict_folder, read_segmentation, write_case_folder  # noqa: E402
from preprocessing_cases import cases_for  # noqa: E402

# A few cases per fixture: resampled and not, odd sizes; the 2d fixture also gets a true 2-D file;
# multifold is a fold ensemble (folds 0, 1, 2 and all).
CASES = {"3d_fullres": ("native", "aniso_z", "odd"), "regions": ("native", "odd"),
         "masked": ("native", "aniso_z"), "2d": ("odd", "2d_stack"), "multifold": ("aniso_z",)}
MAX_PROBABILITY_DIFFERENCE = 1e-6


def _write_2d_file(folder, case_id, image, spacing):
    """A true 2-D file per channel (SimpleITK reads it as (c, 1, y, x), spacing (999 * max, sy, sx))."""
    for channel in range(image.shape[0]):
        itk_image = SimpleITK.GetImageFromArray(np.ascontiguousarray(image[channel, 0]))
        itk_image.SetSpacing((spacing[2], spacing[1]))
        itk_image.SetOrigin((5.5, -3.0))
        itk_image.SetDirection((0.0, 1.0, 1.0, 0.0))
        SimpleITK.WriteImage(itk_image, str(folder / f"{case_id}_{channel:04d}.nii.gz"), True)


def _input_folder(folder, name):
    wanted = {f"{name}-{case}": case for case in CASES[name]}
    cases = {wanted[c.id]: c.image() for c in cases_for(name) if c.id in wanted}
    write_case_folder(folder, cases)
    if name == "2d":
        flat = next(c for c in cases_for(name) if c.id == "2d-2d_file")
        _write_2d_file(folder, "flat", *flat.image())
    return folder


@pytest.fixture(scope="module", params=list(CASES))
def run(request, tmp_path_factory):
    """One fixture's folder predicted by nnU-Net (with probabilities), by predict from the model
    folder (with probabilities) and from the exported pipeline file (without)."""
    name = request.param
    fixture = get_fixture(name)
    root = tmp_path_factory.mktemp(f"predict_{name}")
    inputs = _input_folder(root / "in", name)
    nnunet_predict_folder(fixture.model_dir, fixture.folds, inputs, root / "nnunet", save_probabilities=True,
                          num_processes_preprocessing=1, num_processes_segmentation_export=1)
    folder_summary = nnunet_export.predict(fixture.model_dir, inputs, root / "folder", folds=fixture.folds,
                                           save_probabilities=True, progress=False)
    exported = root / "pipeline.pt"
    nnunet_export.load_complete(fixture.model_dir, folds=fixture.folds).pipeline().to_torchscript(exported)
    file_summary = nnunet_export.predict(exported, inputs, root / "file", progress=False)
    return {"name": name, "root": root, "fixture": fixture, "exported": exported, "summaries": (folder_summary,
            file_summary), "ending": ".nii.gz"}


def _segmentations(folder):
    return sorted(p for p in os.listdir(folder) if p.endswith(".nii.gz"))


def test_every_case_predicted(run):
    for summary in run["summaries"]:
        assert summary.ok, summary.table()
        assert [c.status for c in summary.cases] == ["ok"] * len(summary.cases)
    expected = _segmentations(run["root"] / "nnunet")
    assert len(expected) == len(CASES[run["name"]]) + (run["name"] == "2d")
    assert _segmentations(run["root"] / "folder") == _segmentations(run["root"] / "file") == expected


@pytest.mark.parametrize("ours", ["folder", "file"])
def test_segmentations_identical_to_nnunet(run, ours):
    for name in _segmentations(run["root"] / "nnunet"):
        theirs = read_segmentation(run["root"] / "nnunet" / name)
        mine = read_segmentation(run["root"] / ours / name)
        assert mine[0].dtype == theirs[0].dtype, name
        assert np.array_equal(mine[0], theirs[0]), name
        assert mine[1:] == theirs[1:], name
        assert len(np.unique(theirs[0])) > 1 or "zeros" in name, name  # a real segmentation, not empty


def test_probabilities_and_properties_as_nnunet(run, capsys):
    worst = 0.0
    for name in _segmentations(run["root"] / "nnunet"):
        case = name[: -len(".nii.gz")]
        theirs = np.load(run["root"] / "nnunet" / f"{case}.npz")["probabilities"]
        mine = np.load(run["root"] / "folder" / f"{case}.npz")["probabilities"]
        assert mine.dtype == theirs.dtype == np.float32 and mine.shape == theirs.shape
        worst = max(worst, float(np.abs(mine - theirs).max()))
        with open(run["root"] / "nnunet" / f"{case}.pkl", "rb") as handle:
            their_properties = pickle.load(handle)
        with open(run["root"] / "folder" / f"{case}.pkl", "rb") as handle:
            my_properties = pickle.load(handle)
        assert list(my_properties) == list(their_properties)
        assert repr(my_properties) == repr(their_properties)
    with capsys.disabled():
        print(f"\n[{run['name']}] .npz max abs difference to nnU-Net: {worst:.3g}")
    assert worst <= MAX_PROBABILITY_DIFFERENCE


def test_output_folder_json_as_nnunet(run):
    for name in ("dataset.json", "plans.json"):
        theirs = (run["root"] / "nnunet" / name).read_text()
        assert (run["root"] / "folder" / name).read_text() == theirs
    dataset = json.loads((run["root"] / "nnunet" / "dataset.json").read_text())
    rebuilt = json.loads((run["root"] / "file" / "dataset.json").read_text())
    assert rebuilt == {k: dataset[k] for k in rebuilt}
    assert set(rebuilt) >= {"channel_names", "labels", "file_ending"}
    assert not (run["root"] / "file" / "plans.json").exists()


def test_exported_file_and_model_folder_write_identical_files(run):
    for name in _segmentations(run["root"] / "folder"):
        a, b = read_segmentation(run["root"] / "folder" / name), read_segmentation(run["root"] / "file" / name)
        assert np.array_equal(a[0], b[0]) and a[0].dtype == b[0].dtype and a[1:] == b[1:]


# --- failures, continuation, the command line ---------------------------------------------------

@pytest.fixture(scope="module")
def exported_3d(tmp_path_factory):
    fixture = get_fixture("3d_fullres")
    path = tmp_path_factory.mktemp("exported") / "pipeline.pt"
    nnunet_export.load_complete(fixture.model_dir, folds=fixture.folds).pipeline().to_torchscript(path)
    return path


def _good_case(folder, case_id="good"):
    case = next(c for c in cases_for("3d_fullres") if c.id == "3d_fullres-odd")
    write_case_folder(folder, {case_id: case.image()})


def _leftovers(folder):
    """Anything a failed or interrupted write could leave: hidden temporaries."""
    return [p for p in os.listdir(folder) if p.startswith(".")]


def test_bad_cases_fail_alone(exported_3d, tmp_path, capsys):
    inputs = tmp_path / "in"
    _good_case(inputs)
    (inputs / "corrupt_0000.nii.gz").write_bytes(b"\x1f\x8b\x08 not an image at all" * 20)
    two = next(c for c in cases_for("regions") if c.id == "regions-odd").image()
    write_case_folder(inputs, {"extra": two})  # extra_0000 and extra_0001: the model takes 1 channel
    itk_image = SimpleITK.GetImageFromArray(two[0], isVector=False)
    SimpleITK.WriteImage(itk_image, str(inputs / "fourd_0000.nii.gz"), True)  # 2 channels in one file
    code = main(["predict", "-i", str(inputs), "-o", str(tmp_path / "out"), "-m", str(exported_3d), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    corrupt = inputs / "corrupt_0000.nii.gz"
    assert f"corrupt: failed: cannot read image file {str(corrupt)!r} with SimpleITKIO: " in err
    assert ("extra: failed: unexpected channel file extra_0001.nii.gz (the model takes 1 channel: 0 'CT')"
            in err)
    assert "fourd: failed: the image has 2 channels (fourd_0000.nii.gz), the model takes 1" in err
    assert err.rstrip().endswith("nnunet-export: error: 3 of 4 cases failed (see the error lines above)")
    assert sorted(os.listdir(tmp_path / "out")) == ["dataset.json", "good.nii.gz"]


def test_missing_channel_file(tmp_path):
    fixture = get_fixture("regions")
    inputs = tmp_path / "in"
    two = next(c for c in cases_for("regions") if c.id == "regions-odd").image()
    write_case_folder(inputs, {"whole": two, "half": two})
    os.remove(inputs / "half_0001.nii.gz")
    summary = nnunet_export.predict(fixture.model_dir, inputs, tmp_path / "out", progress=False)
    assert [(c.case_id, c.status) for c in summary.cases] == [("half", "failed"), ("whole", "ok")]
    assert summary.failed[0].error == ("missing channel file half_0001.nii.gz (the model takes 2 channels: "
                                       "0 'T1', 1 'T2')")
    assert sorted(os.listdir(tmp_path / "out")) == ["dataset.json", "plans.json", "whole.nii.gz"]


def test_continue_prediction_skips_finished_cases(exported_3d, tmp_path):
    inputs = tmp_path / "in"
    _good_case(inputs, "a")
    _good_case(inputs, "b")
    out = tmp_path / "out"
    first = nnunet_export.predict(exported_3d, inputs, out, save_probabilities=True, progress=False)
    assert [c.status for c in first.cases] == ["ok", "ok"]
    stamp = os.stat(out / "a.nii.gz").st_mtime_ns
    os.remove(out / "b.npz")  # with probabilities, a case without its .npz is predicted again
    lines = []
    again = nnunet_export.predict(exported_3d, inputs, out, save_probabilities=True, continue_prediction=True,
                                  progress=lines.append)
    assert [(c.case_id, c.status) for c in again.cases] == [("a", "skipped"), ("b", "ok")]
    assert os.stat(out / "a.nii.gz").st_mtime_ns == stamp
    assert (out / "b.npz").is_file()
    assert len(lines) == 1 and lines[0].startswith("b: done in ")


def test_interrupt_leaves_no_partial_file(exported_3d, tmp_path, monkeypatch):
    from nnunet_export import image_files

    inputs = tmp_path / "in"
    _good_case(inputs)
    real = image_files._write_sitk

    def interrupted(seg, path, properties, reorient):
        real(seg, path, properties, reorient)  # the temporary is complete, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(image_files, "_write_sitk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        nnunet_export.predict(exported_3d, inputs, tmp_path / "out", save_probabilities=True, progress=False)
    assert sorted(os.listdir(tmp_path / "out")) == ["dataset.json", "good.npz", "good.pkl"]
    assert _leftovers(tmp_path / "out") == []
    # the case has no segmentation, so continuing predicts it
    monkeypatch.undo()
    summary = nnunet_export.predict(exported_3d, inputs, tmp_path / "out", save_probabilities=True,
                                    continue_prediction=True, progress=False)
    assert [c.status for c in summary.cases] == ["ok"]


def test_exported_file_settings_are_its_own(exported_3d, tmp_path):
    with pytest.raises(nnunet_export.PredictError) as err:
        nnunet_export.predict(exported_3d, tmp_path, tmp_path / "out", tile_step_size=0.7)
    assert str(err.value) == (f"the exported file {str(exported_3d)!r} was built with tile_step_size=0.5; "
                              "tile_step_size=0.7 cannot be applied to it (leave tile_step_size unset, or build "
                              "a pipeline with it from the model folder)")
    code = main(["predict", "-i", str(tmp_path), "-o", str(tmp_path / "out"), "-m", str(exported_3d),
                 "--disable_tta"])
    assert code == 1
    assert not (tmp_path / "out").exists()


def test_network_only_file_is_refused(tmp_path):
    fixture = get_fixture("3d_fullres")
    path = tmp_path / "network.pt"
    nnunet_export.load_complete(fixture.model_dir, folds=fixture.folds).to_torchscript(path, verify=False)
    with pytest.raises(nnunet_export.PredictError) as err:
        nnunet_export.predict(path, tmp_path, tmp_path / "out")
    assert str(err.value) == (f"{str(path)!r} is an exported network without the pipeline (preprocessing, "
                              "sliding window, export); export one with "
                              "nnunet_export.load_complete(...).pipeline().to_torchscript(path)")


def test_cli_usage_errors(tmp_path, capsys):
    assert main(["predict", "-o", str(tmp_path)]) == 2
    assert "the following arguments are required: -i" in capsys.readouterr().err
    assert main(["predict", "-i", str(tmp_path), "-o", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == (
        "nnunet-export: error: give -d DATASET -c CONFIGURATION (with optional -tr/-p) or -m MODEL_FOLDER")


def test_cli_predicts_a_folder(exported_3d, tmp_path, capsys):
    inputs = tmp_path / "in"
    _good_case(inputs)
    assert main(["predict", "-i", str(inputs), "-o", str(tmp_path / "out"), "-m", str(exported_3d)]) == 0
    out = capsys.readouterr().out
    assert "cases             1 (1 predicted, 0 skipped, 0 failed)" in out
    assert "device            cpu" in out
    assert (tmp_path / "out" / "good.nii.gz").is_file()


def test_progress_bars(exported_3d, tmp_path, capsys):
    pytest.importorskip("tqdm")
    inputs = tmp_path / "in"
    _good_case(inputs, "a")
    _good_case(inputs, "b")
    summary = nnunet_export.predict(exported_3d, inputs, tmp_path / "out", progress=True)
    err = capsys.readouterr().err
    assert summary.ok
    assert "cases: 100%" in err and "2/2" in err
    assert "[nnunet-export] a: done in " in err and "[nnunet-export] b: done in " in err


def test_array_inputs(exported_3d, tmp_path):
    case = next(c for c in cases_for("3d_fullres") if c.id == "3d_fullres-odd")
    image, spacing = case.image()
    summary = nnunet_export.predict(exported_3d, [(image, spacing)], tmp_path, progress=False)
    assert [c.case_id for c in summary.cases] == ["case_0000"]
    written = read_segmentation(tmp_path / "case_0000.nii.gz")
    import torch

    expected = torch.jit.load(str(exported_3d))(torch.from_numpy(image), torch.tensor(spacing, dtype=torch.float64))
    assert np.array_equal(written[0], expected.numpy())
    assert written[1] == pytest.approx(tuple(spacing[::-1]))
