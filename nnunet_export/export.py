"""to_torchscript / to_exported_program: verified, self-describing files written atomically."""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

import torch

from ._core import ExportError, ThreadGuard
from .atomic_write import atomic_output, check_output_path
from .metadata import METADATA_NAME, build_metadata, metadata_json
from .prefixes import unwrap_module

DEFAULT_TOLERANCE = 1e-6


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


def _as_model(module_or_model_dir, load_kwargs: dict, caller: str):
    from .loading import load_complete
    from .model import NnUNetModel, attached_info

    if isinstance(module_or_model_dir, (str, os.PathLike)):
        return load_complete(module_or_model_dir, **load_kwargs)
    ignored = sorted(set(load_kwargs) - {"num_threads"})
    if ignored:  # silently exporting other folds than asked for would be worse than failing
        raise ExportError(
            f"{caller} got a loaded module and load_complete arguments {ignored}; those apply "
            "only to a model folder: pass them to load_complete instead"
        )
    module = unwrap_module(module_or_model_dir)
    if isinstance(module, NnUNetModel):
        return module
    info = attached_info(module)
    if info is not None:  # a predictor's network after patch_nnunet() or complete()
        return NnUNetModel(module, info)
    raise ExportError(
        f"{caller} needs a model folder or the module load_complete returned, got "
        f"{type(module_or_model_dir).__name__}; for a bare network use "
        "nnunet_export.complete(predictor) or load_complete(model_dir)"
    )


def verification_inputs(model, device: torch.device) -> list[torch.Tensor]:
    """Deterministic inputs: one of patch size and one of another stride-divisible size."""
    cfg = model.info.config
    patch = [int(p) for p in cfg.patch_size]
    strides = cfg.architecture["arch_kwargs"].get("strides") or [[1] * len(patch)]
    factor = [1] * len(patch)
    for stride in strides:
        stride = [stride] * len(patch) if isinstance(stride, int) else stride
        factor = [f * int(s) for f, s in zip(factor, stride)]
    # The smaller stride-divisible neighbour keeps verification cheap; grow when none exists.
    other = [p - f if p - f >= f else p + f for p, f in zip(patch, factor)]
    generator = torch.Generator().manual_seed(20240601)
    shapes = [(1, cfg.num_input_channels, *patch), (1, cfg.num_input_channels, *other)]
    # float32 whatever the default dtype: the networks are float32, as nnU-Net feeds them.
    return [torch.randn(s, generator=generator, dtype=torch.float32).to(device) for s in shapes]


def _max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return math.inf
    return float((a.double() - b.double()).abs().max())


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
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
        raise VerificationError(f"{path}: exported weights differ in names: missing {missing}, extra {extra}")
    for key, tensor in eager_sd.items():
        if not _same_bits(tensor, loaded_sd[key]):
            raise VerificationError(f"{path}: exported weight {key!r} is not bit-identical to the checkpoint's")


def _verify(model, loaded, path: Path, tolerance: float, device: torch.device, check_weights: bool):
    inputs = verification_inputs(model, device)
    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            expected = model(x)
            got = loaded(x)
            diff = _max_abs_diff(expected, got)
            if not diff <= tolerance:
                raise VerificationError(
                    f"{path}: the exported model differs from the eager module by {diff:.3g} "
                    f"(> {tolerance:g}) on an input of shape {tuple(x.shape)}; no file was written"
                )
            worst = max(worst, diff)
    if check_weights:
        _check_weights_bitwise(model, loaded.state_dict(), path)
    return worst, [tuple(x.shape) for x in inputs]


def _check_method(method: str) -> None:
    if method not in ("auto", "script", "trace"):
        raise ExportError(f"method must be 'auto', 'script' or 'trace', got {method!r}")


def _choose_method(model, method: str, say) -> str:
    _check_method(method)
    if method == "script" and not model.info.scriptable:
        raise ExportError(f"method='script' is impossible: {model.info.not_scriptable_reason}")
    if method == "auto":
        if model.info.scriptable:
            return "script"
        say(f"tracing instead of scripting: {model.info.not_scriptable_reason}")
        return "trace"
    return method


