"""Fold arguments, fold detection and wrapper prefixes, with the messages users see."""
import pytest
import torch

from nnunet_export import ExportError, WeightsMismatchError
from nnunet_export.folds import (
    ModelFolderError,
    checkpoint_file,
    detect_folds,
    normalize_folds,
    resolve_model_dir,
)
from nnunet_export.prefixes import strip_key, strip_state_dict_prefixes, unwrap_module


@pytest.fixture
def model_dir(tmp_path):
    root = tmp_path / "nnUNetTrainer__nnUNetPlans__2d"
    root.mkdir()
    (root / "plans.json").write_text("{}")
    for fold in ("0", "2", "all"):
        (root / f"fold_{fold}").mkdir()
        (root / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(b"x")
    (root / "fold_3").mkdir()  # no checkpoint: not a usable fold
    return root


def test_normalize_folds_accepts_nnunet_spellings():
    assert normalize_folds(None) is None
    assert normalize_folds(3) == (3,)
    assert normalize_folds("all") == ("all",)
    assert normalize_folds(["0", 1, "all"]) == (0, 1, "all")


@pytest.mark.parametrize("bad, message", [
    ([], "folds is empty"),
    ([0, 0], "listed twice"),
    (-1, "negative"),
    ("fold0", "is not a fold"),
    (True, "is not a fold"),
    ([1.0], "is not a fold"),
])
def test_normalize_folds_rejects(bad, message):
    with pytest.raises(ModelFolderError, match=message):
        normalize_folds(bad)
    assert issubclass(ModelFolderError, ExportError)


def test_detect_folds_like_nnunet_never_fold_all(model_dir):
    assert detect_folds(model_dir, "checkpoint_final.pth") == (0, 2)


def test_detect_folds_none_found_names_checkpoint(model_dir):
    with pytest.raises(ModelFolderError, match="no fold_N folder with 'checkpoint_best.pth'"):
        detect_folds(model_dir, "checkpoint_best.pth")


def test_resolve_accepts_fold_folder(model_dir):
    assert resolve_model_dir(model_dir / "fold_2") == (model_dir, 2)
    assert resolve_model_dir(model_dir / "fold_all") == (model_dir, "all")
    assert resolve_model_dir(model_dir) == (model_dir, None)


def test_resolve_errors(tmp_path, model_dir):
    with pytest.raises(ModelFolderError, match="does not exist"):
        resolve_model_dir(tmp_path / "nope")
    with pytest.raises(ModelFolderError, match="not a directory"):
        resolve_model_dir(model_dir / "plans.json")
    with pytest.raises(ModelFolderError, match="has no plans.json"):
        resolve_model_dir(tmp_path)


def test_checkpoint_file_lists_what_the_fold_has(model_dir):
    assert checkpoint_file(model_dir, 0, "checkpoint_final.pth").name == "checkpoint_final.pth"
    with pytest.raises(ModelFolderError, match=r"checkpoint_best.pth' does not exist; that fold has \['checkpoint_final.pth'\]"):
        checkpoint_file(model_dir, 0, "checkpoint_best.pth")
    with pytest.raises(ModelFolderError, match="fold folder does not exist"):
        checkpoint_file(model_dir, 7, "checkpoint_final.pth")
    with pytest.raises(ModelFolderError, match="plain file name"):
        checkpoint_file(model_dir, 0, "../plans.json")


@pytest.mark.parametrize("key", [
    "encoder.x", "_orig_mod.encoder.x", "module.encoder.x",
    "_orig_mod.module.encoder.x", "module._orig_mod.encoder.x",
])
def test_strip_key_all_combinations(key):
    assert strip_key(key) == "encoder.x"


def test_strip_refuses_colliding_keys():
    with pytest.raises(WeightsMismatchError, match="both become 'a.w'"):
        strip_state_dict_prefixes({"module.a.w": 1, "a.w": 2})


def test_unwrap_compiled_and_dataparallel():
    net = torch.nn.Conv2d(1, 1, 1)
    compiled = torch.compile(net)
    assert unwrap_module(compiled) is net
    assert unwrap_module(torch.nn.DataParallel(net)) is net
    assert unwrap_module(torch.compile(torch.nn.DataParallel(net))) is net
    assert set(compiled.state_dict()) == {"_orig_mod.weight", "_orig_mod.bias"}
