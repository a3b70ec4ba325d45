"""Every public call leaves torch's process-wide settings as it found them, also when it fails.

Settings: intra-op and inter-op thread counts, cudnn.benchmark, grad mode, default dtype. Each
call runs from two starting states (torch's defaults, and a changed state: 1 thread, grad off,
cudnn.benchmark on, float64 default dtype) and both its success and its failure paths.
"""
from __future__ import annotations

import shutil

import pytest
import torch

import nnunet_export
from nnunet_export import export_writer as export_writer_module
from nnunet_export import loading as loading_module
from nnunet_export import model as model_module

FINAL = "checkpoint_final.pth"


def process_state():
    return (torch.get_num_threads(), torch.get_num_interop_threads(), torch.backends.cudnn.benchmark,
            torch.is_grad_enabled(), torch.get_default_dtype())


@pytest.fixture
def restore_state():
    saved = process_state()
    yield
    torch.set_num_threads(saved[0])
    torch.backends.cudnn.benchmark = saved[2]
    torch.set_grad_enabled(saved[3])
    torch.set_default_dtype(saved[4])


def _changed_state(default_dtype=torch.float32):
    torch.set_num_threads(1)
    torch.backends.cudnn.benchmark = True
    torch.set_grad_enabled(False)
    torch.set_default_dtype(default_dtype)


@pytest.fixture(scope="module")
def folders(nnunet_fixture, tmp_path_factory):
    fixture = nnunet_fixture("3d_fullres")
    root = tmp_path_factory.mktemp("threads")
    corrupt = root / fixture.model_dir.name
    shutil.copytree(fixture.model_dir, corrupt)
    checkpoint = corrupt / "fold_0" / FINAL
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])  # truncated
    model = nnunet_export.load_complete(fixture.model_dir, folds=0)
    exported = root / "exported.pt"
    nnunet_export.to_torchscript(model, exported)
    return {"model_dir": fixture.model_dir, "corrupt": corrupt, "model": model, "exported": exported,
            "root": root}


def _calls(f, tmp_path, monkeypatch):
    """(name, call, expected error or None)."""
    model_dir, model = f["model_dir"], f["model"]

    def failing_verification():
        monkeypatch.setattr(export_writer_module, "_max_abs_diff", lambda a, b: 1.0)
        try:
            nnunet_export.to_torchscript(model, tmp_path / "unverified.pt")
        finally:
            monkeypatch.undo()

    return [
        ("load_complete", lambda: nnunet_export.load_complete(model_dir, folds=0), None),
        ("load_complete num_threads", lambda: nnunet_export.load_complete(model_dir, folds=0, num_threads=1), None),
        ("load_complete bad folder", lambda: nnunet_export.load_complete(tmp_path / "nope"),
         nnunet_export.ModelFolderError),
        ("load_complete missing fold", lambda: nnunet_export.load_complete(model_dir, folds=4),
         nnunet_export.ModelFolderError),
        ("load_complete corrupt checkpoint", lambda: nnunet_export.load_complete(f["corrupt"], folds=0),
         nnunet_export.CheckpointError),
        ("read_checkpoint", lambda: nnunet_export.read_checkpoint(model_dir / "fold_0" / FINAL), None),
        ("read_checkpoint corrupt", lambda: nnunet_export.read_checkpoint(f["corrupt"] / "fold_0" / FINAL),
         nnunet_export.CheckpointError),
        ("read_model_config", lambda: nnunet_export.read_model_config(model_dir), None),
        ("read_model_config bad folder", lambda: nnunet_export.read_model_config(tmp_path / "nope"),
         nnunet_export.ExportError),
        ("to_torchscript", lambda: nnunet_export.to_torchscript(model, tmp_path / "m.pt"), None),
        ("to_torchscript from folder", lambda: nnunet_export.to_torchscript(model_dir, tmp_path / "d.pt", folds=0,
                                                                            num_threads=1), None),
        ("to_torchscript bad output path", lambda: nnunet_export.to_torchscript(model, tmp_path / "no" / "m.pt"),
         nnunet_export.OutputPathError),
        ("to_torchscript missing fold", lambda: nnunet_export.to_torchscript(model_dir, tmp_path / "x.pt", folds=4),
         nnunet_export.ModelFolderError),
        ("to_torchscript verification failure", failing_verification, nnunet_export.VerificationError),
        ("to_exported_program bad output path",
         lambda: nnunet_export.to_exported_program(model, tmp_path / "no" / "m.pt2"), nnunet_export.OutputPathError),
        ("read_metadata", lambda: nnunet_export.read_metadata(f["exported"]), None),
        ("read_metadata bad file", lambda: nnunet_export.read_metadata(model_dir / "plans.json"),
         nnunet_export.ExportError),
    ]


