"""The one export skeleton: compile a module, write it atomically with its metadata, reload the
file and verify it against the eager module. The formats (TorchScript, torch.export ``.pt2``)
differ only in how they compile, save and load; everything else is shared here."""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from ._core import ExportError
from .atomic_write import atomic_output, check_output_path
from .metadata import METADATA_NAME, metadata_json
from .onnx_format import compile_onnx, load_onnx, save_onnx

__all__ = ["DEFAULT_TOLERANCE", "ExportReport", "VerificationError", "export_module", "quiet_torchscript"]

DEFAULT_TOLERANCE = 1e-6
METHODS = ("auto", "script", "trace")

kMethodError = "method must be 'auto', 'script' or 'trace', got {method!r}"
kVerifyError = "verify must be True (a small input), 'full' (patch size and another size) or False, got {verify!r}"
kOutputMismatchError = (
    "{path}: the exported {what} differs from the eager module by {diff:.3g} (> {tolerance:g}) on "
    "an input of shape {shape}; no file was written"
)
kWeightNamesError = "{path}: exported weights differ in names: missing {missing}, extra {extra}"
kWeightBitsError = "{path}: exported weight {key!r} is not bit-identical to the checkpoint's"

# torch 2.13 warns on every torch.jit.script/trace/save/load call. This package uses TorchScript
# on purpose (C++ and Triton load it), so exactly these warnings are silenced around its own calls.
_TORCHSCRIPT_DEPRECATION = r"`torch\.jit\.(script|script_method|trace|trace_method|save|load)` is deprecated"


class VerificationError(ExportError):
    """The exported file does not reproduce the eager module; no file was written."""


@dataclass
class ExportReport:
    """What an export wrote and how it was checked."""

    path: str
    file_format: str
    method: str
    verified: bool
    max_abs_diff: float | None
    input_shapes: list = field(default_factory=list)
    parameters: int = 0
    weight_bytes: int = 0
    file_bytes: int = 0
    seconds: float = 0.0
    weights_sha256: dict = field(default_factory=dict)

    def table(self) -> str:
        rows = [
            ("file", self.path),
            ("format", f"{self.file_format} ({self.method})"),
            ("parameters", f"{self.parameters:,}"),
            ("size", f"{self.file_bytes / 2**20:.2f} MiB (weights {self.weight_bytes / 2**20:.2f} MiB)"),
            ("verified", "no (verify=False)" if not self.verified else
             f"max |diff| {self.max_abs_diff:.3g} on inputs {', '.join(str(tuple(s)) for s in self.input_shapes)}"),
            ("time", f"{self.seconds:.2f} s"),
        ] + [(f"sha256 fold {fold}", digest) for fold, digest in self.weights_sha256.items()]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


@contextlib.contextmanager
def quiet_torchscript() -> Iterator[None]:
    """Silences torch's TorchScript deprecation warnings, and nothing else, inside the block."""
    # catch_warnings is process-wide state; an export is not meant to run concurrently with
    # code that relies on its own warning filters changing at the same moment.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TORCHSCRIPT_DEPRECATION)
        yield


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ExportError(kMethodError.format(method=method))


def check_verify(verify: Any) -> None:
    if verify not in (True, False, "full") or not isinstance(verify, (bool, str)):
        raise ExportError(kVerifyError.format(verify=verify))


@dataclass(frozen=True)
class _Format:
    """How one file format compiles, saves and loads; ``load`` returns (callable, state dict)."""

    name: str
    what: str  # how messages call the exported thing
    compile: Callable[[torch.nn.Module, str, Sequence[torch.Tensor]], Any]
    save: Callable[[Any, Path, bytes], None]
    load: Callable[[Path, torch.device], tuple]


def _script_or_trace(module: torch.nn.Module, method: str, inputs: Sequence[torch.Tensor]):
    if method == "script":
        return torch.jit.script(module)
    return torch.jit.trace(module, (inputs[0],), check_trace=False)


def _save_torchscript(compiled, path: Path, metadata: bytes) -> None:
    torch.jit.save(compiled, str(path), _extra_files={METADATA_NAME: metadata})


def _load_torchscript(path: Path, device: torch.device) -> tuple:
    loaded = torch.jit.load(str(path), map_location=device)
    return loaded, loaded.state_dict()


