"""examples/cpp (nnunet_infer): an exported file runs under libtorch without Python, with the
same logits as torch.jit.load in Python, and every bad input ends in a one-line error.

The binary is built once per machine with examples/cpp/build.sh (as CI builds it) into
.cpp-build/<key>, keyed by the example's sources and the torch build; later runs reuse it.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nnunet_export import _core
from nnunet_export.metadata import METADATA_NAME, read_metadata

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "cpp"
BUILD_ROOT = REPO / ".cpp-build"
TOLERANCE = 1e-5
RUN_TIMEOUT_S = 300
ERROR_PREFIX = "nnunet_infer: error: "


# --- the exported file: the one place that knows how it was made ---------------------------

def _exported_model(tmp_path: Path) -> tuple[Path, tuple[int, ...]]:
    """Exports a genuine nnU-Net 3d_fullres fixture (fold 0) with to_torchscript; returns
    (path, an input shape of the model's patch size)."""
    from nnunet_export import load_complete, to_torchscript
    from nnunet_fixtures import get_fixture

    model = load_complete(get_fixture("3d_fullres").model_dir, folds=0)
    path = tmp_path / "model.pt"
    to_torchscript(model, path)
    config = model.info.config
    return path, (1, config.num_input_channels, *config.patch_size)


def _exported_pipeline(tmp_path: Path) -> tuple[Path, object, tuple[int, ...]]:
    """Exports the 3d_fullres fixture's whole prediction pipeline; returns (path, the eager
    pipeline, a volume shape of several tiles)."""
    from nnunet_export import load_complete, to_torchscript
    from nnunet_fixtures import get_fixture

    pipeline = load_complete(get_fixture("3d_fullres").model_dir, folds=0).pipeline()
    path = tmp_path / "pipeline.pt"
    to_torchscript(pipeline, path)
    patch = pipeline.patch_size
    return path, pipeline, (pipeline.num_input_channels, patch[0] + 3, patch[1] * 2 - 3, patch[2] + 5)


# --- building the example once per machine ---------------------------------------------------

def _find_compiler() -> str | None:
    if os.environ.get("CXX"):
        return shutil.which(os.environ["CXX"].split()[0])
    return shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


def _toolchain_key() -> str:
    """Names the build folder: a folder configured against another torch or compiler is stale
    (CMake caches Torch_DIR), so those get a folder of their own."""
    import torch.utils

    text = f"{torch.__version__}\0{torch.utils.cmake_prefix_path}\0{_find_compiler()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _sources_key() -> str:
    """Changes whenever a file of the example changes; CMake then rebuilds only what changed."""
    digest = hashlib.sha256()
    for path in sorted(p for p in EXAMPLE.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(EXAMPLE)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@pytest.fixture(scope="session")
def infer_binary() -> Path:
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed: needed to build examples/cpp (apt-get install cmake)")
    if _find_compiler() is None:
        pytest.skip("no C++ compiler (c++, g++, clang++ or $CXX): needed to build examples/cpp")
    build_dir = BUILD_ROOT / f"torch-{_toolchain_key()}"
    binary = build_dir / "nnunet_infer"
    stamp = build_dir / ".sources-sha256"
    sources = _sources_key()
    BUILD_ROOT.mkdir(exist_ok=True)
    # Parallel test processes share one build: the first builds, the others wait for it.
    with open(BUILD_ROOT / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (binary.is_file() and stamp.is_file() and stamp.read_text() == sources):
            stamp.unlink(missing_ok=True)
            result = subprocess.run(
                ["bash", str(EXAMPLE / "build.sh"), str(build_dir)],
                env={**os.environ, "PYTHON": sys.executable},
                capture_output=True, text=True,
            )
            if result.returncode != 0:
                pytest.fail(f"examples/cpp/build.sh failed ({result.returncode}):\n"
                            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
            stamp.write_text(sources)
    return binary


# --- helpers ----------------------------------------------------------------------------------

def _run(binary: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)


def _shape_arg(shape) -> str:
    return ",".join(str(s) for s in shape)


def _write_input(path: Path, shape) -> torch.Tensor:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(20240601), dtype=torch.float32)
    x.numpy().astype("<f4").tofile(path)
    return x


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return _exported_model(tmp_path_factory.mktemp("cpp_example"))


# --- parity -----------------------------------------------------------------------------------

def test_output_matches_python(infer_binary, exported, tmp_path):
    model_path, shape = exported
    x = _write_input(tmp_path / "in.raw", shape)
    result = _run(infer_binary, model_path, tmp_path / "in.raw", tmp_path / "out.raw", "--shape", _shape_arg(shape))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""

    with torch.no_grad():
        expected = torch.jit.load(str(model_path))(x)
    assert isinstance(expected, torch.Tensor)
    got = np.fromfile(tmp_path / "out.raw", dtype="<f4")
    assert got.size == expected.numel()
    diff = float(np.abs(got.reshape(tuple(expected.shape)).astype(np.float64) - expected.double().numpy()).max())
    assert diff <= TOLERANCE, f"C++ and Python logits differ by {diff:.3g}"
    assert f"output shape      {' x '.join(map(str, expected.shape))}" in result.stdout.splitlines()


def test_pipeline_gives_the_same_bits_as_python(infer_binary, tmp_path):
    # Python's exact pipeline gives nnU-Net's bits (tests/test_pipeline_parity.py); C++ must too.
    path, pipeline, shape = _exported_pipeline(tmp_path)
    x = _write_input(tmp_path / "in.raw", shape)
    result = _run(infer_binary, path, tmp_path / "in.raw", tmp_path / "out.raw", "--shape", _shape_arg(shape))
    assert result.returncode == 0, result.stderr
    assert ("pipeline          exact (predict_logits on one preprocessed volume; with --spacing the image in, the "
            "segmentation out)") in result.stdout.splitlines()
    expected = pipeline.predict_logits(x)
    got = torch.from_numpy(np.fromfile(tmp_path / "out.raw", dtype="<f4").reshape(tuple(expected.shape)))
    # float32 holds every fp16 value exactly: converting back gives the C++ side's fp16 bits.
    assert torch.equal(got.half().view(torch.int16), expected.view(torch.int16))


@pytest.mark.parametrize("case_name", ["aniso_z", "iso", "zeros"])
def test_pipeline_segments_an_image_as_nnunet_does(infer_binary, tmp_path, case_name):
    # Image volume in, segmentation out, from the one file: nnU-Net's predict_single_npy_array
    # (tests/pipeline_reference.py) is the reference, voxel for voxel.
    from nnunet_fixtures import get_fixture
    from pipeline_reference import nnunet_predict
    from preprocessing_cases import cases_for

    [case] = [c for c in cases_for("3d_fullres") if c.id.endswith("-" + case_name)]
    image, spacing = case.image()
    path, _, _ = _exported_pipeline(tmp_path)
    image.astype("<f4").tofile(tmp_path / "image.raw")
    result = _run(infer_binary, path, tmp_path / "image.raw", tmp_path / "seg.raw", "--shape",
                  _shape_arg(image.shape), "--spacing", ",".join(repr(s) for s in spacing))
    assert result.returncode == 0, result.stderr
    torch.set_num_threads(1)
    expected = nnunet_predict(get_fixture("3d_fullres").model_dir, (0,), image, spacing)
    got = np.fromfile(tmp_path / "seg.raw", dtype=np.uint8)
    assert got.size == expected.size and np.array_equal(got.reshape(expected.shape), expected)
    assert f"wrote             {tmp_path / 'seg.raw'} ({expected.size} bytes uint8)" in result.stdout.splitlines()


def test_spacing_needs_a_pipeline_file(infer_binary, exported, tmp_path):
    model_path, shape = exported
    _write_input(tmp_path / "in.raw", shape)
    result = _run(infer_binary, model_path, tmp_path / "in.raw", tmp_path / "out.raw", "--shape", _shape_arg(shape),
                  "--spacing", "2,1,1")
    _assert_error(result, "--spacing needs a whole pipeline file (model.pipeline() exported); this file holds the "
                          "network alone")


@pytest.mark.parametrize("spacing, message", [
    ("2,1", "--spacing '2,1' has 2 entries; expected Z,Y,X: three positive numbers (the image's spacing in mm, "
            "z first)"),
    ("2,0,1", "--spacing '2,0,1': entry '0' is not a positive number; expected Z,Y,X: three positive numbers "
              "(the image's spacing in mm, z first)"),
    ("2,x,1", "--spacing '2,x,1': entry 'x' is not a positive number; expected Z,Y,X: three positive numbers "
              "(the image's spacing in mm, z first)"),
], ids=["length", "zero", "text"])
def test_bad_spacing_is_refused(infer_binary, exported, tmp_path, spacing, message):
    model_path, shape = exported
    result = _run(infer_binary, model_path, tmp_path / "in.raw", tmp_path / "out.raw", "--shape", _shape_arg(shape),
                  "--spacing", spacing)
    _assert_error(result, message)


def test_pipeline_refuses_a_batch_shape(infer_binary, tmp_path):
    path, pipeline, shape = _exported_pipeline(tmp_path)
    _write_input(tmp_path / "in.raw", (1, *shape))
    result = _run(infer_binary, path, tmp_path / "in.raw", tmp_path / "out.raw", "--shape", _shape_arg((1, *shape)))
    _assert_error(result, f"--shape {' x '.join(map(str, (1, *shape)))} is not one preprocessed volume for this "
                          "pipeline: expected 1,D,H,W")


def test_prints_metadata(infer_binary, exported, tmp_path):
    model_path, shape = exported
    _write_input(tmp_path / "in.raw", shape)
    result = _run(infer_binary, model_path, tmp_path / "in.raw", tmp_path / "out.raw", "--shape", _shape_arg(shape))
    assert result.returncode == 0, result.stderr
    meta = read_metadata(model_path)
    lines = result.stdout.splitlines()
    config = meta["model_config"]
    for name, value in [
        ("dataset", meta["dataset_name"]),
        ("configuration", meta["configuration"]),
        ("trainer", meta["trainer_name"]),
        ("folds", ", ".join(str(f) for f in meta["folds"])),
        ("patch size", " x ".join(str(p) for p in config["patch_size"])),
        ("input channels", str(config["num_input_channels"])),
        ("output channels", str(config["num_output_channels"])),
    ]:
        assert f"{name:<18}{value}" in lines, f"{name!r} line missing from:\n{result.stdout}"
    assert meta["weights_sha256"], "the exported file names no weights"
    for fold, digest in meta["weights_sha256"].items():
        assert len(digest) == 64
        assert f"{'sha256 fold ' + fold:<18}{digest}" in lines


# --- errors: non-zero exit, one line on stderr ------------------------------------------------

def _assert_error(result: subprocess.CompletedProcess, message: str, code: int = 1) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(ERROR_PREFIX), lines[0]
    assert message in lines[0], lines[0]


def test_wrong_input_size(infer_binary, exported, tmp_path):
    model_path, shape = exported
    numel = int(np.prod(shape))
    np.zeros(numel - 1, dtype="<f4").tofile(tmp_path / "short.raw")
    result = _run(infer_binary, model_path, tmp_path / "short.raw", tmp_path / "out.raw", "--shape", _shape_arg(shape))
    _assert_error(result, f"has {(numel - 1) * 4} bytes, but --shape needs {numel} float32 values = {numel * 4} bytes")
    assert not (tmp_path / "out.raw").exists()


def test_missing_model(infer_binary, tmp_path):
    _write_input(tmp_path / "in.raw", (1, 1, 4, 4, 4))
    result = _run(infer_binary, tmp_path / "absent.pt", tmp_path / "in.raw", tmp_path / "out.raw", "--shape", "1,1,4,4,4")
    _assert_error(result, f"model '{tmp_path / 'absent.pt'}' does not exist or is not a file")


def test_missing_input(infer_binary, exported, tmp_path):
    model_path, shape = exported
    result = _run(infer_binary, model_path, tmp_path / "absent.raw", tmp_path / "out.raw", "--shape", _shape_arg(shape))
    _assert_error(result, f"input '{tmp_path / 'absent.raw'}' does not exist or is not a file")


def test_wrong_channel_count(infer_binary, exported, tmp_path):
    model_path, shape = exported
    wrong = (shape[0], shape[1] + 1, *shape[2:])
    _write_input(tmp_path / "in.raw", wrong)
    result = _run(infer_binary, model_path, tmp_path / "in.raw", tmp_path / "out.raw", "--shape", _shape_arg(wrong))
    expected = read_metadata(model_path)["model_config"]["num_input_channels"]
    _assert_error(result, f"has {shape[1] + 1} input channels, but the model expects {expected}")


def test_wrong_dimensionality(infer_binary, exported, tmp_path):
    model_path, shape = exported
    spatial = len(shape) - 2
    wrong = (*shape[:2], *shape[2:3] * (5 - spatial))  # a 3D model gets a 2D shape and back
    _write_input(tmp_path / "in.raw", wrong)
    result = _run(infer_binary, model_path, tmp_path / "in.raw", tmp_path / "out.raw", "--shape", _shape_arg(wrong))
    _assert_error(result, f"has {len(wrong) - 2} spatial axes, but the model is {spatial}D")


@pytest.mark.parametrize("shape, message", [
    ("1,2,8", "has 3 entries; expected N,C,D,H,W (3D) or N,C,H,W (2D)"),
    ("1,2,8,8,8,8", "has 6 entries"),
    ("1,0,8,8,8", "entry '0' is not a positive integer"),
    ("1,2,x,8,8", "entry 'x' is not a positive integer"),
    ("1,2,,8,8", "entry '' is not a positive integer"),
    ("1,2,8,8,8 ", "entry '8 ' is not a positive integer"),
    ("1,2,4294967296,4294967296,8", "has too many elements"),
])
def test_bad_shape(infer_binary, exported, tmp_path, shape, message):
    model_path, _ = exported
    result = _run(infer_binary, model_path, tmp_path / "in.raw", tmp_path / "out.raw", "--shape", shape)
    _assert_error(result, f"--shape '{shape}'")
    assert message in result.stderr


def test_usage_errors(infer_binary, tmp_path):
    _assert_error(_run(infer_binary, "a.pt", "in.raw", "out.raw"), "--shape is required", code=2)
    _assert_error(_run(infer_binary, "a.pt", "in.raw", "--shape", "1,1,4,4"), "expected MODEL INPUT OUTPUT, got 2", code=2)
    _assert_error(_run(infer_binary, "a.pt", "in.raw", "out.raw", "--shape"), "--shape needs a value", code=2)
    _assert_error(_run(infer_binary, "a.pt", "i", "o", "--shape", "1,1,4,4", "--device", "cuda"),
                  "unknown option '--device'", code=2)


def test_torchscript_without_metadata(infer_binary, tmp_path):
    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(torch.nn.Conv3d(1, 1, 1)), str(plain))
    result = _run(infer_binary, plain, tmp_path / "in.raw", tmp_path / "out.raw", "--shape", "1,1,4,4,4")
    _assert_error(result, f"model '{plain}' is not an nnunet_export file: it has no extra/{METADATA_NAME}")


@pytest.mark.parametrize("document, message", [
    (b'{"format": "something_else", "format_version": 1}',
     "not an nnunet_export file (metadata 'format' is not \"nnunet_export\")"),
    (b'[1, 2]', "not a JSON object"),
    (b'{"format": "nnunet_export", "format_version": 1', "is not valid JSON (error at byte"),
    (b'{"format": "nnunet_export", "format_version": 1} x', "is not valid JSON (error at byte 49)"),
    (b'{"format": "nnunet_export", "format_version": 2}', "metadata format_version 2 is newer than this reader's 1"),
    (b'{"format": "nnunet_export", "format_version": 1.5}', "'format_version' must be an integer >= 1"),
    (b'{"format": "nnunet_export", "format_version": 1}', "metadata field 'dataset_name' is missing"),
])
def test_bad_metadata(infer_binary, tmp_path, document, message):
    other = tmp_path / "other.pt"
    torch.jit.save(torch.jit.script(torch.nn.Conv3d(1, 1, 1)), str(other), _extra_files={METADATA_NAME: document})
    result = _run(infer_binary, other, tmp_path / "in.raw", tmp_path / "out.raw", "--shape", "1,1,4,4,4")
    _assert_error(result, message)


def test_metadata_missing_model_config_field(infer_binary, exported, tmp_path):
    model_path, _ = exported
    meta = read_metadata(model_path)
    del meta["model_config"]["num_input_channels"]
    broken = tmp_path / "broken.pt"
    torch.jit.save(torch.jit.load(str(model_path)), str(broken), _extra_files={METADATA_NAME: _core.metadata_to_json(meta)})
    result = _run(infer_binary, broken, tmp_path / "in.raw", tmp_path / "out.raw", "--shape", "1,1,4,4,4")
    _assert_error(result, "metadata field 'model_config.num_input_channels' is missing")


def test_not_torchscript(infer_binary, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip archive" * 10)
    result = _run(infer_binary, junk, tmp_path / "in.raw", tmp_path / "out.raw", "--shape", "1,1,4,4,4")
    _assert_error(result, f"model '{junk}' is not a loadable TorchScript file: ")


def test_binary_does_not_link_python(infer_binary):
    ldd = shutil.which("ldd")
    if ldd is None:
        pytest.skip("ldd is not available to list the binary's shared libraries")
    libraries = subprocess.run([ldd, str(infer_binary)], capture_output=True, text=True, check=True).stdout
    assert "libtorch" in libraries
    assert "libpython" not in libraries, libraries
