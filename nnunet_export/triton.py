"""write_triton_repository: a Triton Inference Server model repository for a trained model.

    REPOSITORY/README.md                      how to start Triton on it and what to send
    REPOSITORY/NAME/config.pbtxt              pytorch_libtorch backend
    REPOSITORY/NAME/1/model.pt                the Pipeline as TorchScript (to_torchscript)
    REPOSITORY/NAME_network/config.pbtxt      onnxruntime backend (with onnx=True)
    REPOSITORY/NAME_network/1/model.onnx      the network as ONNX (to_onnx)

The configs are written from what the files really take and return: the pipeline file's forward
(image and spacing in, segmentation out) is run on its example image, and its inputs/outputs
become ``INPUT__i``/``OUTPUT__i`` (libtorch inputs are positional) with their dtypes and ranks. The repository is built in a temporary
folder beside REPOSITORY and renamed into place: it appears complete or not at all.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Union

import torch

from ._core import ExportError, ThreadGuard
from .atomic_write import OutputPathError
from .export import _as_model, to_torchscript
from .export_writer import quiet_torchscript
from .model import _stride_factor
from .onnx_export import to_onnx
from .onnx_format import INPUT_NAME, OUTPUT_NAME

__all__ = ["TritonTensor", "write_triton_repository"]

kRepositoryExistsError = "Triton repository {path!r} already exists and is not empty; give a new folder"
kNameError = "model name must be letters, digits, '_', '-' or '.', got {name!r}"
kBatchError = "max_batch_size must be an int >= 0, got {value!r}"
kBatchWithoutOnnxError = (
    "max_batch_size applies to the ONNX network model (onnx=True); the pipeline model takes one "
    "volume per request"
)

kNoImagePathError = (
    "Triton serves the pipeline's forward (image and spacing in, segmentation out), which this model "
    "does not have: {reason}"
)

_TRITON_TYPES = {torch.float32: "TYPE_FP32", torch.float16: "TYPE_FP16", torch.float64: "TYPE_FP64",
                 torch.int64: "TYPE_INT64", torch.int32: "TYPE_INT32", torch.uint8: "TYPE_UINT8", torch.uint16: "TYPE_UINT16",
                 torch.int8: "TYPE_INT8", torch.bool: "TYPE_BOOL"}


@dataclass(frozen=True)
class TritonTensor:
    """One input or output of a Triton model: its name, Triton data type and dims (-1: any)."""

    name: str
    data_type: str
    dims: tuple

    def pbtxt(self) -> str:
        return (f'  {{\n    name: "{self.name}"\n    data_type: {self.data_type}\n'
                f'    dims: [ {", ".join(str(d) for d in self.dims)} ]\n  }}')


def _tensor(name: str, tensor: torch.Tensor, channels_first: bool = True) -> TritonTensor:
    """Dim 0 (channels) fixed when ``channels_first``, the spatial dims any size; 1-D tensors
    keep their length."""
    if tensor.dim() <= 1:
        dims = tuple(tensor.shape)
    elif channels_first:
        dims = (int(tensor.shape[0]),) + (-1,) * (tensor.dim() - 1)
    else:
        dims = (-1,) * tensor.dim()
    return TritonTensor(name, _TRITON_TYPES[tensor.dtype], dims)


def config_pbtxt(name: str, platform: str, backend: str, max_batch_size: int,
                 inputs: list[TritonTensor], outputs: list[TritonTensor]) -> str:
    """A Triton model configuration (protobuf text format of inference.ModelConfig)."""
    return (
        f'name: "{name}"\nplatform: "{platform}"\nbackend: "{backend}"\nmax_batch_size: {max_batch_size}\n'
        f'input [\n{",".join(t.pbtxt() for t in inputs)}\n]\n'
        f'output [\n{",".join(t.pbtxt() for t in outputs)}\n]\n'
        'instance_group [\n  {\n    count: 1\n    kind: KIND_CPU\n  }\n]\n'
    )


def _pipeline_io(path: Path, pipeline) -> tuple[list[TritonTensor], list[TritonTensor]]:
    examples = pipeline.example_inputs()
    with quiet_torchscript(), torch.no_grad():
        outputs = torch.jit.load(str(path), map_location="cpu")(*examples)
    outputs = list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]
    # The segmentation has no channel axis: every dim follows the image.
    return ([_tensor(f"INPUT__{i}", t) for i, t in enumerate(examples)],
            [_tensor(f"OUTPUT__{i}", t, channels_first=False) for i, t in enumerate(outputs)])


def _network_io(model, max_batch_size: int) -> tuple[list[TritonTensor], list[TritonTensor]]:
    cfg = model.info.config
    spatial = (-1,) * len(cfg.patch_size)
    batch = () if max_batch_size > 0 else (-1,)  # with batching Triton adds the batch dim itself
    return ([TritonTensor(INPUT_NAME, "TYPE_FP32", batch + (cfg.num_input_channels,) + spatial)],
            [TritonTensor(OUTPUT_NAME, "TYPE_FP32", batch + (cfg.num_output_channels,) + spatial)])


def _readme(name: str, pipeline_io, network_io, multiple_of: list[int] | None) -> str:
    def rows(tensors):
        return "\n".join(f"- `{t.name}`: {t.data_type}, dims {list(t.dims)}" for t in tensors)

    text = (
        f"# Triton model repository for an nnU-Net model\n\n"
        f"Start Triton on it (CPU):\n\n"
        f"    docker run --rm -p8000:8000 -p8001:8001 -v $PWD:/models nvcr.io/nvidia/tritonserver:<yy.mm>-py3 \\\n"
        f"        tritonserver --model-repository=/models\n\n"
        f"## `{name}` (pytorch_libtorch): the whole nnU-Net prediction\n\n"
        f"One image per request, as nnU-Net's reader returns it (float32, channels first: c, z, y, x; "
        f"a 2-D image as c, 1, y, x) and its spacing (float64, z, y, x). Preprocessing, the sliding "
        f"window, Gaussian weighting, mirroring, the fold ensemble and the export back to the image's "
        f"geometry run inside; the answer is the segmentation nnU-Net would write (z, y, x).\n\n"
        f"Inputs:\n{rows(pipeline_io[0])}\n\nOutputs:\n{rows(pipeline_io[1])}\n"
    )
    if network_io is not None:
        text += (
            f"\n## `{name}_network` (onnxruntime): the network alone\n\n"
            f"Logits of one patch-like input; every spatial size must be a multiple of "
            f"{multiple_of} (the network's total stride). The caller does the tiling.\n\n"
            f"Inputs:\n{rows(network_io[0])}\n\nOutputs:\n{rows(network_io[1])}\n"
        )
    text += ("\nWith `tritonclient` (`pip install tritonclient[grpc]`):\n\n"
             "    client = tritonclient.grpc.InferenceServerClient(\"localhost:8001\")\n"
             "    image_input = tritonclient.grpc.InferInput(\"INPUT__0\", list(image.shape), \"FP32\")\n"
             "    image_input.set_data_from_numpy(image)\n"
             "    spacing_input = tritonclient.grpc.InferInput(\"INPUT__1\", [3], \"FP64\")\n"
             "    spacing_input.set_data_from_numpy(numpy.asarray(spacing, dtype=numpy.float64))\n"
             f"    segmentation = client.infer(\"{name}\", [image_input, spacing_input]).as_numpy(\"OUTPUT__0\")\n")
    return text


def _new_repository(repository: Path) -> None:
    if repository.exists() and (not repository.is_dir() or any(repository.iterdir())):
        raise OutputPathError(kRepositoryExistsError.format(path=str(repository)))
    if not repository.parent.is_dir():
        raise OutputPathError(f"output folder {str(repository.parent)!r} does not exist")


def write_triton_repository(
    model_or_model_dir,
    repository: Union[str, os.PathLike],
    *,
    name: str = "nnunet",
    max_batch_size: int = 0,
    onnx: bool = False,
    progress: Callable[[str], Any] | None = None,
    **load_kwargs,
) -> Path:
    """Write a Triton model repository for a loaded model (or a model folder).

    ``NAME`` serves the whole prediction (the pipeline's TorchScript file, pytorch_libtorch
    backend, ``INPUT__0``: one image as nnU-Net's reader returns it, float32 (C, z, y, x),
    ``INPUT__1``: its spacing, float64 (z, y, x), ``OUTPUT__0``: the segmentation nnU-Net writes,
    uint8 or uint16 (z, y, x)); with ``onnx`` also ``NAME_network``, the network as ONNX (onnxruntime backend,
    ``data`` -> ``logits``, batched up to ``max_batch_size`` when > 0). Both files are exported
    and verified as :func:`to_torchscript` and :func:`to_onnx` do; a README.md says how to start
    Triton and what to send. ``load_kwargs`` go to ``load_complete`` for a model folder.

    Returns:
        The repository path.

    Raises:
        OutputPathError: the repository exists and is not empty, or its parent is missing.
        ExportError: a bad name or max_batch_size, and everything the exports raise.
    """
    repository = Path(repository)
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name or ""):
        raise ExportError(kNameError.format(name=name))
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 0:
        raise ExportError(kBatchError.format(value=max_batch_size))
    if max_batch_size and not onnx:
        raise ExportError(kBatchWithoutOnnxError)
    _new_repository(repository)
    say = progress or (lambda line: None)
    with ThreadGuard(load_kwargs.get("num_threads")):
        model = _as_model(model_or_model_dir, load_kwargs, "write_triton_repository")
        model.eval()
        building = Path(tempfile.mkdtemp(prefix=f".{repository.name}.", suffix=".partial", dir=repository.parent))
        try:
            pipeline = model.pipeline()
            if pipeline.image_path_error:
                raise ExportError(kNoImagePathError.format(reason=pipeline.image_path_error))
            version = building / name / "1"
            version.mkdir(parents=True)
            say(f"exporting the pipeline to {name}/1/model.pt")
            to_torchscript(pipeline, version / "model.pt", progress=progress)
            pipeline_io = _pipeline_io(version / "model.pt", pipeline)
            (building / name / "config.pbtxt").write_text(
                config_pbtxt(name, "pytorch_libtorch", "pytorch", 0, *pipeline_io))
            network_io, multiple_of = None, None
            if onnx:
                network_version = building / f"{name}_network" / "1"
                network_version.mkdir(parents=True)
                say(f"exporting the network to {name}_network/1/model.onnx")
                to_onnx(model, network_version / "model.onnx", progress=progress)
                network_io = _network_io(model, max_batch_size)
                multiple_of = _stride_factor(model.info.config)
                (building / f"{name}_network" / "config.pbtxt").write_text(
                    config_pbtxt(f"{name}_network", "onnxruntime_onnx", "onnxruntime", max_batch_size, *network_io))
            (building / "README.md").write_text(_readme(name, pipeline_io, network_io, multiple_of))
            if repository.exists():
                repository.rmdir()  # empty (checked above); os.replace needs it gone or empty
            os.replace(building, repository)
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return repository