# Calls whose work does not depend on the default dtype (they run no forward pass on inputs
# they create themselves), so they must work, and restore everything, under float64 too.
DTYPE_INDEPENDENT = ("load_complete", "read_checkpoint", "read_model_config", "read_metadata",
                     "to_torchscript bad output path", "to_exported_program bad output path",
                     "to_torchscript missing fold")


@pytest.mark.parametrize("start", ["defaults", "changed", "changed float64"])
def test_every_public_call_restores_process_state(folders, tmp_path, monkeypatch, restore_state, start):
    if start != "defaults":
        _changed_state(torch.float64 if start.endswith("float64") else torch.float32)
    before = process_state()
    for name, call, error in _calls(folders, tmp_path, monkeypatch):
        if start.endswith("float64") and not name.startswith(DTYPE_INDEPENDENT):
            continue
        if error is None:
            call()
        else:
            with pytest.raises(error):
                call()
        assert process_state() == before, name


def test_to_exported_program_restores_process_state(folders, tmp_path, restore_state):
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    before = process_state()
    report = nnunet_export.to_exported_program(folders["model"], tmp_path / "m.pt2")
    assert report.verified
    assert process_state() == before


def _observe_threads(monkeypatch, module, attr):
    seen = []
    original = getattr(module, attr)

    def hook(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)
    monkeypatch.setattr(module, attr, hook)
    return seen


def test_num_threads_bounds_threads_inside_and_is_restored(folders, tmp_path, monkeypatch, restore_state):
    torch.set_num_threads(2)
    if torch.get_num_threads() != 2:
        pytest.skip("this machine cannot run 2 intra-op threads")
    seen = _observe_threads(monkeypatch, loading_module, "_read_fold")
    nnunet_export.load_complete(folders["model_dir"], folds=0, num_threads=1)
    nnunet_export.load_complete(folders["model_dir"], folds=0)
    assert seen == [1, 2]
    assert torch.get_num_threads() == 2

    seen_export = _observe_threads(monkeypatch, model_module, "build_metadata")
    nnunet_export.to_torchscript(folders["model_dir"], tmp_path / "m.pt", folds=0, num_threads=1)
    assert seen[2:] == [1] and seen_export == [1]
    assert torch.get_num_threads() == 2

    with pytest.raises(nnunet_export.CheckpointError):
        nnunet_export.load_complete(folders["corrupt"], folds=0, num_threads=1)
    assert seen[3:] == [1] and torch.get_num_threads() == 2


def test_load_complete_with_float64_default_dtype_keeps_checkpoint_dtype(folders, restore_state):
    torch.set_default_dtype(torch.float64)
    model = nnunet_export.load_complete(folders["model_dir"], folds=0)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert torch.get_default_dtype() == torch.float64


def test_to_torchscript_under_float64_default_dtype(folders, tmp_path, restore_state):
    torch.set_default_dtype(torch.float64)
    before = process_state()
    try:
        nnunet_export.to_torchscript(folders["model"], tmp_path / "m.pt")
    finally:
        assert process_state() == before  # restored even on this failure
