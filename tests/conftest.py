"""Shared pytest setup: the Primus import shim, nnU-Net model-folder fixtures, torch thread hygiene."""
from __future__ import annotations

# Test-only shim, applied before anything imports nnunetv2's trainer lookup: where PyPI's
# torchvision cannot load beside the CPU torch wheel, nnU-Net's trainer search would crash on the
# Primus trainers (timm -> torchvision). See primus_import_shim.py; nothing else is stubbed.
from primus_import_shim import skip_primus_trainers_if_torchvision_is_broken

skip_primus_trainers_if_torchvision_is_broken()

import os  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import nnunet_fixtures  # noqa: E402


@pytest.fixture(scope="session")
def nnunet_fixture():
    """Factory fixture: `nnunet_fixture(name, size="tiny") -> ModelFixture`.

    The first tiny request builds every missing tiny fixture in one process (the suite uses them
    all, and one process is much cheaper than one per variant); later requests and later sessions
    reuse the on-disk cache and never rebuild.
    """
    known: dict[tuple[str, str], nnunet_fixtures.ModelFixture] = {}

    def get(name: str, size: str = "tiny") -> nnunet_fixtures.ModelFixture:
        if (name, size) not in known:
            names = nnunet_fixtures.TINY_FIXTURE_NAMES if size == "tiny" else (name,)
            for fixture_name, fixture in nnunet_fixtures.build_fixtures(names, size).items():
                known[(fixture_name, size)] = fixture
        return known[(name, size)]

    return get


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """nnUNetPredictor changes torch's global thread count (and restores it outside try/finally)."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def unwritable_folder(tmp_path):
    """(folder, message): a folder this process cannot create files in, and the OutputPathError
    message an export into it must give. Also runs as root, which passes every permission check:
    sysfs refuses new files even to root."""
    if os.geteuid() != 0:
        folder = tmp_path / "read_only"
        folder.mkdir()
        folder.chmod(0o500)
        try:
            yield folder, f"output folder {str(folder)!r} is not writable"
        finally:
            folder.chmod(0o700)
        return
    folder = Path("/sys")
    try:
        fd, name = tempfile.mkstemp(dir=folder)
    except PermissionError:
        yield folder, f"output folder {str(folder)!r} is not writable: Permission denied"
        return
    os.close(fd)
    os.unlink(name)
    pytest.skip("running as root and /sys takes new files here: no unwritable folder to test")
