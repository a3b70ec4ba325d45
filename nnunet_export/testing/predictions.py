"""assert_matches_nnunet: an exported file's predictions against nnU-Net's own code.

nnunetv2 is imported here only, when a comparison runs: the package works without it.
"""
from __future__ import annotations

import math
import os
import sys
from contextlib import contextmanager, redirect_stdout
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from ..folds import FoldsArg
from ..checkpoint import read_checkpoint
from ..folds import checkpoint_file
from ..prefixes import WRAPPER_PREFIXES
from .exported import ExportedFile, open_exported, resolve_folds

# nnU-Net's defaults (nnUNetv2_predict without -step_size / --disable_tta).
DEFAULT_TILE_STEP_SIZE = 0.5
NETWORK_TOLERANCE = 1e-4  # float32 logits, exact=False
PIPELINE_ULPS = 8  # fp16 logits, exact=False: this many fp16 ulps of the largest logit
_SEED = 20240601

kNnUNetMissingError = ("assert_matches_nnunet compares with nnU-Net's own predictor, and nnunetv2 cannot be "
                       "imported ({reason}): pip install nnunet_export[nnunet]")
kImagesTypeError = ("images must be None or a list of preprocessed volumes (torch tensors or NumPy arrays), "
                    "got {got}")
kImageFileError = ("image {index}: {image!r} is a file name; images must be preprocessed volumes (tensors or "
                   "NumPy arrays): reading image files with their spacing is not supported yet")
kImageShapeError = "image {index}: {what} must have {dims} dimensions ({layout}), got shape {shape}"
kPrefixedError = ("{path}: weight {key!r} carries a torch.compile/DDP wrapper prefix, which nnU-Net's predictor "
                  "cannot load (its load_state_dict is strict): there is no nnU-Net prediction to compare with; "
                  "assert_weights_match checks such exports")
kMismatchHeader = "{path}: the exported {what} differs from nnU-Net's {reference} ({criterion}):"
kShapeLine = "  input {index} of {count}, shape {shape}: output shape {got}, nnU-Net's {want}"
kInputLine = ("  input {index} of {count}, shape {shape}, folds {folds}: max |difference| {diff:.6g}, "
              "{voxels} of {total} voxels differ ({per_channel}){labels}")


def _import_predictor():
    try:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    except ImportError as err:
        raise ImportError(kNnUNetMissingError.format(reason=err)) from None
    return nnUNetPredictor


@contextmanager
def _same_threads() -> Iterator[None]:
    """Both sides at one thread count: nnU-Net caps its prediction at default_num_processes
    threads, and kernels may round differently at another count."""
    from nnunetv2.configuration import default_num_processes

    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, int(default_num_processes)))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _spatial_dims(file: ExportedFile) -> int:
    return len(file.metadata["model_config"]["patch_size"])