def to_torchscript(
    module_or_model_dir,
    path: Union[str, os.PathLike],
    *,
    method: str = "auto",
    verify: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    progress: Callable[[str], Any] | None = None,
    **load_kwargs,
) -> ExportReport:
    """Export a loaded model (or a model folder) to a verified TorchScript file.

    The file is written atomically (a temporary file in the same folder, fsynced, renamed) and
    carries ``extra/nnunet_export.json`` (see :func:`read_metadata`). With ``verify`` the
    written file is reloaded with ``torch.jit.load``, run on deterministic inputs of patch size
    and of another stride-divisible size and compared with the eager module, and every weight
    is compared bit for bit; on failure nothing is written and an existing file is untouched.

    Args:
        module_or_model_dir: the module ``load_complete`` returned (also inside a
            ``torch.compile``/DDP wrapper), or a model folder (``load_kwargs`` go to
            ``load_complete``: folds, checkpoint_name, device, configuration, num_threads).
        path: the output file (``.pt``).
        method: ``"auto"`` scripts the package's own architectures and traces the rest;
            ``"script"`` or ``"trace"`` force one.
        verify: reload and compare (default on).
        tolerance: largest accepted max-abs difference of the logits.
        progress: called with one line per step (e.g. ``print``).

    Returns:
        An :class:`ExportReport` (``print(report.table())``).

    Raises:
        ExportError subclasses: OutputPathError, VerificationError, and everything
        ``load_complete`` raises.

    Example:
        >>> model = nnunet_export.load_complete(model_dir, folds=0)  # doctest: +SKIP
        >>> print(nnunet_export.to_torchscript(model, "model.pt").table())  # doctest: +SKIP
    """
    say = progress or (lambda line: None)
    _check_method(method)  # before minutes of loading
    path = Path(path)
    check_output_path(path)
    started = time.perf_counter()
    with ThreadGuard(load_kwargs.get("num_threads")):
        model = _as_model(module_or_model_dir, load_kwargs, "to_torchscript")
        model.eval()
        device = next(iter(model.parameters()), torch.empty(0)).device
        chosen = _choose_method(model, method, say)
        with torch.no_grad():
            if chosen == "script":
                compiled = torch.jit.script(model)
            else:
                example = verification_inputs(model, device)[0]
                compiled = torch.jit.trace(model, (example,), check_trace=False)
        metadata = build_metadata(model, method=chosen, file_format="torchscript")
        with atomic_output(path) as tmp:
            torch.jit.save(compiled, str(tmp), _extra_files={METADATA_NAME: metadata_json(metadata)})
            max_diff, shapes = None, []
            if verify:
                say(f"verifying {path.name}")
                loaded = torch.jit.load(str(tmp), map_location=device)
                max_diff, shapes = _verify(model, loaded, path, tolerance, device, check_weights=True)
            file_bytes = tmp.stat().st_size
    return ExportReport(
        path=str(path), file_format="torchscript", method=chosen, verified=verify,
        max_abs_diff=max_diff, input_shapes=shapes, parameters=metadata["parameters"],
        weight_bytes=metadata["weight_bytes"], file_bytes=file_bytes,
        seconds=time.perf_counter() - started, weights_sha256=metadata["weights_sha256"],
    )


def to_exported_program(
    module_or_model_dir,
    path: Union[str, os.PathLike],
    *,
    verify: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    progress: Callable[[str], Any] | None = None,
    **load_kwargs,
) -> ExportReport:
    """Export to a ``torch.export`` ``.pt2`` file with the same metadata and verification.

    TorchScript is deprecated upstream; this is the forward-looking format. The program is
    exported for the patch size (static shapes), so verification uses the patch-size input;
    every weight of the reloaded program is also compared bit for bit with the module's.

    Args:
        module_or_model_dir, verify, tolerance, progress, load_kwargs: as for
            :func:`to_torchscript`.
        path: the output file; torch.export requires the ``.pt2`` extension.

    Returns:
        An :class:`ExportReport` with ``method == "torch.export"``.

    Raises:
        ExportError subclasses: OutputPathError, VerificationError, and everything
        ``load_complete`` raises.

    Example:
        >>> nnunet_export.to_exported_program(model, "model.pt2")  # doctest: +SKIP
    """
    say = progress or (lambda line: None)
    path = Path(path)
    check_output_path(path)
    started = time.perf_counter()
    with ThreadGuard(load_kwargs.get("num_threads")):
        model = _as_model(module_or_model_dir, load_kwargs, "to_exported_program")
        model.eval()
        device = next(iter(model.parameters()), torch.empty(0)).device
        example = verification_inputs(model, device)[0]
        with torch.no_grad():
            program = torch.export.export(model, (example,))
        metadata = build_metadata(model, method="torch.export", file_format="pt2")
        with atomic_output(path) as tmp:
            torch.export.save(program, str(tmp), extra_files={METADATA_NAME: metadata_json(metadata).decode()})
            max_diff, shapes = None, []
            if verify:
                say(f"verifying {path.name}")
                loaded_program = torch.export.load(str(tmp))
                loaded = loaded_program.module()
                with torch.no_grad():
                    expected = model(example)
                    got = loaded(example)
                max_diff = _max_abs_diff(expected, got)
                shapes = [tuple(example.shape)]
                if not max_diff <= tolerance:
                    raise VerificationError(
                        f"{path}: the exported program differs from the eager module by "
                        f"{max_diff:.3g} (> {tolerance:g}); no file was written"
                    )
                _check_weights_bitwise(model, loaded_program.state_dict, path)
            file_bytes = tmp.stat().st_size
    return ExportReport(
        path=str(path), file_format="pt2", method="torch.export", verified=verify,
        max_abs_diff=max_diff, input_shapes=shapes, parameters=metadata["parameters"],
        weight_bytes=metadata["weight_bytes"], file_bytes=file_bytes,
        seconds=time.perf_counter() - started, weights_sha256=metadata["weights_sha256"],
    )
