"""The ONNX file format of the export skeleton: compile with ``torch.onnx.export`` (dynamic
spatial axes), store the metadata document in ``metadata_props``, load with onnxruntime on CPU.

``onnx``, ``onnxscript`` and ``onnxruntime`` are optional (``pip install nnunet_export[onnx]``)
and imported only here, only when an ONNX export runs.

The exporter is run with ``optimize=False``: onnxscript's optimizer folds BatchNorm into the
convolutions, which would change the stored weights; unfolded, every initializer is one of the
module's tensors, bit for bit, under its checkpoint name. onnxruntime fuses the same operators
itself when it loads the file, so nothing is lost at inference time.
"""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Sequence

import torch

from ._core import ExportError
from .metadata import METADATA_NAME

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "OnnxNetwork", "compile_onnx", "load_onnx", "require_onnx", "save_onnx"]

INPUT_NAME = "data"
OUTPUT_NAME = "logits"
ONNX_LIMIT_BYTES = 2**31  # protobuf's limit on one message: the weights must fit in one file
kMissingOnnxError = (
    "ONNX export needs the packages onnx, onnxscript and onnxruntime ({missing} not installed): "
    "pip install nnunet_export[onnx]"
)
kOnnxExportError = (
    "{module}: torch.onnx.export (opset {opset}) cannot export this network: {reason}"
)
kOrtRunError = "onnxruntime cannot run the exported {path} on an input of shape {shape}: {reason}"
kOpsetNotWrittenError = (
    "{module}: torch.onnx.export could not write opset {opset}: the file would hold opset {written} "
    "(the exporter's version conversion fell back); choose opset {written} or another it converts to"
)
kOnnxTooLargeError = (
    "{module}: the weights ({size:.2f} GiB) exceed the 2 GiB an ONNX file holds without external "
    "data; export fewer folds"
)


def require_onnx(*names: str):
    """Imports the named optional packages (default: all three); ExportError naming the extra."""
    names = names or ("onnx", "onnxscript", "onnxruntime")
    modules, missing = [], []
    for name in names:
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(kMissingOnnxError.format(missing=", ".join(missing)))
    return modules


class OnnxNetwork(torch.nn.Module):
    """What the export skeleton handles for an ONNX export: the network, its export settings,
    and the state dict an ONNX file holds (the tensors the forward reads, under their first
    checkpoint name; deep-supervision heads and integer counters are not part of the graph)."""

    def __init__(self, network: torch.nn.Module, dynamic_shapes: dict, opset: int, used: set | None):
        super().__init__()
        self.network = network
        self.dynamic_shapes = dynamic_shapes
        self.opset = opset
        self.used = used
        full = network.state_dict(keep_vars=True)
        first: dict[tuple, str] = {}
        self.canonical = {}
        for key, tensor in full.items():
            self.canonical[key] = first.setdefault(_storage_key(tensor), key)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def state_dict(self, *args, **kwargs) -> dict:  # what the bitwise check compares
        full = self.network.state_dict(keep_vars=True)
        return {key: full[key].detach() for key in sorted(set(self.canonical.values()))
                if self.used is None or _storage_key(full[key]) in self.used}


def _storage_key(tensor: torch.Tensor) -> tuple:
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)


def used_tensors(network: torch.nn.Module, example: torch.Tensor) -> set:
    """Storage keys of the floating-point parameters and buffers of every module the forward calls."""
    called: list[torch.nn.Module] = []
    handles = [m.register_forward_pre_hook(lambda mod, _args: called.append(mod)) for m in network.modules()]
    try:
        with torch.no_grad():
            network(example)
    finally:
        for handle in handles:
            handle.remove()
    used = set()
    for module in called:
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            if tensor.is_floating_point():
                used.add(_storage_key(tensor))
    return used


def compile_onnx(module: OnnxNetwork, method: str, inputs: Sequence[torch.Tensor]):
    """torch.onnx.export of ``module.network``; initializers renamed to their checkpoint names."""
    require_onnx("onnx", "onnxscript")
    network = module.network
    size = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    if size >= ONNX_LIMIT_BYTES:
        raise ExportError(kOnnxTooLargeError.format(module=type(network).__name__, size=size / 2**30))
    try:
        program = torch.onnx.export(
            network, (inputs[0],), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes={_first_argument(network): module.dynamic_shapes}, opset_version=module.opset,
            optimize=False, verbose=False, report=False)
    except Exception as err:  # noqa: BLE001 - every exporter failure becomes one clear message
        reason = " ".join(str(err).split())[:600] or type(err).__name__
        raise ExportError(kOnnxExportError.format(module=type(network).__name__, opset=module.opset,
                                                  reason=reason)) from err
    written = program.model.opset_imports.get("", module.opset)
    if written != module.opset:  # a silent fallback would leave the metadata naming the wrong opset
        raise ExportError(kOpsetNotWrittenError.format(module=type(network).__name__, opset=module.opset,
                                                       written=written))
    _drop_synthesized_conv_biases(program.model)
    # Two passes: a checkpoint name may be another initializer's exported name (aliased modules).
    initializers = program.model.graph.initializers
    renamed = [(value, module.canonical[value.name]) for value in list(initializers.values())
               if module.canonical.get(value.name, value.name) != value.name]
    for index, (value, _) in enumerate(renamed):
        value.name = f"__nnunet_export_renaming_{index}"
    for value, canonical in renamed:
        value.name = canonical
    return program


def _drop_synthesized_conv_biases(model) -> None:
    """torch 2.13's exporter gives a bias-free convolution (ResEnc's 1x1 skip projections) a
    zero bias built at run time by an Expand to the wrong size, which onnxruntime refuses. A
    real bias is always an initializer; ONNX's Conv bias input is optional, so a computed one
    is dropped, and the nodes that only built it with it."""
    from onnx_ir.passes.common import RemoveUnusedNodesPass  # the onnx extra, present here

    for node in model.graph:
        if node.op_type != "Conv" or len(node.inputs) != 3 or node.inputs[2] is None:
            continue
        producer = node.inputs[2].producer()
        if producer is not None and producer.op_type == "Expand":
            node.resize_inputs(2)
    RemoveUnusedNodesPass()(model)


def _first_argument(network: torch.nn.Module) -> str:
    return next(iter(inspect.signature(network.forward).parameters))


def save_onnx(program, path: Path, metadata: bytes) -> None:
    program.model.metadata_props[METADATA_NAME] = metadata.decode()
    program.save(str(path), external_data=False)


def load_onnx(path: Path, device: torch.device) -> tuple:
    """An onnxruntime CPU session as a torch callable, and the file's initializers by name."""
    onnx, onnxruntime = require_onnx("onnx", "onnxruntime")
    from onnx import numpy_helper

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        try:
            out = session.run([OUTPUT_NAME], {INPUT_NAME: x.detach().cpu().numpy()})[0]
        except Exception as err:  # noqa: BLE001 - onnxruntime's own error types, one clear message
            message = " ".join(str(err).split())
            raise ExportError(kOrtRunError.format(path=path.name, shape=tuple(x.shape), reason=message)) from None
        return torch.from_numpy(out).to(x.device)

    model = onnx.load(str(path))
    state = {init.name: torch.from_numpy(numpy_helper.to_array(init).copy()) for init in model.graph.initializer}
    return run, state
