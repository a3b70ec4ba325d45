"""to_onnx (verified with onnxruntime on two shapes, metadata round-trip, bitwise initializers) and
write_triton_repository (configs parsed with Triton's model-config schema, the pipeline file run in
a fresh process with inputs shaped as its config declares)."""
from __future__ import annotations

import sys

import pytest
import torch

import nnunet_export
from nnunet_export import ExportError, OutputPathError, VerificationError
from fresh_process import run_fresh
from nnunet_export.model import verification_inputs

onnx = pytest.importorskip("onnx")  # CI installs every extra (scripts/test.sh): these run there
onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

NETWORK_FIXTURES = ["2d", "3d_fullres", "resenc", "bn", "regions", "multifold"]


@pytest.fixture(scope="module")
def loaded(nnunet_fixture):
    cache = {}

    def get(name):
        if name not in cache:
            folds = None if name == "multifold" else 0
            cache[name] = nnunet_export.load_complete(nnunet_fixture(name).model_dir, folds=folds)
        return cache[name]

    return get


def _ort(path):
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", NETWORK_FIXTURES)
def test_every_network_exports_to_onnx_within_1e4_on_two_shapes(name, loaded, tmp_path):
    model = loaded(name)
    path = tmp_path / "model.onnx"
    report = nnunet_export.to_onnx(model, path)
    assert report.verified and report.file_format == "onnx" and report.max_abs_diff <= 1e-4
    inputs = verification_inputs(model.info.config, torch.device("cpu"), full=True)
    assert [tuple(s) for s in report.input_shapes] == [tuple(x.shape) for x in inputs]
    assert inputs[0].shape[2:] != inputs[1].shape[2:]
    session = _ort(path)
    assert [i.name for i in session.get_inputs()] == ["data"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    print(f"\n{name}: max |ORT - eager| {report.max_abs_diff:.3g}")
    for x in inputs + [torch.cat([inputs[1], inputs[1]])]:  # and a batch of two
        with torch.no_grad():
            expected = model(x)
        got = torch.from_numpy(session.run(["logits"], {"data": x.numpy()})[0])
        assert got.shape == expected.shape
        assert float((got - expected).abs().max()) <= 1e-4
    metadata = nnunet_export.read_metadata(path)
    assert metadata["file_format"] == "onnx" and metadata["export_method"] == "torch.onnx.export"
    assert metadata["folds"] == [f if isinstance(f, str) else int(f) for f in model.info.folds]
    assert metadata["ensemble"] == ("mean of fold logits" if len(model.info.folds) > 1 else None)
    assert metadata["onnx"]["input_name"] == "data" and metadata["onnx"]["opset"] == 18
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    assert nnunet_export.read_metadata(path) == __import__("json").loads(props["nnunet_export.json"])
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == metadata["onnx"]["dims"]


def test_initializers_are_the_checkpoint_tensors_bit_for_bit(loaded, tmp_path):
    model = loaded("bn")  # BatchNorm: the exporter's optimizer would fold it into the convs
    path = tmp_path / "model.onnx"
    nnunet_export.to_onnx(model, path)
    state = model.network.state_dict()
    initializers = onnx.load(str(path)).graph.initializer
    assert len(initializers) > 0
    for init in initializers:
        tensor = torch.from_numpy(onnx.numpy_helper.to_array(init).copy())
        assert init.name in state, init.name
        assert torch.equal(tensor.view(torch.uint8), state[init.name].contiguous().view(torch.uint8)), init.name
    assert any(i.name.endswith("running_var") for i in initializers)


def test_a_changed_initializer_fails_closed(loaded, tmp_path, monkeypatch):
    from nnunet_export import onnx_format

    original = onnx_format.load_onnx
    changed = []

    def tampered(path, device):
        run, state = original(path, device)
        key = sorted(state)[0]
        changed.append(key)
        state[key] = state[key].clone()
        state[key].view(-1)[0] += 1
        return run, state

    monkeypatch.setitem(nnunet_export.export_writer._FORMATS, "onnx", nnunet_export.export_writer._Format(
        "onnx", "ONNX model", onnx_format.compile_onnx, onnx_format.save_onnx, tampered))
    path = tmp_path / "model.onnx"
    with pytest.raises(VerificationError) as info:
        nnunet_export.to_onnx(loaded("3d_fullres"), path)
    assert str(info.value) == f"{path}: exported weight {changed[0]!r} is not bit-identical to the checkpoint's"
    assert not path.exists()


def test_onnx_output_above_the_tolerance_fails_closed(loaded, tmp_path):
    path = tmp_path / "model.onnx"
    with pytest.raises(VerificationError) as info:
        nnunet_export.to_onnx(loaded("3d_fullres"), path, tolerance=0.0)
    assert str(info.value).startswith(f"{path}: the exported ONNX model differs from the eager module by ")
    assert str(info.value).endswith("(> 0) on an input of shape (1, 1, 10, 20, 20); no file was written")
    assert not path.exists()


def test_read_metadata_of_an_onnx_file_without_metadata(tmp_path):
    path = tmp_path / "plain.onnx"
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])), str(path))
    with pytest.raises(nnunet_export.MetadataError) as info:
        nnunet_export.read_metadata(path)
    assert str(info.value) == (f"{str(path)!r} holds no nnunet_export metadata (metadata_props key "
                               "'nnunet_export.json'): it was not written by nnunet_export")
    path.write_bytes(b"\xff" * 16)
    with pytest.raises(nnunet_export.MetadataError) as info:
        nnunet_export.read_metadata(path)
    assert str(info.value) == f"{str(path)!r} is not an ONNX model: varint longer than 10 bytes"


