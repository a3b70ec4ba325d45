"""What a user installs: the wheel and sdist carry every module and data file, the metadata is what an
index shows, and (under scripts/test.sh) the suite really runs against the installed wheel.

scripts/test.sh builds the sdist, the wheel from that sdist, installs the wheel into a fresh venv
and sets NNUNET_EXPORT_TEST_INSTALLED=1 plus NNUNET_EXPORT_TEST_SDIST / NNUNET_EXPORT_TEST_WHEEL.
Run against the source tree instead, the archive tests build their own sdist and wheel (seconds).
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import site
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import nnunet_export

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "nnunet_export"
INSTALLED = os.environ.get("NNUNET_EXPORT_TEST_INSTALLED") == "1"
# Nothing in the base requirements or in any extra may name one of these but "torch" itself, and
# that one only with a floor: an install under a torch pin must keep the pinned build.
TORCH_FAMILY = {"torch", "torchvision", "torchaudio", "triton", "pytorch-triton"}


def package_files() -> set[str]:
    """Every file of the source package that must ship, as wheel paths (nnunet_export/...)."""
    patterns = ("*.py", "*.pyi", "py.typed")
    found = {p for pattern in patterns for p in PACKAGE.rglob(pattern) if "__pycache__" not in p.parts}
    return {p.relative_to(REPO).as_posix() for p in found}


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> tuple[Path, Path]:
    """(sdist, wheel built from that sdist): test.sh's, or built here without build isolation."""
    sdist, wheel = os.environ.get("NNUNET_EXPORT_TEST_SDIST"), os.environ.get("NNUNET_EXPORT_TEST_WHEEL")
    if sdist and wheel:
        return Path(sdist), Path(wheel)
    if INSTALLED:
        pytest.fail("NNUNET_EXPORT_TEST_INSTALLED=1 needs NNUNET_EXPORT_TEST_SDIST and NNUNET_EXPORT_TEST_WHEEL")
    try:  # the distribution, not a module: the checkout's own build/ folder imports as "build" too
        importlib.metadata.version("build")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("building the archives here needs the 'build' package (bootstrap.sh installs it)")
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)],
                            capture_output=True, text=True, timeout=600, cwd=out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return next(out.glob("*.tar.gz")), next(out.glob("*.whl"))


def wheel_metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(archive.read(name).decode())


# ------------------------------------------------------------------ installed mode


@pytest.mark.skipif(not INSTALLED, reason="only under scripts/test.sh (NNUNET_EXPORT_TEST_INSTALLED=1)")
def test_suite_imports_the_installed_wheel_not_the_source_tree():
    location = Path(nnunet_export.__file__).resolve()
    assert location.parent != PACKAGE, f"nnunet_export imported from the source tree: {location}"
    site_packages = [Path(p).resolve() for p in site.getsitepackages()]
    assert location.parent.parent in site_packages, (location, site_packages)
    # pytest puts tests/ on sys.path (conftest.py's folder); the checkout itself must not be there.
    assert "" not in sys.path and REPO not in [Path(p).resolve() for p in sys.path], sys.path
    assert Path(nnunet_export._core.__file__).resolve().parent == location.parent
    direct_url = importlib.metadata.distribution("nnunet_export").read_text("direct_url.json")
    assert direct_url is not None and not json.loads(direct_url).get("dir_info", {}).get("editable", False)


@pytest.mark.skipif(not INSTALLED, reason="only under scripts/test.sh (NNUNET_EXPORT_TEST_INSTALLED=1)")
def test_installed_package_holds_every_source_file_unchanged():
    installed = Path(nnunet_export.__file__).resolve().parent
    for name in sorted(package_files()):
        path = installed / Path(name).relative_to("nnunet_export")
        assert path.is_file(), f"{name} was not installed"
        assert path.read_bytes() == (REPO / name).read_bytes(), f"installed {name} differs from the source tree"


# ------------------------------------------------------------------ archives


def test_wheel_ships_every_module_and_data_file_and_nothing_else(dist):
    _, wheel = dist
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    package = {n for n in names if n.startswith("nnunet_export/")}
    cores = [n for n in package if n.startswith("nnunet_export/_core.") and n.endswith(".so")]
    assert len(cores) == 1, sorted(package)
    assert package - set(cores) == package_files()
    # Beside the package: the pytest plugin's switch (a separate module, so that pytest's
    # autoload of it never imports nnunet_export) and the dist-info.
    switch = {n for n in names if n.startswith("pytest_nnunet_export/")}
    assert switch == {"pytest_nnunet_export/__init__.py"}, sorted(switch)
    others = names - package - switch
    assert others and all(n.startswith("nnunet_export-") and ".dist-info/" in n for n in others), sorted(others)
    assert "nnunet_export/architectures/__init__.py" in package and "nnunet_export/py.typed" in package


def test_sdist_carries_what_a_fresh_build_needs(dist):
    sdist, _ = dist
    with tarfile.open(sdist) as archive:
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    csrc = {p.relative_to(REPO).as_posix() for p in (REPO / "csrc").iterdir() if p.suffix in (".c", ".h")}
    assert csrc <= names, sorted(csrc - names)
    assert {"csrc/nnunet_export.h", "setup.py", "pyproject.toml", "MANIFEST.in", "README.md"} <= names
    assert package_files() <= names, sorted(package_files() - names)
    assert not [n for n in names if n.endswith((".so", ".o", ".pyc"))]


def test_metadata_is_what_an_index_shows(dist):
    _, wheel = dist
    meta = wheel_metadata(wheel)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert meta["Name"] == "nnunet_export" and meta["Version"] == nnunet_export.__version__
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta["Requires-Python"] == ">=3.10"
    assert meta["Description-Content-Type"] == "text/markdown"
    assert meta.get_payload().startswith("# nnunet_export\n")
    classifiers = meta.get_all("Classifier")
    assert "Programming Language :: Python :: 3.10" in classifiers and "Typing :: Typed" in classifiers
    assert meta.get_all("Project-URL"), "no project URLs"
    assert set(meta.get_all("Provides-Extra")) == set(project["optional-dependencies"]) >= {"nnunet", "test"}
    entry_points = (zipfile.Path(wheel) / f"nnunet_export-{meta['Version']}.dist-info" / "entry_points.txt").read_text()
    assert "[console_scripts]\nnnunet-export = nnunet_export.cli:main" in entry_points


def test_no_requirement_pins_another_torch(dist):
    _, wheel = dist
    requirements = wheel_metadata(wheel).get_all("Requires-Dist")
    torch_family = [str(r) for r in map(Requirement, requirements) if r.name.lower() in TORCH_FAMILY]
    assert torch_family == ["torch>=2.1"], torch_family
