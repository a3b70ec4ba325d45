"""to_onnx: the network of a loaded model (one fold or the fold ensemble) as a verified ONNX file."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Union

import torch

from ._core import ExportError, ThreadGuard
from .atomic_write import check_output_path
from .export import _as_model
from .export_writer import ExportReport, check_verify, export_module
from .metadata import build_metadata
from .model import NnUNetModel, _stride_factor, verification_inputs
from .onnx_format import INPUT_NAME, OUTPUT_NAME, OnnxNetwork, require_onnx, used_tensors
from .pipeline import Pipeline

__all__ = ["DEFAULT_OPSET", "ONNX_TOLERANCE", "onnx_dynamic_shapes", "to_onnx"]

DEFAULT_OPSET = 18  # the lowest opset torch's dynamo ONNX exporter writes directly
ONNX_TOLERANCE = 1e-4  # onnxruntime's kernels sum in other orders than torch's
kPipelineOnnxError = (
    "to_onnx exports the network (logits for a patch-divisible input); a Pipeline's tiling loop "
    "is exported with to_torchscript"
)
kOpsetError = "opset must be an int >= {minimum}, got {opset!r}"


def onnx_dynamic_shapes(model: NnUNetModel) -> tuple[dict, dict]:
    """(torch.export dynamic shapes of the input, the metadata's description of them): the batch
    and every spatial axis are dynamic; a spatial size is any multiple of the total stride."""
    factor = _stride_factor(model.info.config)
    names = "xyz" if len(factor) == 3 else "xy"
    dim = torch.export.Dim
    shapes = {0: dim("batch", min=1, max=4096)}
    for axis, (name, stride) in enumerate(zip(names, factor)):
        shapes[2 + axis] = stride * dim(f"{name}_blocks", min=1, max=8192)
    described = {
        "input_name": INPUT_NAME, "output_name": OUTPUT_NAME,
        "dims": ["batch", model.info.config.num_input_channels] + [f"{s}*{n}_blocks" for n, s in zip(names, factor)],
        "spatial_multiple_of": factor,
    }
    return shapes, described


def to_onnx(
    model_or_model_dir,
    path: Union[str, os.PathLike],
    *,
    opset: int = DEFAULT_OPSET,
    verify: Union[bool, str] = True,
    tolerance: float = ONNX_TOLERANCE,
    progress: Callable[[str], Any] | None = None,
    **load_kwargs,
) -> ExportReport:
    """Export the network of a loaded model (or a model folder) to a verified ONNX file.

    One fold's network, or the fold ensemble (mean of the folds' logits), in eval mode with deep
    supervision off; one input ``data`` (N, C, spatial) and one output ``logits``, float32; the
    batch and the spatial axes are dynamic (any size divisible by the network's total stride,
    recorded in the metadata under ``"onnx"``). The metadata document of the TorchScript export
    is stored in the model's ``metadata_props`` (key ``nnunet_export.json``; see
    :func:`read_metadata`). The file is written atomically; with ``verify`` it is loaded with
    onnxruntime on CPU, run on an input of patch size and one of another stride-divisible size,
    compared with the eager module (max abs difference <= ``tolerance``), and every initializer
    is compared bit for bit with the module's tensor of the same checkpoint name (the forward's
    tensors only: deep-supervision heads are not in the graph). On failure nothing is written.

    Args:
        model_or_model_dir, progress, load_kwargs: as for :func:`to_torchscript`.
        path: the output file (``.onnx``).
        opset: the ONNX opset (default 18).
        verify: ``True`` or ``"full"`` (the same: two shapes, as above) or ``False``.
        tolerance: largest accepted max-abs difference of the logits (default 1e-4).

    Raises:
        ExportError: onnx/onnxscript/onnxruntime missing (``pip install nnunet_export[onnx]``),
            a network or opset the exporter cannot handle (naming the module and the op), a
            Pipeline; OutputPathError, VerificationError, and everything ``load_complete`` raises.

    Example:
        >>> nnunet_export.to_onnx(model, "model.onnx")  # doctest: +SKIP
    """
    if isinstance(model_or_model_dir, Pipeline):
        raise ExportError(kPipelineOnnxError)
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 7:
        raise ExportError(kOpsetError.format(minimum=7, opset=opset))
    check_verify(verify)
    check_output_path(Path(path))
    require_onnx()  # before minutes of loading
    say = progress or (lambda line: None)
    with ThreadGuard(load_kwargs.get("num_threads")):
        model = _as_model(model_or_model_dir, load_kwargs, "to_onnx")
        model.eval()
        device = next(iter(model.parameters()), torch.empty(0)).device
        inputs = verification_inputs(model.info.config, device, full=True)
        shapes, described = onnx_dynamic_shapes(model)
        used = used_tensors(model.network, inputs[-1]) if verify else None
        metadata = build_metadata(model.info, model.network, method="torch.onnx.export", file_format="onnx")
        metadata["onnx"] = {**described, "opset": opset}
        say(f"exporting to ONNX (opset {opset})")
        return export_module(
            OnnxNetwork(model.network, shapes, opset, used), Path(path), file_format="onnx",
            method="torch.onnx.export", metadata=metadata, inputs=inputs, verify=bool(verify),
            tolerance=tolerance, say=say)