def _export_program(module: torch.nn.Module, method: str, inputs: Sequence[torch.Tensor]):
    return torch.export.export(module, (inputs[0],))


def _save_program(program, path: Path, metadata: bytes) -> None:
    torch.export.save(program, str(path), extra_files={METADATA_NAME: metadata.decode()})


def _load_program(path: Path, device: torch.device) -> tuple:
    program = torch.export.load(str(path))
    return program.module(), program.state_dict


_FORMATS = {
    "torchscript": _Format("torchscript", "model", _script_or_trace, _save_torchscript, _load_torchscript),
    "pt2": _Format("pt2", "program", _export_program, _save_program, _load_program),
    "onnx": _Format("onnx", "ONNX model", compile_onnx, save_onnx, load_onnx),
}


def _max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return math.inf
    return float((a.double() - b.double()).abs().max())


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equality (NaNs and signed zeros included), for every dtype and 0-d tensors."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a_bytes = a.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    b_bytes = b.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    return torch.equal(a_bytes, b_bytes)


def _check_weights_bitwise(eager: torch.nn.Module, loaded_sd: dict, path: Path) -> None:
    eager_sd = eager.state_dict()
    if set(eager_sd) != set(loaded_sd):
        missing = sorted(set(eager_sd) - set(loaded_sd))[:5]
        extra = sorted(set(loaded_sd) - set(eager_sd))[:5]
        raise VerificationError(kWeightNamesError.format(path=path, missing=missing, extra=extra))
    for key, tensor in eager_sd.items():
        if not same_bits(tensor, loaded_sd[key]):
            raise VerificationError(kWeightBitsError.format(path=path, key=key))


def _call(module, x: torch.Tensor) -> torch.Tensor:
    return module(x)


def _verify(module, loaded, inputs: Sequence[torch.Tensor], path: Path, tolerance: float, what: str,
            call: Callable[[Any, torch.Tensor], torch.Tensor]) -> float:
    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            diff = _max_abs_diff(call(module, x), call(loaded, x))
            if not diff <= tolerance:
                raise VerificationError(kOutputMismatchError.format(
                    path=path, what=what, diff=diff, tolerance=tolerance, shape=tuple(x.shape)))
            worst = max(worst, diff)
    return worst


def export_module(
    module: torch.nn.Module,
    path: Path,
    *,
    file_format: str,
    method: str,
    metadata: dict,
    inputs: Sequence[torch.Tensor],
    verify: bool,
    tolerance: float,
    say: Callable[[str], Any],
    call: Callable[[Any, torch.Tensor], torch.Tensor] = _call,
) -> ExportReport:
    """Compiles ``module`` with ``method``, writes it to ``path`` atomically with ``metadata``
    and, with ``verify``, reloads the file, compares its outputs on ``inputs`` with the eager
    module's (max abs difference <= ``tolerance``; ``call(module, x)`` runs either, by default
    ``module(x)``) and every weight bit for bit. On any failure nothing is written and an
    existing file is untouched.

    Raises:
        OutputPathError: ``path`` cannot be written.
        VerificationError: the reloaded file differs from ``module``.
    """
    fmt = _FORMATS[file_format]
    check_output_path(path)
    started = time.perf_counter()
    device = next(iter(module.parameters()), torch.empty(0)).device
    max_diff = None
    with quiet_torchscript(), torch.no_grad():
        compiled = fmt.compile(module, method, inputs)
        with atomic_output(path) as tmp:
            fmt.save(compiled, tmp, metadata_json(metadata))
            if verify:
                say(f"verifying {path.name}")
                loaded, loaded_state = fmt.load(tmp, device)
                max_diff = _verify(module, loaded, inputs, path, tolerance, fmt.what, call)
                _check_weights_bitwise(module, loaded_state, path)
            file_bytes = tmp.stat().st_size
    return ExportReport(
        path=str(path), file_format=file_format, method=method, verified=verify,
        max_abs_diff=max_diff, input_shapes=[tuple(x.shape) for x in inputs] if verify else [],
        parameters=metadata["parameters"], weight_bytes=metadata["weight_bytes"], file_bytes=file_bytes,
        seconds=time.perf_counter() - started, weights_sha256=metadata["weights_sha256"],
    )
