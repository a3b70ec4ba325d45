"""Outputs are replaced atomically: a failure leaves no partial file and keeps an existing one."""
import os

import pytest

from nnunet_export import ExportError
from nnunet_export.atomic_write import OutputPathError, atomic_output, check_output_path


def test_success_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")
    with atomic_output(target) as tmp:
        # the target's own name, in a hidden folder beside it (archives are named after the file)
        assert tmp.name == target.name and tmp.parent.parent == tmp_path and tmp != target
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"
    assert target.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]


def test_failure_keeps_existing_file_and_removes_temporary(tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]


def test_failure_without_existing_file_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(tmp_path / "m.pt") as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_bad_paths(tmp_path):
    with pytest.raises(OutputPathError, match="does not exist"):
        check_output_path(tmp_path / "missing" / "m.pt")
    with pytest.raises(OutputPathError, match="is a directory"):
        check_output_path(tmp_path)
    assert issubclass(OutputPathError, ExportError)


def test_unwritable_folder(unwritable_folder):
    folder, message = unwritable_folder
    with pytest.raises(OutputPathError) as info:
        check_output_path(folder / "m.pt")
    assert str(info.value) == message
