"""nnunet_export.testing: the helpers pass on every fixture's network and pipeline export, and fail
with a pinned message on an export of another fold, a weight changed by one ulp and a pipeline built
with another tile step."""
from __future__ import annotations

import re
import sys
import zipfile

import numpy as np
import pytest
import torch

import nnunet_export
from nnunet_export.export_writer import quiet_torchscript
from nnunet_export.metadata import METADATA_NAME
from nnunet_export.testing import assert_matches_nnunet, assert_weights_match
from nnunet_fixtures import FIXTURE_NAMES

THREADS = 1  # both sides run at the caller's thread count; one keeps the suite's cores free


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(THREADS)


@pytest.fixture(scope="module")
def exports(nnunet_fixture, tmp_path_factory):
    """(fixture, kind, folds, tile step) -> (exported file, model folder, checkpoint name), built once."""
    made = {}

    def get(name, kind, folds=None, step=0.5):
        key = (name, kind, folds, step)
        if key not in made:
            fixture = nnunet_fixture(name)
            checkpoint = fixture.checkpoint_names[-1]
            model = nnunet_export.load_complete(fixture.model_dir, folds=folds, checkpoint_name=checkpoint)
            path = tmp_path_factory.mktemp("exports") / f"{name}-{kind}.pt"
            if kind == "pipeline":
                model.pipeline(tile_step_size=step).to_torchscript(path)
            else:
                model.to_torchscript(path)
            made[key] = (path, fixture.model_dir, checkpoint)
        return made[key]

    return get


@pytest.mark.parametrize("kind", ["network", "pipeline"])
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_helpers_pass_on_every_fixtures_export(name, kind, exports):
    path, model_dir, checkpoint = exports(name, kind)
    assert_weights_match(path, model_dir, checkpoint_name=checkpoint)
    if name.endswith("_prefix"):  # nnU-Net's predictor itself fails on these checkpoints
        with pytest.raises(ValueError) as caught:
            assert_matches_nnunet(path, model_dir, checkpoint_name=checkpoint)
        prefix = "_orig_mod." if name == "orig_mod_prefix" else "module."
        assert str(caught.value) == (
            f"{model_dir / 'fold_0' / checkpoint}: weight '{prefix}encoder.stages.0.0.convs.0.conv.weight' "
            "carries a torch.compile/DDP wrapper prefix, which nnU-Net's predictor cannot load (its "
            "load_state_dict is strict): there is no nnU-Net prediction to compare with; assert_weights_match "
            "checks such exports")
        return
    assert_matches_nnunet(path, model_dir, checkpoint_name=checkpoint)


def _checkpoint_weight(model_dir, fold, key):
    path = model_dir / f"fold_{fold}" / "checkpoint_final.pth"
    return path, nnunet_export.read_checkpoint(path, ["network_weights"])["network_weights"][key]


def _text(tensor, index):
    """How the message prints an element: NumPy's shortest text that round-trips in float32."""
    return str(tensor.reshape(-1)[index:index + 1].numpy()[0])


FIRST_KEY = "encoder.stages.0.0.convs.0.conv.weight"


def test_an_export_of_another_fold_fails_weights_with_fold_key_and_element(exports):
    path, model_dir, _ = exports("multifold", "network", folds=(1,))
    checkpoint, want = _checkpoint_weight(model_dir, 0, FIRST_KEY)
    _, got = _checkpoint_weight(model_dir, 1, FIRST_KEY)
    differ = int((got.view(torch.int32) != want.view(torch.int32)).sum())
    with pytest.raises(AssertionError) as caught:
        assert_weights_match(path, model_dir, folds=[0])
    assert str(caught.value) == (
        f"{path}: fold 0: weight {FIRST_KEY!r} differs from {checkpoint}: first at index [0, 0, 0, 0, 0], "
        f"file {_text(got, 0)} vs checkpoint {_text(want, 0)} "
        f"({differ} of {want.numel()} values differ)")
    assert_weights_match(path, model_dir)  # the metadata's folds: fold 1, as exported


