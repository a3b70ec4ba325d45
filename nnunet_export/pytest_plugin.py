"""The fixtures of nnunet_export's pytest plugin, loaded only in runs that enable it (see the
``pytest_nnunet_export`` switch module): a user's export test is then a few lines.

    pytest -p nnunet_export test_my_export.py --nnunet-model MODEL_DIR --nnunet-export model.pt

    def test_export(nnunet_exported, nnunet_model_dir, nnunet_folds):
        assert_weights_match(nnunet_exported, nnunet_model_dir, folds=nnunet_folds)
        assert_matches_nnunet(nnunet_exported, nnunet_model_dir, folds=nnunet_folds)
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest

from .loading import load_complete
from .metadata import read_metadata

kNoModelError = "the fixture nnunet_model_dir needs --nnunet-model DIR (the trained model folder)"
kNoExportError = "--nnunet-export {path!r} does not exist or is not a file"


def pytest_report_header(config) -> list[str]:
    return [f"nnunet_export: model {config.getoption('nnunet_model')}, "
            f"export {config.getoption('nnunet_export') or '(exported to a temporary file)'}"]


@pytest.fixture(scope="session")
def nnunet_model_dir(request) -> Path:
    """The trained model folder given with --nnunet-model."""
    value = request.config.getoption("nnunet_model")
    if not value:
        pytest.fail(kNoModelError, pytrace=False)
    return Path(value)


@pytest.fixture(scope="session")
def nnunet_folds(request) -> Optional[tuple]:
    """The folds given with --nnunet-folds (None: the export's metadata says which)."""
    folds = request.config.getoption("nnunet_folds")
    return None if folds is None else tuple(int(f) if f.isdigit() else f for f in folds)


@pytest.fixture(scope="session")
def nnunet_checkpoint_name(request) -> str:
    """The checkpoint file name given with --nnunet-checkpoint (default checkpoint_final.pth)."""
    return request.config.getoption("nnunet_checkpoint") or "checkpoint_final.pth"


@pytest.fixture(scope="session")
def nnunet_exported(request, nnunet_model_dir, nnunet_folds, nnunet_checkpoint_name, tmp_path_factory) -> Path:
    """The file given with --nnunet-export; without it, the model exported once per session to a
    temporary file (the prediction pipeline, or the network where the pipeline cannot be scripted)."""
    value = request.config.getoption("nnunet_export")
    if value:
        path = Path(value)
        if not path.is_file():
            pytest.fail(kNoExportError.format(path=value), pytrace=False)
        read_metadata(path)  # a clear MetadataError now rather than in every test
        return path
    model = load_complete(nnunet_model_dir, folds=nnunet_folds, checkpoint_name=nnunet_checkpoint_name)
    path = tmp_path_factory.mktemp("nnunet_export") / "exported.pt"
    if model.info.scriptable:
        model.pipeline().to_torchscript(path)
    else:
        model.to_torchscript(path)
    return path