def test_unsupported_cases_name_the_module(loaded, tmp_path):
    with pytest.raises(ExportError) as info:
        nnunet_export.to_onnx(loaded("3d_fullres").pipeline(), tmp_path / "p.onnx")
    assert str(info.value) == ("to_onnx exports the network (logits for a patch-divisible input); a Pipeline's "
                               "tiling loop is exported with to_torchscript")
    with pytest.raises(ExportError) as info:
        nnunet_export.to_onnx(loaded("3d_fullres"), tmp_path / "p.onnx", opset=True)
    assert str(info.value) == "opset must be an int >= 7, got True"

    assert not (tmp_path / "p.onnx").exists()


def test_missing_onnx_names_the_extra(loaded, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_onnxruntime(name, *args, **kwargs):
        if name.split(".")[0] == "onnxruntime":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "onnxruntime")
    monkeypatch.setattr(builtins, "__import__", without_onnxruntime)
    monkeypatch.setattr("importlib.import_module", lambda name: without_onnxruntime(name))
    with pytest.raises(ExportError) as info:
        nnunet_export.to_onnx(loaded("3d_fullres"), tmp_path / "m.onnx")
    assert str(info.value) == ("ONNX export needs the packages onnx, onnxscript and onnxruntime (onnxruntime not "
                               "installed): pip install nnunet_export[onnx]")


# --- Triton -----------------------------------------------------------------------------------------

_FRESH_BODY = r"""
import torch
torch.set_num_threads(1)
module = torch.jit.load(sys.argv[1], map_location="cpu")
image, spacing = torch.load(sys.argv[2], weights_only=True)
torch.save(module(image, spacing), sys.argv[3])
"""

_DTYPES = {"TYPE_FP32": torch.float32, "TYPE_FP16": torch.float16, "TYPE_FP64": torch.float64,
           "TYPE_UINT8": torch.uint8}


def _config(path):
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _type_name(config, value):
    return type(config).DESCRIPTOR.fields_by_name["input"].message_type.fields_by_name[
        "data_type"].enum_type.values_by_number[value].name