def generated_inputs(file: ExportedFile) -> list[torch.Tensor]:
    """Deterministic inputs: a network file gets one of patch size; a pipeline a volume smaller
    than the patch (padding) and one 2.6 patches long on the last axis (several tiles, so that
    the tile step matters)."""
    config = file.metadata["model_config"]
    patch = [int(p) for p in config["patch_size"]]
    channels = int(config["num_input_channels"])
    generator = torch.Generator().manual_seed(_SEED)
    if not file.is_pipeline:
        shapes = [[1, channels, *patch]]
    else:
        slices = [2] if len(patch) == 2 else []
        shapes = [[channels, *slices, *[p // 2 + 1 for p in patch]],
                  [channels, *slices, *patch[:-1], math.ceil(2.6 * patch[-1])]]
    return [torch.randn(shape, generator=generator, dtype=torch.float32) for shape in shapes]


def _as_tensor(index: int, image: Any) -> torch.Tensor:
    if isinstance(image, (str, bytes, os.PathLike)):
        raise TypeError(kImageFileError.format(index=index, image=os.fsdecode(image) if not isinstance(image, str) else image))
    if isinstance(image, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(image))
    if isinstance(image, torch.Tensor):
        return image.detach().cpu()
    raise TypeError(kImagesTypeError.format(got=f"a list holding {type(image).__name__}"))


def _checked_inputs(file: ExportedFile, images) -> list[torch.Tensor]:
    if images is None:
        return generated_inputs(file)
    if not isinstance(images, (list, tuple)):
        raise TypeError(kImagesTypeError.format(got=type(images).__name__))
    spatial = _spatial_dims(file)
    inputs = []
    for index, image in enumerate(images):
        tensor = _as_tensor(index, image)
        if file.is_pipeline:
            if tensor.dim() != 4:
                layout = "channels, slices, x, y" if spatial == 2 else "channels, x, y, z"
                raise ValueError(kImageShapeError.format(index=index, what="a pipeline's volume", dims=4,
                                                         layout=layout, shape=list(tensor.shape)))
        elif tensor.dim() == spatial + 1:
            tensor = tensor.unsqueeze(0)  # one image without its batch axis
        elif tensor.dim() != spatial + 2:
            raise ValueError(kImageShapeError.format(index=index, what="a network's input", dims=spatial + 2,
                                                     layout="batch, channels, spatial...", shape=list(tensor.shape)))
        inputs.append(tensor)
    return inputs


@contextmanager
def _checkpoints_read_safely() -> Iterator[None]:
    """Inside the block, ``torch.load`` (nnU-Net's initialise reads checkpoints with it, the
    weights-only restriction off) reads through nnunet_export's safe reader instead: the keys
    nnU-Net uses, nothing from the file executed. Everything else of its initialise runs as is."""
    original = torch.load

    def safe_load(f, map_location=None, *args, **kwargs):
        return read_checkpoint(f)  # network_weights, trainer_name, init_args, mirroring axes

    torch.load = safe_load
    try:
        yield
    finally:
        torch.load = original


class _Reference:
    """nnU-Net's side: predict_logits_from_preprocessed_data for pipelines, the fold mean of
    nnU-Net's own network (each fold's parameters loaded in turn) for network files."""

    def __init__(self, folder, folds, checkpoint_name, settings: dict, pipeline: bool):
        predictor_class = _import_predictor()
        self.pipeline = pipeline
        # nnU-Net prints notes on stdout (e.g. about perform_everything_on_device): stdout is the
        # caller's (nnunet-export verify prints its table there).
        with redirect_stdout(sys.stderr):
            self.predictor = predictor_class(
                tile_step_size=settings["tile_step_size"], use_gaussian=settings["use_gaussian"],
                use_mirroring=settings["use_mirroring"], perform_everything_on_device=False,
                device=torch.device("cpu"), verbose=False, verbose_preprocessing=False, allow_tqdm=False)
            for fold in folds:  # read safely first: nnU-Net's own loading would fail less clearly
                path = checkpoint_file(folder, fold, checkpoint_name)
                keys = read_checkpoint(path, ["network_weights"])["network_weights"]
                prefixed = next((key for key in keys if key.startswith(WRAPPER_PREFIXES)), None)
                if prefixed is not None:
                    raise ValueError(kPrefixedError.format(path=path, key=prefixed))
            with _checkpoints_read_safely():
                self.predictor.initialize_from_trained_model_folder(str(folder), list(folds), checkpoint_name)

    def __call__(self, data: torch.Tensor) -> torch.Tensor:
        if self.pipeline:
            return self.predictor.predict_logits_from_preprocessed_data(data.clone())
        network = self.predictor.network.eval()
        out: Optional[torch.Tensor] = None
        with torch.no_grad():
            for parameters in self.predictor.list_of_parameters:
                network.load_state_dict(parameters)
                logits = network(data)
                out = logits if out is None else out.add_(logits)  # as EnsembleModule: sum, then divide
            assert out is not None
            if len(self.predictor.list_of_parameters) > 1:
                out /= len(self.predictor.list_of_parameters)
        return out


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()]
    return tensor.contiguous().view(view)


def _difference_line(got: torch.Tensor, want: torch.Tensor, exact: bool, tolerance: float, where: dict,
                     regions: bool) -> Optional[str]:
    """One report line for an input whose output differs, or None when it matches."""
    if got.shape != want.shape:
        return kShapeLine.format(got=list(got.shape), want=list(want.shape), **where)
    if got.dtype == want.dtype and torch.equal(_bits(got), _bits(want)):
        return None
    diff = (got.double() - want.double()).abs()
    worst = float(diff.max()) if diff.numel() else 0.0
    if not exact and worst <= tolerance:
        return None
    differ = diff > (0 if exact else tolerance)
    channel_axis = 1 if where["batch"] else 0
    per_channel = differ.movedim(channel_axis, 0).reshape(got.shape[channel_axis], -1).sum(1)
    labels = ""
    if not regions and got.shape[channel_axis] > 1:
        changed = int((got.argmax(channel_axis) != want.argmax(channel_axis)).sum())
        labels = f"; the argmax label changes at {changed} voxels"
    elif regions:
        changed = int(((got > 0) != (want > 0)).sum())
        labels = f"; {changed} region voxels change sides of 0"
    voxels_per_channel = got[:, 0].numel() if where["batch"] else got[0].numel()
    return kInputLine.format(diff=worst, voxels=int(differ.movedim(channel_axis, 0).any(0).sum()),
                             total=voxels_per_channel,
                             per_channel=", ".join(f"channel {c}: {int(n)}" for c, n in enumerate(per_channel)),
                             labels=labels, **{k: v for k, v in where.items() if k != "batch"})


def _settings_text(settings: dict) -> str:
    return ", ".join(f"{key} {settings[key]}" for key in ("tile_step_size", "use_gaussian", "use_mirroring", "mode")
                     if key in settings)


def assert_matches_nnunet(
    exported: Union[str, os.PathLike],
    model_dir: Union[str, os.PathLike],
    images: Optional[Sequence[Any]] = None,
    *,
    folds: FoldsArg = None,
    checkpoint_name: str = "checkpoint_final.pth",
    exact: bool = True,
    tolerance: Optional[float] = None,
    tile_step_size: float = DEFAULT_TILE_STEP_SIZE,
    use_gaussian: bool = True,
    use_mirroring: bool = True,
) -> None:
    """Assert that an exported file predicts what nnU-Net's own code predicts, on the CPU.

    A pipeline file (its metadata has ``"pipeline"``): ``predict_logits`` on each preprocessed
    volume against ``nnUNetPredictor.predict_logits_from_preprocessed_data`` with
    ``tile_step_size`` / ``use_gaussian`` / ``use_mirroring`` (nnU-Net's defaults unless given:
    a file built with other settings fails, and the message shows the file's settings). A network
    file: its forward against nnU-Net's network with each fold's parameters loaded, the fold
    logits summed in fold order and divided by the fold count. Both sides run at the same torch
    thread count. Works with or without pytest.

    nnU-Net's initialise runs as it is, except that its unrestricted ``torch.load`` of each
    checkpoint is served by nnunet_export's safe reader (nothing in a checkpoint is executed).
    nnU-Net cannot load checkpoints saved from a compiled or DDP-wrapped network (keys prefixed
    ``_orig_mod.`` / ``module.``): those raise ValueError here.

    Args:
        exported: a file written by nnunet_export.
        model_dir: the ``<Trainer>__<Plans>__<configuration>`` folder nnU-Net loads.
        images: None for generated deterministic inputs (a network file: one of patch size; a
            pipeline: a volume smaller than the patch and one 2.6 patches long), or a list of
            preprocessed volumes, torch tensors or NumPy arrays: ``(C, x, y, z)`` (2-D
            configurations ``(C, slices, x, y)``) for pipelines, ``([N,] C, *spatial)`` with
            spatial sizes the network takes for network files. Image files with their spacing
            (nnU-Net's preprocessing) are not supported yet.
        folds: the folds nnU-Net loads; None: the folds the file's metadata names.
        checkpoint_name: as nnU-Net's ``-chk``.
        exact: compare bits (``torch.equal`` on integer views); False: max |difference| <=
            ``tolerance``.
        tolerance: for ``exact=False``; None: 1e-4 for network files (float32 logits), 8 fp16
            ulps of nnU-Net's largest logit for pipelines.
        tile_step_size, use_gaussian, use_mirroring: nnU-Net's prediction settings (pipelines).

    Raises:
        AssertionError: a small report: per differing input, its shape, the folds, the largest
            difference, the voxels that differ per output channel and how many change label.
        ImportError: nnunetv2 is not installed (``pip install nnunet_export[nnunet]``).
        TypeError, ValueError: ``images`` holds something other than preprocessed volumes, or
            the checkpoints' keys carry a wrapper prefix nnU-Net's predictor cannot load.

    Example:
        >>> from nnunet_export.testing import assert_matches_nnunet
        >>> assert_matches_nnunet("pipeline.pt", "nnUNetTrainer__nnUNetPlans__3d_fullres")  # doctest: +SKIP
    """
    file = open_exported(exported)
    inputs = _checked_inputs(file, images)
    folder, chosen = resolve_folds(model_dir, folds, file.metadata)
    settings = {"tile_step_size": float(tile_step_size), "use_gaussian": bool(use_gaussian),
                "use_mirroring": bool(use_mirroring)}
    reference = _Reference(folder, chosen, checkpoint_name, settings, file.is_pipeline)
    regions = bool(file.metadata["model_config"].get("has_regions"))
    folds_text = ", ".join(map(str, chosen))
    lines = []
    with _same_threads():
        for index, data in enumerate(inputs):
            want = reference(data)
            got = file.predict(data)
            limit = tolerance
            if limit is None:
                largest = float(want.float().abs().max()) if want.numel() else 0.0
                limit = (PIPELINE_ULPS * 2.0 ** (math.floor(math.log2(largest)) - 10) if largest > 0 else 0.0) \
                    if file.is_pipeline else NETWORK_TOLERANCE
            where = {"index": index, "count": len(inputs), "shape": list(data.shape), "folds": folds_text,
                     "batch": not file.is_pipeline}
            line = _difference_line(got, want, exact, limit, where, regions)
            if line is not None:
                lines.append(line)
    if not lines:
        return
    if file.is_pipeline:
        what = f"pipeline ({_settings_text(file.metadata['pipeline'])})"
        reference_text = f"nnUNetPredictor.predict_logits_from_preprocessed_data ({_settings_text(settings)})"
    else:
        what, reference_text = "network", "network with each fold's parameters"
    criterion = "bit for bit" if exact else "max |difference| <= tolerance"
    header = kMismatchHeader.format(path=file.path, what=what, reference=reference_text, criterion=criterion)
    raise AssertionError("\n".join([header, *lines]))
