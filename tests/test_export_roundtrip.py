"""to_torchscript / to_exported_program on every genuine nnU-Net fixture: the written file runs in
a process that cannot import nnunetv2 or nnunet_export, gives the eager module's logits, holds the
checkpoints' weights bit for bit and once each, and describes itself completely.

Every export happens once per module (``exports``); the fresh-process run happens once for all
files (``fresh_outputs``). Inputs and expected logits travel as raw little-endian float32 files
plus a JSON manifest, so the fresh process needs nothing but torch.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import nnunet_export
from nnunet_export import load_complete, read_metadata, read_model_config, to_exported_program, to_torchscript
from nnunet_export.metadata import METADATA_FORMAT_VERSION
from fresh_process import run_fresh
from nnunet_fixtures import FIXTURE_NAMES, checkpoint_path, get_fixture

TOLERANCE = 1e-6
PT2_FIXTURES = ("2d", "3d_fullres", "multifold")
METHODS = ("script", "trace")
# One thread in both processes: the same kernels in the same order, so the logits can be compared
# across processes at the verification tolerance.
THREADS = 1

# Runs under `python -I` (no PYTHONPATH, no cwd, no user site) with every import of our packages
# refused (tests/fresh_process.py), so torch.jit.load / torch.export.load must work from the file alone.
_FRESH_BODY = r"""
import json
import torch
torch.set_num_threads(int(sys.argv[2]))
manifest = json.load(open(sys.argv[1]))

def read(path, shape):
    return torch.from_file(path, size=int(torch.Size(shape).numel()), dtype=torch.float32).reshape(shape)

for case in manifest:
    if case["format"] == "pt2":
        program = torch.export.load(case["file"])
        module, state_dict = program.module(), program.state_dict
    else:
        module = torch.jit.load(case["file"], map_location="cpu")
        state_dict = module.state_dict()
    # every weight as the file holds it: raw bytes in one blob, dtype/shape/offset in the manifest
    case["weights"], offset = {}, 0
    with open(case["weights_blob"], "wb") as blob:
        for key, tensor in state_dict.items():
            raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            blob.write(raw)
            case["weights"][key] = [str(tensor.dtype), list(tensor.shape), offset, len(raw)]
            offset += len(raw)
    for item in case["inputs"]:
        with torch.no_grad():
            out = module(read(item["input"], item["input_shape"]))
        out.contiguous().numpy().astype("<f4").tofile(item["got"])
        item["got_shape"] = list(out.shape)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
json.dump({"cases": manifest, "leaked": leaked}, open(sys.argv[3], "w"))
"""


@dataclass
class Export:
    case: str
    fixture: object
    model: object
    path: Path
    report: object
    file_format: str
    inputs: list  # list of (input tensor, eager logits)


def _stride_factor(fixture) -> list[int]:
    """Product of the plans' pool strides per axis, read from plans.json (not from the package)."""
    plans = json.loads((fixture.model_dir / "plans.json").read_text())
    conf = plans["configurations"][fixture.configuration]
    while "inherits_from" in conf:  # shallow update of the parent, as nnU-Net does
        parent = dict(plans["configurations"][conf["inherits_from"]])
        parent.update({k: v for k, v in conf.items() if k != "inherits_from"})
        conf = parent
    strides = conf["architecture"]["arch_kwargs"]["strides"]
    factor = [1] * len(conf["patch_size"])
    for stride in strides:
        stride = [stride] * len(factor) if isinstance(stride, int) else stride
        factor = [f * int(s) for f, s in zip(factor, stride)]
    return factor


def _folds_for(fixture) -> object:
    return fixture.folds if fixture.name == "multifold" else fixture.folds[0]


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Export]:
    out_dir = tmp_path_factory.mktemp("exports")
    generator = torch.Generator().manual_seed(7)
    result: dict[str, Export] = {}
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        for name in FIXTURE_NAMES:
            fixture = get_fixture(name)
            model = load_complete(fixture.model_dir, folds=_folds_for(fixture))
            formats = [("torchscript", m) for m in METHODS] + ([("pt2", None)] if name in PT2_FIXTURES else [])
            for file_format, method in formats:
                case = f"{name}-{method or 'pt2'}"
                if file_format == "pt2":
                    path = out_dir / f"{case}.pt2"
                    report = to_exported_program(model, path, num_threads=THREADS)
                else:
                    path = out_dir / f"{case}.pt"
                    # "full": the reports' two input shapes drive the fresh-process comparison
                    report = to_torchscript(model, path, method=method, num_threads=THREADS, verify="full")
                inputs = []
                for shape in report.input_shapes:
                    x = torch.randn(shape, generator=generator)
                    with torch.no_grad():
                        inputs.append((x, model(x)))
                result[case] = Export(case, fixture, model, path, report, file_format, inputs)
    finally:
        torch.set_num_threads(previous_threads)
    return result