@pytest.mark.parametrize("name", ["3d_fullres", "2d"])
def test_triton_repository_configs_match_the_files(name, loaded, tmp_path):
    model = loaded(name)
    repository = nnunet_export.write_triton_repository(model, tmp_path / "repo", name="seg", onnx=True,
                                                       max_batch_size=2)
    assert sorted(p.relative_to(repository).as_posix() for p in repository.rglob("*")) == [
        "README.md", "seg", "seg/1", "seg/1/model.pt", "seg/config.pbtxt", "seg_network", "seg_network/1",
        "seg_network/1/model.onnx", "seg_network/config.pbtxt"]
    assert not [p for p in tmp_path.iterdir() if p.name != "repo"]  # the temporary folder is gone
    cfg = model.info.config

    pipeline_cfg = _config(repository / "seg" / "config.pbtxt")
    assert (pipeline_cfg.name, pipeline_cfg.platform, pipeline_cfg.backend, pipeline_cfg.max_batch_size) == (
        "seg", "pytorch_libtorch", "pytorch", 0)
    [image_in, spacing_in], [out] = pipeline_cfg.input, pipeline_cfg.output
    assert (image_in.name, _type_name(pipeline_cfg, image_in.data_type), list(image_in.dims)) == (
        "INPUT__0", "TYPE_FP32", [cfg.num_input_channels, -1, -1, -1])
    assert (spacing_in.name, _type_name(pipeline_cfg, spacing_in.data_type), list(spacing_in.dims)) == (
        "INPUT__1", "TYPE_FP64", [3])
    assert (out.name, _type_name(pipeline_cfg, out.data_type), list(out.dims)) == (
        "OUTPUT__0", "TYPE_UINT8", [-1, -1, -1])
    schema = torch.jit.load(str(repository / "seg" / "1" / "model.pt")).forward.schema
    assert len(schema.arguments) - 1 == len(pipeline_cfg.input)  # self + positional INPUT__i

    # The pipeline file in a fresh process, with an image shaped as the config declares (any size).
    image = torch.rand([cfg.num_input_channels, 3, 17, 19], generator=torch.Generator().manual_seed(3),
                       dtype=_DTYPES[_type_name(pipeline_cfg, image_in.data_type)]) * 200
    spacing = torch.tensor([2.5, 0.9, 1.1], dtype=_DTYPES[_type_name(pipeline_cfg, spacing_in.data_type)])
    torch.save((image, spacing), tmp_path / "inputs.pt")
    result = run_fresh(_FRESH_BODY, repository / "seg" / "1" / "model.pt", tmp_path / "inputs.pt",
                       tmp_path / "out.pt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    assert got.dtype == _DTYPES[_type_name(pipeline_cfg, out.data_type)] and list(got.shape) == [3, 17, 19]
    with torch.no_grad():
        assert torch.equal(got, model.pipeline()(image, spacing))

    network_cfg = _config(repository / "seg_network" / "config.pbtxt")
    assert (network_cfg.platform, network_cfg.backend, network_cfg.max_batch_size) == (
        "onnxruntime_onnx", "onnxruntime", 2)
    session = _ort(repository / "seg_network" / "1" / "model.onnx")
    for declared, actual in [(network_cfg.input[0], session.get_inputs()[0]),
                             (network_cfg.output[0], session.get_outputs()[0])]:
        assert declared.name == actual.name and actual.type == "tensor(float)"
        assert _type_name(network_cfg, declared.data_type) == "TYPE_FP32"
        # with max_batch_size > 0 Triton prepends the batch axis to the declared dims
        assert len(actual.shape) == 1 + len(declared.dims)
        assert [d if isinstance(d, int) else -1 for d in actual.shape[1:]] == list(declared.dims)
    readme = (repository / "README.md").read_text()
    assert "tritonserver --model-repository=/models" in readme and "`INPUT__0`: TYPE_FP32" in readme


def test_triton_repository_refusals(loaded, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(OutputPathError) as info:
        nnunet_export.write_triton_repository(loaded("3d_fullres"), tmp_path / "full")
    assert str(info.value) == f"Triton repository {str(tmp_path / 'full')!r} already exists and is not empty; give a new folder"
    with pytest.raises(ExportError) as info:
        nnunet_export.write_triton_repository(loaded("3d_fullres"), tmp_path / "r", max_batch_size=4)
    assert str(info.value) == ("max_batch_size applies to the ONNX network model (onnx=True); the pipeline model "
                               "takes one volume per request")
    with pytest.raises(ExportError) as info:
        nnunet_export.write_triton_repository(loaded("3d_fullres"), tmp_path / "r", name="a/b")
    assert str(info.value) == "model name must be letters, digits, '_', '-' or '.', got 'a/b'"
    assert not (tmp_path / "r").exists()


def test_cli_onnx_and_triton(nnunet_fixture, tmp_path, capsys):
    from nnunet_export.cli import main

    model_dir = nnunet_fixture("3d_fullres").model_dir
    assert main(["export", "-m", str(model_dir), "-f", "0", "-o", str(tmp_path / "m.onnx")]) == 0
    assert nnunet_export.read_metadata(tmp_path / "m.onnx")["file_format"] == "onnx"
    assert main(["triton", "-m", str(model_dir), "-f", "0", "-o", str(tmp_path / "repo")]) == 0
    assert (tmp_path / "repo" / "nnunet" / "1" / "model.pt").is_file()
    assert not (tmp_path / "repo" / "nnunet_network").exists()
    capsys.readouterr()
    assert main(["triton", "-m", str(model_dir), "-o", str(tmp_path / "r2"), "--max-batch-size", "2"]) == 2
    assert capsys.readouterr().err.strip() == (
        "nnunet-export: error: --max-batch-size applies to the ONNX network model: add --onnx")


def test_an_opset_the_exporter_cannot_write_is_refused_naming_the_module(loaded, tmp_path):
    # The exporter converts down from opset 18 and falls back silently where it cannot; the
    # file would then not hold the opset asked for (and its metadata would say otherwise).
    path = tmp_path / "model.onnx"
    with pytest.raises(ExportError) as info:
        nnunet_export.to_onnx(loaded("3d_fullres"), path, opset=7)
    assert str(info.value) == (
        "PlainConvUNet: torch.onnx.export could not write opset 7: the file would hold opset 18 (the "
        "exporter's version conversion fell back); choose opset 18 or another it converts to")
    assert not path.exists()


def test_triton_repository_refuses_a_cascade_stage(loaded, tmp_path):
    # Triton serves forward (image in, segmentation out); a cascade stage needs the previous
    # stage's segmentation, which the pipeline does not produce: refused, nothing written.
    with pytest.raises(ExportError) as info:
        nnunet_export.write_triton_repository(loaded("cascade"), tmp_path / "repo")
    assert str(info.value) == (
        "Triton serves the pipeline's forward (image and spacing in, segmentation out), which this model does "
        "not have: configuration '3d_cascade_fullres' is a cascade stage: it takes the previous stage's "
        "segmentation, which preprocess/forward do not produce yet; predict_logits takes the preprocessed image "
        "channels plus one channel per foreground label")
    assert not (tmp_path / "repo").exists() and not list(tmp_path.iterdir())