_LINE = (r"  input 0 of 1, shape \[1, 1, 10, 20, 20\], folds 0: max \|difference\| [0-9.e+-]+, \d+ of 4000 voxels "
         r"differ \(channel 0: \d+, channel 1: \d+, channel 2: \d+\); the argmax label changes at \d+ voxels")


def test_an_export_of_another_fold_fails_the_nnunet_comparison(exports):
    path, model_dir, _ = exports("multifold", "network", folds=(1,))
    with pytest.raises(AssertionError) as caught:
        assert_matches_nnunet(path, model_dir, folds=[0])
    header, *lines = str(caught.value).splitlines()
    assert header == (f"{path}: the exported network differs from nnU-Net's network with each fold's "
                      "parameters (bit for bit):")
    assert len(lines) == 1 and re.fullmatch(_LINE, lines[0]), lines


def _resave_with_one_ulp_more(path, out, key):
    """The exported file with one element of `key` moved by one ulp, saved with its metadata."""
    with zipfile.ZipFile(path) as archive:
        metadata = archive.read(next(n for n in archive.namelist() if n.endswith("/extra/" + METADATA_NAME)))
    with quiet_torchscript():
        module = torch.jit.load(str(path))
        weight = module.state_dict()[key]
        with torch.no_grad():
            flat = weight.view(-1)
            flat[3] = torch.nextafter(flat[3], torch.tensor(float("inf")))
        torch.jit.save(module, str(out), _extra_files={METADATA_NAME: metadata})
    return weight


def test_one_weight_one_ulp_off_fails_with_index_and_both_values(exports, tmp_path):
    path, model_dir, _ = exports("3d_fullres", "network")
    out = tmp_path / "one_ulp.pt"
    changed = _resave_with_one_ulp_more(path, out, "network." + FIRST_KEY)
    checkpoint, want = _checkpoint_weight(model_dir, 0, FIRST_KEY)
    index = [int(i) for i in np.unravel_index(3, tuple(want.shape))]
    got_text, want_text = _text(changed, 3), _text(want, 3)
    assert got_text != want_text
    with pytest.raises(AssertionError) as caught:
        assert_weights_match(out, model_dir)
    assert str(caught.value) == (
        f"{out}: fold 0: weight {FIRST_KEY!r} differs from {checkpoint}: first at index {index}, "
        f"file {got_text} vs checkpoint {want_text} (1 of {want.numel()} values differ)")
    with pytest.raises(AssertionError, match=r"differs from nnU-Net's network with each fold's parameters "
                                             r"\(bit for bit\):\n  input 0 of 1, shape "):
        assert_matches_nnunet(out, model_dir)
    assert_matches_nnunet(out, model_dir, exact=False, tolerance=1e-3)  # one ulp: a tiny difference


def test_a_pipeline_with_another_tile_step_fails_against_nnunets_defaults(exports):
    path, model_dir, _ = exports("3d_fullres", "pipeline", step=0.75)
    assert_weights_match(path, model_dir)  # the weights are right: only the settings differ
    with pytest.raises(AssertionError) as caught:
        assert_matches_nnunet(path, model_dir)
    header, *lines = str(caught.value).splitlines()
    assert header == (
        f"{path}: the exported pipeline (tile_step_size 0.75, use_gaussian True, use_mirroring True, mode exact) "
        "differs from nnU-Net's nnUNetPredictor.predict_logits_from_preprocessed_data (tile_step_size 0.5, "
        "use_gaussian True, use_mirroring True) (bit for bit):")
    # The small volume is one tile whatever the step; the long one is tiled differently.
    assert len(lines) == 1 and lines[0].startswith("  input 1 of 2, shape [1, 10, 20, 52], folds 0: max |difference| ")
    assert_matches_nnunet(path, model_dir, tile_step_size=0.75)


