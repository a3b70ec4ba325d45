"""to_torchscript / to_exported_program: the public export calls. They take whatever a user holds
(a model folder, the module load_complete returned, a compiled or DDP wrapper of it, or a
predictor's network after patch_nnunet) and hand the model to the one export skeleton
(:mod:`.export_writer`) through its methods."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Union

from ._core import ExportError, ThreadGuard
from .atomic_write import check_output_path
from .export_writer import DEFAULT_TOLERANCE, ExportReport, VerificationError, check_method, check_verify
from .loading import load_complete
from .model import NnUNetModel, attached_info
from .pipeline import Pipeline
from .prefixes import unwrap_module

__all__ = ["DEFAULT_TOLERANCE", "ExportReport", "VerificationError", "to_exported_program", "to_torchscript"]


def _refuse_load_kwargs(load_kwargs: dict, caller: str) -> None:
    ignored = sorted(set(load_kwargs) - {"num_threads"})
    if ignored:  # silently exporting other folds than asked for would be worse than failing
        raise ExportError(
            f"{caller} got a loaded module and load_complete arguments {ignored}; those apply "
            "only to a model folder: pass them to load_complete instead"
        )


def _as_model(module_or_model_dir, load_kwargs: dict, caller: str) -> NnUNetModel:
    if isinstance(module_or_model_dir, (str, os.PathLike)):
        return load_complete(module_or_model_dir, **load_kwargs)
    _refuse_load_kwargs(load_kwargs, caller)
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


def to_torchscript(
    module_or_model_dir,
    path: Union[str, os.PathLike],
    *,
    method: str = "auto",
    verify: Union[bool, str] = True,
    tolerance: float = DEFAULT_TOLERANCE,
    progress: Callable[[str], Any] | None = None,
    **load_kwargs,
) -> ExportReport:
    """Export a loaded model (or a model folder) to a verified TorchScript file.

    The file is written atomically (a temporary file in the same folder, fsynced, renamed) and
    carries ``extra/nnunet_export.json`` (see :func:`read_metadata`). With ``verify`` the
    written file is reloaded with ``torch.jit.load``, run on deterministic inputs (see
    ``verify``) and compared with the eager module, and every weight is compared bit for bit;
    on failure nothing is written and an existing file is untouched.

    Args:
        module_or_model_dir: the module ``load_complete`` returned (also inside a
            ``torch.compile``/DDP wrapper), a :class:`Pipeline` (``model.pipeline()``: the whole
            prediction, scripted, verified on a small volume), or a model folder (``load_kwargs``
            go to ``load_complete``: folds, checkpoint_name, device, configuration, num_threads).
        path: the output file (``.pt``).
        method: ``"auto"`` scripts the package's own architectures and traces the rest;
            ``"script"`` or ``"trace"`` force one.
        verify: reload and compare: ``True`` (default) on one small input (twice the network's
            total stride per axis: each fold's network runs once, cheaply) plus every weight bit
            for bit; ``"full"`` on an input of patch size and one of another stride-divisible
            size; ``False`` not at all.
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
    check_method(method)  # before minutes of loading
    check_verify(verify)
    check_output_path(Path(path))
    if isinstance(module_or_model_dir, Pipeline):
        _refuse_load_kwargs(load_kwargs, "to_torchscript")
        if method == "trace":
            raise ExportError("a Pipeline is exported by scripting only (its loops depend on the input shape)")
        with ThreadGuard(load_kwargs.get("num_threads")):
            return module_or_model_dir.to_torchscript(path, verify=verify, tolerance=tolerance, progress=progress)
    with ThreadGuard(load_kwargs.get("num_threads")):
        model = _as_model(module_or_model_dir, load_kwargs, "to_torchscript")
        return model.to_torchscript(path, method=method, verify=verify, tolerance=tolerance, progress=progress)


def to_exported_program(
    module_or_model_dir,
    path: Union[str, os.PathLike],
    *,
    verify: Union[bool, str] = True,
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
    check_output_path(Path(path))
    with ThreadGuard(load_kwargs.get("num_threads")):
        model = _as_model(module_or_model_dir, load_kwargs, "to_exported_program")
        return model.to_exported_program(path, verify=verify, tolerance=tolerance, progress=progress)