@pytest.fixture(scope="module")
def fresh_outputs(exports, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("fresh")
    manifest = []
    for case, export in exports.items():
        items = []
        for index, (x, _) in enumerate(export.inputs):
            input_file = folder / f"{case}-{index}.in.f32"
            x.numpy().astype("<f4").tofile(input_file)
            items.append({"input": str(input_file), "input_shape": list(x.shape),
                          "got": str(folder / f"{case}-{index}.out.f32")})
        manifest.append({"case": case, "format": export.file_format, "file": str(export.path), "inputs": items,
                         "weights_blob": str(folder / f"{case}.weights")})
    (folder / "manifest.json").write_text(json.dumps(manifest))
    result = run_fresh(_FRESH_BODY, folder / "manifest.json", THREADS, folder / "result.json", cwd=folder)
    assert result.returncode == 0, result.stderr[-4000:]
    document = json.loads((folder / "result.json").read_text())
    return {"leaked": document["leaked"], "cases": {c["case"]: c for c in document["cases"]}}


CASES = [f"{name}-{method}" for name in FIXTURE_NAMES for method in METHODS] + [f"{n}-pt2" for n in PT2_FIXTURES]


def test_every_fixture_exported(exports):
    assert sorted(exports) == sorted(CASES)


def test_fresh_process_imports_nothing_of_ours(fresh_outputs):
    assert fresh_outputs["leaked"] == []


@pytest.mark.parametrize("case", CASES)
def test_fresh_process_reproduces_eager_logits(exports, fresh_outputs, case):
    export = exports[case]
    items = fresh_outputs["cases"][case]["inputs"]
    assert len(items) == len(export.inputs)
    for item, (x, expected) in zip(items, export.inputs):
        assert item["got_shape"] == list(expected.shape)
        assert expected.shape == (1, export.model.info.config.num_output_channels, *x.shape[2:])
        got = np.fromfile(item["got"], dtype="<f4").reshape(tuple(expected.shape))
        diff = float(np.abs(got.astype(np.float64) - expected.double().numpy()).max())
        assert diff <= TOLERANCE, f"{case}: fresh-process logits differ by {diff:.3g} on {tuple(x.shape)}"


@pytest.mark.parametrize("case", CASES)
def test_report_verified_patch_and_other_stride_divisible_size(exports, case):
    export = exports[case]
    report, config = export.report, export.model.info.config
    assert report.verified
    assert report.max_abs_diff is not None and report.max_abs_diff <= TOLERANCE
    assert report.path == str(export.path)
    assert report.file_bytes == export.path.stat().st_size
    patch_shape = (1, config.num_input_channels, *config.patch_size)
    assert report.input_shapes[0] == patch_shape
    if export.file_format == "pt2":  # static shapes: the program takes the patch size only
        assert report.input_shapes == [patch_shape]
        assert report.method == "torch.export"
        return
    assert report.method == case.rsplit("-", 1)[1]
    assert len(report.input_shapes) == 2
    other = report.input_shapes[1]
    assert other[:2] == patch_shape[:2] and other != patch_shape
    factor = _stride_factor(export.fixture)
    assert len(factor) == len(other) - 2, (other, factor)
    assert all(size % f == 0 and size > 0 for size, f in zip(other[2:], factor)), (other, factor)


def _checkpoint_weights(fixture, fold) -> dict[str, torch.Tensor]:
    """The fold's network_weights as nnU-Net's own loader reads them, wrapper prefix removed."""
    weights = torch.load(checkpoint_path(fixture, fold), map_location="cpu", weights_only=False)["network_weights"]
    prefix = fixture.key_prefix or ""
    assert all(k.startswith(prefix) for k in weights)
    return {k[len(prefix):]: v for k, v in weights.items()}


def _file_weights(fresh_case: dict) -> dict[str, tuple[str, tuple, bytes]]:
    """What the fresh process read from the file: key -> (dtype, shape, raw bytes)."""
    blob = Path(fresh_case["weights_blob"]).read_bytes()
    return {key: (dtype, tuple(shape), blob[offset:offset + size])
            for key, (dtype, shape, offset, size) in fresh_case["weights"].items()}


def _bits(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("case", CASES)
def test_file_weights_equal_checkpoint_bit_for_bit(exports, fresh_outputs, case):
    export = exports[case]
    folds = export.model.info.folds
    in_file = _file_weights(fresh_outputs["cases"][case])
    expected: dict[str, torch.Tensor] = {}
    for index, fold in enumerate(folds):
        prefix = "network." if len(folds) == 1 else f"network.networks.{index}."
        for key, tensor in _checkpoint_weights(export.fixture, fold).items():
            expected[prefix + key] = tensor
    assert sorted(in_file) == sorted(expected)
    for key, tensor in expected.items():
        dtype, shape, raw = in_file[key]
        assert (dtype, shape) == (str(tensor.dtype), tuple(tensor.shape)), key
        assert raw == _bits(tensor), f"{case}: {key} differs from the checkpoint"


def _weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """The digest the metadata documents (weights.weights_sha256), written again from its spec."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].contiguous()
        values = hashlib.sha256(_bits(tensor)).hexdigest()
        digest.update(f"{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0{values}\0".encode())
    return digest.hexdigest()


@pytest.mark.parametrize("case", CASES)
def test_metadata_has_every_field(exports, case):
    export = exports[case]
    fixture = export.fixture
    meta = read_metadata(export.path)
    folds = list(export.model.info.folds)
    checkpoint = torch.load(checkpoint_path(fixture, folds[0]), map_location="cpu", weights_only=False)
    config = read_model_config(fixture.model_dir, fixture.configuration).to_dict()
    plans = json.loads((fixture.model_dir / "plans.json").read_text())
    dataset = json.loads((fixture.model_dir / "dataset.json").read_text())

    assert meta["format"] == "nnunet_export"
    assert meta["format_version"] == METADATA_FORMAT_VERSION
    assert meta["file_format"] == export.file_format
    assert meta["export_method"] == export.report.method
    assert meta["nnunet_export_version"] == nnunet_export.__version__
    assert meta["torch_version"] == torch.__version__
    assert meta["dataset_name"] == fixture.dataset_name == plans["dataset_name"]
    assert meta["plans_name"] == fixture.plans_name == plans["plans_name"]
    assert meta["configuration"] == fixture.configuration == checkpoint["init_args"]["configuration"]
    assert meta["trainer_name"] == fixture.trainer == checkpoint["trainer_name"]
    assert meta["folds"] == folds
    assert meta["checkpoint_name"] == "checkpoint_final.pth"
    assert meta["weights_sha256"] == {
        str(fold): _weights_sha256(_checkpoint_weights(fixture, fold)) for fold in folds}
    assert meta["ensemble"] == ("mean of fold logits" if len(folds) > 1 else None)
    axes = checkpoint["inference_allowed_mirroring_axes"]
    assert meta["mirroring_axes"] == (list(axes) if axes is not None else None)
    # patch size, spacing, transpose, normalisation, intensity properties, labels, regions,
    # regions_class_order, input/output channels: the whole resolved configuration
    assert meta["model_config"] == config
    model_config = meta["model_config"]
    assert model_config["transpose_forward"] == plans["transpose_forward"]
    assert model_config["transpose_backward"] == plans["transpose_backward"]
    assert model_config["foreground_intensity_properties_per_channel"] == \
        plans["foreground_intensity_properties_per_channel"]
    assert model_config["labels"] == dataset["labels"]
    assert model_config["regions_class_order"] == dataset.get("regions_class_order")
    assert model_config["num_input_channels"] == export.inputs[0][0].shape[1]
    assert model_config["num_output_channels"] == export.inputs[0][1].shape[1]
    for key in ("patch_size", "spacing", "normalization_schemes", "has_regions", "regions"):
        assert key in model_config
    axes_names = "XYZ" if len(config["patch_size"]) == 3 else "XY"
    assert meta["input_layout"].startswith("N, C, " + ", ".join(axes_names) + " (float32")
    assert meta["parameters"] == sum(p.numel() for p in export.model.parameters())


@pytest.mark.parametrize("case", [c for c in CASES if not c.endswith("-pt2")])
def test_torchscript_file_holds_each_weight_once(exports, case):
    export = exports[case]
    unique: dict[int, int] = {}
    for tensor in export.model.state_dict().values():
        storage = tensor.untyped_storage()
        unique[storage.data_ptr()] = storage.nbytes()
    weight_bytes = sum(unique.values())
    with zipfile.ZipFile(export.path) as archive:
        data_bytes = sum(i.file_size for i in archive.infolist() if "/data/" in i.filename
                         and i.filename.split("/data/")[1].isdigit())
    assert abs(data_bytes - weight_bytes) <= 0.02 * weight_bytes, (data_bytes, weight_bytes)
    assert export.report.weight_bytes == weight_bytes
    # the whole-file overhead (code, constants, metadata) goes to the test log
    overhead = export.path.stat().st_size - data_bytes
    print(f"{case}: weights {weight_bytes} B, data/* {data_bytes} B, file {export.path.stat().st_size} B, "
          f"overhead {overhead} B")


@pytest.mark.parametrize("name", ["3d_fullres", "2d", "multifold"])
def test_default_verification_runs_one_small_input(name, tmp_path):
    # Twice the total stride per axis (at most the patch): every fold's network runs once, cheaply.
    fixture = get_fixture(name)
    model = load_complete(fixture.model_dir, folds=_folds_for(fixture))
    report = to_torchscript(model, tmp_path / "model.pt")
    config = model.info.config
    small = tuple(min(2 * f, p) for f, p in zip(_stride_factor(fixture), config.patch_size))
    assert report.verified and report.input_shapes == [(1, config.num_input_channels, *small)]
    assert report.max_abs_diff is not None and report.max_abs_diff <= TOLERANCE
    assert small != tuple(config.patch_size)  # the check is cheaper than a patch-size pass


def test_verify_accepts_only_true_false_or_full(tmp_path):
    model = load_complete(get_fixture("2d").model_dir, folds=0)
    with pytest.raises(nnunet_export.ExportError) as error:
        to_torchscript(model, tmp_path / "model.pt", verify="fast")
    assert str(error.value) == (
        "verify must be True (a small input), 'full' (patch size and another size) or False, got 'fast'")
    assert not (tmp_path / "model.pt").exists()
