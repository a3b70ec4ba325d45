"""nnunet-export verify: the checks of nnunet_export.testing as a table, exit 0 / 1 / 2."""
from __future__ import annotations

import re

import pytest
import torch

import nnunet_export
from nnunet_export import cli


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def multifold(nnunet_fixture, tmp_path_factory):
    """(model folder, pipeline of fold 0 at step 0.75)."""
    model_dir = nnunet_fixture("multifold").model_dir
    path = tmp_path_factory.mktemp("verify") / "step075.pt"
    nnunet_export.load_complete(model_dir, folds=[0]).pipeline(tile_step_size=0.75).to_torchscript(path)
    return model_dir, path


_ROW = r"{name}  {result:<6}  \d+\.\d s"


def test_all_checks_pass_exit_0(multifold, capsys):
    model_dir, path = multifold
    code, out, err = run(capsys, "verify", path, "-m", model_dir, "-f", "0", "-step_size", "0.75")
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0] == "check                          result  time"
    assert re.fullmatch(_ROW.format(name="weights match the checkpoints", result="pass"), lines[1])
    assert re.fullmatch(_ROW.format(name="predictions match nnU-Net    ", result="pass"), lines[2])
    assert len(lines) == 3
    assert "[nnunet-export] checking: weights match the checkpoints" in err


def test_a_failed_check_exits_1_with_its_report(multifold, capsys):
    model_dir, path = multifold
    code, out, err = run(capsys, "verify", path, "-m", model_dir)
    assert code == 1
    lines = out.splitlines()
    assert re.fullmatch(_ROW.format(name="weights match the checkpoints", result="pass"), lines[1])
    assert re.fullmatch(_ROW.format(name="predictions match nnU-Net    ", result="FAIL"), lines[2])
    assert lines[3] == ""
    assert lines[4] == (
        f"predictions match nnU-Net: {path}: the exported pipeline (tile_step_size 0.75, use_gaussian True, "
        "use_mirroring True, mode exact) differs from nnU-Net's nnUNetPredictor.predict_logits_from_preprocessed_data "
        "(tile_step_size 0.5, use_gaussian True, use_mirroring True) (bit for bit):")
    assert lines[5].startswith("  input 1 of 2, shape [1, 10, 20, 52], folds 0: max |difference| ")


def test_weights_of_another_fold_exit_1(multifold, capsys):
    model_dir, path = multifold
    code, out, err = run(capsys, "verify", path, "-m", model_dir, "-f", "1", "--weights-only")
    assert code == 1
    assert re.fullmatch(_ROW.format(name="weights match the checkpoints", result="FAIL"), out.splitlines()[1])
    assert out.splitlines()[3].startswith(f"weights match the checkpoints: {path}: fold 1: weight "
                                          "'encoder.stages.0.0.convs.0.conv.weight' differs from ")


def test_usage_errors_exit_2(multifold, capsys, tmp_path):
    model_dir, path = multifold
    code, out, err = run(capsys, "verify", tmp_path / "missing.pt", "-m", model_dir)
    assert (code, out) == (2, "")
    assert err == f"nnunet-export: error: {str(tmp_path / 'missing.pt')!r} does not exist or is not a file\n"
    code, out, err = run(capsys, "verify", path, "-m", model_dir, "-i", "case.nii.gz")
    assert (code, out) == (2, "")
    assert err == ("nnunet-export: error: -i 'case.nii.gz': images must be preprocessed volumes saved as .npy; "
                   "reading image files with their spacing is not supported yet\n")
    code, out, err = run(capsys, "verify", path)
    assert code == 2 and err.endswith("error: the following arguments are required: -m\n")