def test_the_metadata_digest_is_checked(exports, tmp_path):
    path, model_dir, _ = exports("3d_fullres", "network")
    out = tmp_path / "digest.pt"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(out, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith("/extra/" + METADATA_NAME):
                data = data.replace(nnunet_export.read_metadata(path)["weights_sha256"]["0"].encode(), b"0" * 64)
            target.writestr(item, data)
    checkpoint = model_dir / "fold_0" / "checkpoint_final.pth"
    with pytest.raises(AssertionError) as caught:
        assert_weights_match(out, model_dir)
    assert str(caught.value) == (
        f"{out}: the metadata's weights_sha256 of fold 0 is {'0' * 64}, but the weights of {checkpoint} hash to "
        f"{nnunet_export.read_metadata(path)['weights_sha256']['0']}")


def test_fold_count_and_inputs_are_checked(exports):
    path, model_dir, _ = exports("3d_fullres", "pipeline")
    with pytest.raises(AssertionError) as caught:
        assert_weights_match(path, model_dir.parent.parent.parent.parent / "multifold" / "nnUNet_results"
                             / model_dir.parent.name / model_dir.name, folds=[0, 1])
    assert str(caught.value) == (f"{path}: the exported file holds 1 fold network(s) but 2 fold(s) were "
                                 "given (0, 1)")
    with pytest.raises(TypeError) as caught:
        assert_matches_nnunet(path, model_dir, ["case_000.nii.gz"])
    assert str(caught.value) == ("image 0: 'case_000.nii.gz' is a file name; images must be preprocessed volumes "
                                 "(tensors or NumPy arrays): reading image files with their spacing is not "
                                 "supported yet")
    with pytest.raises(ValueError) as caught:
        assert_matches_nnunet(path, model_dir, [np.zeros((1, 4, 4), np.float32)])
    assert str(caught.value) == ("image 0: a pipeline's volume must have 4 dimensions (channels, x, y, z), "
                                 "got shape [1, 4, 4]")
    with pytest.raises(TypeError) as caught:
        assert_matches_nnunet(path, model_dir, np.zeros((1, 4, 4, 4), np.float32))
    assert str(caught.value) == ("images must be None or a list of preprocessed volumes (torch tensors or "
                                 "NumPy arrays), got ndarray")


def test_given_volumes_are_compared_as_given(exports):
    path, model_dir, _ = exports("3d_fullres", "pipeline")
    volume = np.random.default_rng(3).standard_normal((1, 7, 23, 11)).astype(np.float32)
    assert_matches_nnunet(path, model_dir, [volume, torch.from_numpy(volume[:, :5])])


def test_without_nnunetv2_the_error_names_the_extra(exports, monkeypatch):
    path, model_dir, _ = exports("3d_fullres", "network")
    monkeypatch.setitem(sys.modules, "nnunetv2.inference.predict_from_raw_data", None)
    with pytest.raises(ImportError) as caught:
        assert_matches_nnunet(path, model_dir)
    assert str(caught.value) == (
        "assert_matches_nnunet compares with nnU-Net's own predictor, and nnunetv2 cannot be imported (import of "
        "nnunetv2.inference.predict_from_raw_data halted; None in sys.modules): pip install nnunet_export[nnunet]")


class _OpensAFile:
    """Unpickling this calls open(path, "w"): a stand-in for code a checkpoint could carry."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_the_nnunet_comparison_never_executes_what_a_checkpoint_carries(exports, tmp_path):
    import shutil

    path, model_dir, checkpoint = exports("3d_fullres", "pipeline")
    folder = tmp_path / model_dir.name
    shutil.copytree(model_dir, folder)
    target = folder / "fold_0" / checkpoint
    marker = tmp_path / "executed"
    content = torch.load(target, map_location="cpu", weights_only=False)
    content["payload"] = _OpensAFile(marker)
    torch.save(content, target)
    torch.load(target, map_location="cpu", weights_only=False)  # the payload is live: unpickling runs it
    assert marker.exists()
    marker.unlink()
    assert_matches_nnunet(path, folder, folds=[0], checkpoint_name=checkpoint)
    assert not marker.exists()
