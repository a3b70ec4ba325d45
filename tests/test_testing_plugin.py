"""The pytest plugin: off unless enabled (an unrelated run imports nothing of nnunet_export), on
with -p nnunet_export or the ini option, and examples/test_my_export.py passes with it.

The runs are subprocesses with the plugin's ``pytest11`` entry point installed the way a wheel
installs it: a dist-info folder on sys.path whose entry_points.txt names the switch module.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import nnunet_export

REPO = Path(__file__).resolve().parent.parent
DEMO_MODEL = REPO / "examples" / "demo_model"
INSTALLED = os.environ.get("NNUNET_EXPORT_TEST_INSTALLED") == "1"

_UNRELATED_TEST = '''
import sys

def test_nothing_of_nnunet_export_was_imported():
    assert "pytest_nnunet_export" in sys.modules  # the entry point is installed and was loaded
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("nnunet_export", "torch", "numpy"))
    assert loaded == []
'''
_FIXTURE_TEST = '''
from nnunet_export.testing import assert_weights_match

def test_export(nnunet_exported, nnunet_model_dir, nnunet_folds, nnunet_checkpoint_name):
    assert nnunet_folds == (0,) and nnunet_checkpoint_name == "checkpoint_final.pth"
    assert_weights_match(nnunet_exported, nnunet_model_dir, folds=nnunet_folds)
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A sys.path folder holding the entry point as an installed wheel declares it (pyproject.toml)."""
    folder = tmp_path_factory.mktemp("site")
    if not INSTALLED:  # the installed wheel declares it already
        info = folder / "nnunet_export_entry_point-0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nnunet_export_entry_point\nVersion: 0\n")
        (info / "entry_points.txt").write_text("[pytest11]\nnnunet_export = pytest_nnunet_export\n")
    return folder


def pytest_run(site: Path, folder: Path, *args, ini: str | None = None) -> subprocess.CompletedProcess:
    (folder / "pytest.ini").write_text("[pytest]\n" + (ini or ""))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_PLUGINS", "PYTEST_ADDOPTS",
                                                            "PYTEST_DISABLE_PLUGIN_AUTOLOAD")}
    paths = [str(site)] + ([] if INSTALLED else [str(Path(nnunet_export.__file__).resolve().parent.parent)])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *map(str, args)],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=600)


def test_the_pyproject_declares_the_entry_point():
    text = (REPO / "pyproject.toml").read_text()
    assert '[project.entry-points.pytest11]\nnnunet_export = "pytest_nnunet_export"\n' in text


def test_installed_but_not_enabled_an_unrelated_run_imports_nothing(site, tmp_path):
    (tmp_path / "test_unrelated.py").write_text(_UNRELATED_TEST)
    result = pytest_run(site, tmp_path, "test_unrelated.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_its_options_without_enabling_it_are_a_usage_error(site, tmp_path):
    (tmp_path / "test_unrelated.py").write_text(_UNRELATED_TEST)
    result = pytest_run(site, tmp_path, "test_unrelated.py", "--nnunet-model", DEMO_MODEL)
    assert result.returncode == 4
    assert result.stderr.strip() == (
        "ERROR: --nnunet-model is an option of the nnunet_export plugin, which is off: enable it with "
        "-p nnunet_export or 'nnunet_export = true' in the pytest ini file")


@pytest.mark.parametrize("how", ["-p", "ini", "-p without autoload"])
def test_enabled_its_fixtures_give_the_model_and_the_export(how, site, tmp_path):
    exported = tmp_path / "model.pt"
    nnunet_export.to_torchscript(DEMO_MODEL, exported)
    (tmp_path / "test_export.py").write_text(_FIXTURE_TEST)
    args = ["test_export.py", "--nnunet-model", DEMO_MODEL, "--nnunet-export", exported, "--nnunet-folds", "0"]
    if how == "ini":
        result = pytest_run(site, tmp_path, *args, ini="nnunet_export = true\n")
    else:
        if how == "-p without autoload":
            os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
        try:
            result = pytest_run(site, tmp_path, "-p", "nnunet_export", *args)
        finally:
            os.environ.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    assert f"nnunet_export: model {DEMO_MODEL}, export {exported}" in result.stdout


def test_the_fixtures_explain_a_missing_model_option(site, tmp_path):
    (tmp_path / "test_export.py").write_text(_FIXTURE_TEST)
    result = pytest_run(site, tmp_path, "-p", "nnunet_export", "test_export.py")
    assert result.returncode == 1
    assert "the fixture nnunet_model_dir needs --nnunet-model DIR (the trained model folder)" in result.stdout


def test_the_example_passes_on_the_demo_model(site, tmp_path):
    result = pytest_run(site, tmp_path, "-p", "nnunet_export", REPO / "examples" / "test_my_export.py",
                        "--nnunet-model", DEMO_MODEL)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
