"""Exports that must fail: a file that does not reproduce the eager module, a path that cannot
be written, a method that cannot work, and metadata read from files we did not write. A failed
export leaves no file and no temporary, and an existing file at the path keeps every byte."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest
import torch

from nnunet_export import (
    ExportError,
    MetadataError,
    OutputPathError,
    VerificationError,
    complete,
    load_complete,
    read_metadata,
    to_exported_program,
    to_torchscript,
)
from nnunet_export.metadata import METADATA_NAME
from nnunet_export.model import verification_inputs
from nnunet_fixtures import get_fixture

PREVIOUS = b"a previous export, which a failed export must not touch\n"
SHIFT = 0.5


@pytest.fixture(scope="module")
def model():
    return load_complete(get_fixture("3d_fullres").model_dir, folds=0)


def _small_shape(model):
    # TorchScript exports verify on one small input by default; .pt2 programs at the patch size.
    return tuple(verification_inputs(model.info.config, torch.device("cpu"))[0].shape)


def _patch_shape(model) -> tuple[int, ...]:
    config = model.info.config
    return (1, config.num_input_channels, *config.patch_size)


def _prepare(tmp_path: Path, existing: bool) -> Path:
    path = tmp_path / "model.pt"
    if existing:
        path.write_bytes(PREVIOUS)
    return path


def _assert_untouched(tmp_path: Path, path: Path, existing: bool) -> None:
    """Nothing but the previous file (if any) is left in the folder: no export, no temporary."""
    assert sorted(os.listdir(tmp_path)) == ([path.name] if existing else [])
    if existing:
        assert path.read_bytes() == PREVIOUS


class _Shifted:
    """A loaded module whose logits are off by SHIFT; its weights are the file's."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, x):
        return self.inner(x) + SHIFT

    def state_dict(self):
        return self.inner.state_dict()


def _one_ulp_up(tensor: torch.Tensor) -> None:
    flat = tensor.view(-1)
    flat[0] = torch.nextafter(flat[0], torch.tensor(float("inf"), dtype=flat.dtype))


# --- verification failures -------------------------------------------------------------------

@pytest.mark.parametrize("existing", [False, True])
def test_torchscript_output_mismatch(model, tmp_path, monkeypatch, existing):
    path = _prepare(tmp_path, existing)
    real_load = torch.jit.load
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: _Shifted(real_load(*a, **k)))
    with pytest.raises(VerificationError) as info:
        to_torchscript(model, path)
    assert str(info.value) == (
        f"{path}: the exported model differs from the eager module by {SHIFT:.3g} (> 1e-06) on an "
        f"input of shape {_small_shape(model)}; no file was written"
    )
    _assert_untouched(tmp_path, path, existing)


@pytest.mark.parametrize("existing", [False, True])
def test_torchscript_corrupt_weight(model, tmp_path, monkeypatch, existing):
    """One weight one ulp off: the logits stay within a loose tolerance, the bitwise check fails."""
    path = _prepare(tmp_path, existing)
    key = next(iter(model.state_dict()))
    real_load = torch.jit.load

    def corrupting_load(*args, **kwargs):
        loaded = real_load(*args, **kwargs)
        with torch.no_grad():
            _one_ulp_up(loaded.state_dict()[key])
        return loaded

    monkeypatch.setattr(torch.jit, "load", corrupting_load)
    with pytest.raises(VerificationError) as info:
        to_torchscript(model, path, tolerance=1.0)
    assert str(info.value) == f"{path}: exported weight {key!r} is not bit-identical to the checkpoint's"
    _assert_untouched(tmp_path, path, existing)


class _FakeProgram:
    def __init__(self, program, shift: float, corrupt_key: str | None):
        self.program, self.shift = program, shift
        self.state_dict = {k: v.clone() for k, v in program.state_dict.items()}
        if corrupt_key is not None:
            _one_ulp_up(self.state_dict[corrupt_key])

    def module(self):
        inner, shift = self.program.module(), self.shift
        return lambda x: inner(x) + shift


@pytest.mark.parametrize("existing", [False, True])
def test_exported_program_output_mismatch(model, tmp_path, monkeypatch, existing):
    path = tmp_path / "model.pt2"
    if existing:
        path.write_bytes(PREVIOUS)
    real_load = torch.export.load
    monkeypatch.setattr(torch.export, "load", lambda *a, **k: _FakeProgram(real_load(*a, **k), SHIFT, None))
    with pytest.raises(VerificationError) as info:
        to_exported_program(model, path)
    assert str(info.value) == (
        f"{path}: the exported program differs from the eager module by {SHIFT:.3g} (> 1e-06) on an "
        f"input of shape {_patch_shape(model)}; no file was written"
    )
    _assert_untouched(tmp_path, path, existing)


def test_exported_program_corrupt_weight(model, tmp_path, monkeypatch):
    path = tmp_path / "model.pt2"
    key = next(iter(model.state_dict()))
    real_load = torch.export.load
    monkeypatch.setattr(torch.export, "load", lambda *a, **k: _FakeProgram(real_load(*a, **k), 0.0, key))
    with pytest.raises(VerificationError) as info:
        to_exported_program(model, path)
    assert str(info.value) == f"{path}: exported weight {key!r} is not bit-identical to the checkpoint's"
    _assert_untouched(tmp_path, path, False)


def test_failure_while_writing_keeps_existing_file(model, tmp_path, monkeypatch):
    path = _prepare(tmp_path, True)

    def failing_save(module, f, **kwargs):
        Path(f).write_bytes(b"half a file")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch.jit, "save", failing_save)
    with pytest.raises(RuntimeError, match="^disk full$"):
        to_torchscript(model, path, verify=False)
    _assert_untouched(tmp_path, path, True)


# --- output paths: refused before any work (a model folder that does not exist is never read) --

EXPORTERS = {"torchscript": (to_torchscript, "model.pt"), "pt2": (to_exported_program, "model.pt2")}


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_missing_output_folder(tmp_path, exporter):
    export, name = EXPORTERS[exporter]
    path = tmp_path / "missing" / name
    with pytest.raises(OutputPathError) as info:
        export(tmp_path / "no_model_here", path)
    assert str(info.value) == f"output folder {str(path.parent)!r} does not exist"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_output_path_is_a_directory(tmp_path, exporter):
    export, name = EXPORTERS[exporter]
    path = tmp_path / name
    path.mkdir()
    with pytest.raises(OutputPathError) as info:
        export(tmp_path / "no_model_here", path)
    assert str(info.value) == f"output path {str(path)!r} is a directory; give a file name"
    assert os.listdir(tmp_path) == [name] and os.listdir(path) == []


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_unwritable_output_folder(tmp_path, exporter, unwritable_folder):
    export, name = EXPORTERS[exporter]
    folder, message = unwritable_folder
    with pytest.raises(OutputPathError) as info:
        export(tmp_path / "no_model_here", folder / name)
    assert str(info.value) == message
    assert not (folder / name).exists()


# --- methods -----------------------------------------------------------------------------------

def test_bad_method_refused_before_loading(tmp_path):
    with pytest.raises(ExportError) as info:
        to_torchscript(tmp_path / "no_model_here", tmp_path / "model.pt", method="jit")
    assert str(info.value) == "method must be 'auto', 'script' or 'trace', got 'jit'"
    assert os.listdir(tmp_path) == []


def test_load_arguments_with_a_loaded_module_refused(model, tmp_path):
    with pytest.raises(ExportError) as info:
        to_torchscript(model, tmp_path / "model.pt", folds=(0, 1))
    assert str(info.value) == (
        "to_torchscript got a loaded module and load_complete arguments ['folds']; those apply only "
        "to a model folder: pass them to load_complete instead"
    )
    with pytest.raises(ExportError) as info:
        to_exported_program(model, tmp_path / "model.pt2", checkpoint_name="checkpoint_best.pth")
    assert str(info.value) == (
        "to_exported_program got a loaded module and load_complete arguments ['checkpoint_name']; "
        "those apply only to a model folder: pass them to load_complete instead"
    )
    assert os.listdir(tmp_path) == []


@pytest.fixture(scope="module")
def predictor_network():
    """nnU-Net's own network (dynamic-network-architectures), which TorchScript cannot script."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(device=torch.device("cpu"), verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(get_fixture("3d_fullres").model_dir), use_folds=(0,),
                                                   checkpoint_name="checkpoint_final.pth")
    return complete(predictor)


def test_script_on_a_non_scriptable_network(predictor_network, tmp_path):
    with pytest.raises(ExportError) as info:
        to_torchscript(predictor_network, tmp_path / "model.pt", method="script")
    assert str(info.value) == (
        "method='script' is impossible: the predictor's own network (dynamic-network-architectures) "
        "is traced"
    )
    assert os.listdir(tmp_path) == []


def test_auto_traces_a_non_scriptable_network(predictor_network, tmp_path):
    lines: list[str] = []
    report = to_torchscript(predictor_network, tmp_path / "model.pt", progress=lines.append)
    assert report.method == "trace"
    assert lines[0] == ("tracing instead of scripting: the predictor's own network "
                        "(dynamic-network-architectures) is traced")
    assert report.verified and report.max_abs_diff <= 1e-6
    assert read_metadata(tmp_path / "model.pt")["export_method"] == "trace"


# --- read_metadata on files we did not write -------------------------------------------------------

def test_read_metadata_missing_file(tmp_path):
    path = tmp_path / "absent.pt"
    with pytest.raises(MetadataError) as info:
        read_metadata(path)
    assert str(info.value) == f"{str(path)!r} does not exist or is not a file"
    with pytest.raises(MetadataError) as info:
        read_metadata(tmp_path)
    assert str(info.value) == f"{str(tmp_path)!r} does not exist or is not a file"


def test_read_metadata_not_a_zip(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"not a zip archive at all")
    with pytest.raises(MetadataError) as info:
        read_metadata(path)
    assert str(info.value) == f"{str(path)!r} is not a TorchScript or .pt2 archive: File is not a zip file"


def _no_metadata_message(path: Path) -> str:
    return (f"{str(path)!r} holds no nnunet_export metadata (extra/{METADATA_NAME}): "
            "it was not written by nnunet_export")


def test_read_metadata_plain_torchscript_and_checkpoint(tmp_path):
    scripted = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(torch.nn.Conv3d(1, 2, 3)), str(scripted))
    state_dict = tmp_path / "weights.pth"
    torch.save(torch.nn.Conv3d(1, 2, 3).state_dict(), state_dict)
    for path in (scripted, state_dict):
        with pytest.raises(MetadataError) as info:
            read_metadata(path)
        assert str(info.value) == _no_metadata_message(path)


def test_read_metadata_foreign_document(tmp_path):
    path = tmp_path / "other.pt"
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(path),
                   _extra_files={METADATA_NAME: b'{"format": "something else"}'})
    with pytest.raises(MetadataError) as info:
        read_metadata(path)
    assert str(info.value) == f"{str(path)!r}: metadata is not an nnunet_export document"
    with zipfile.ZipFile(path) as archive:
        assert any(n.endswith("/extra/" + METADATA_NAME) for n in archive.namelist())
