"""Image files in, the files ``nnUNetv2_predict`` writes out: :func:`predict`.

The model is an exported pipeline file (``Pipeline.to_torchscript``), a model folder, a loaded
:class:`~nnunet_export.NnUNetModel` or a :class:`~nnunet_export.Pipeline`. Cases are read and
written by :mod:`nnunet_export.image_files` (nnU-Net's reader/writer for the model), found by
:mod:`nnunet_export.case_files` (nnU-Net's naming).

Work overlaps: a reader thread reads and preprocesses the next case while the current one runs
the sliding window and the export back to the image's geometry; its queue holds one case, so at
most two cases are in memory beside the current one. A case that fails (unreadable file, wrong
channel count, missing channel file) is recorded and the run goes on. Every file is written
atomically; an interrupted run leaves no partial file.

Example:
    >>> summary = predict("model.pt", "imagesTs", "predictions")  # doctest: +SKIP
    >>> print(summary.table())  # doctest: +SKIP
"""
from __future__ import annotations

import json
import os
import pickle
import queue
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch

from ._core import ExportError
from .atomic_write import atomic_output
from .case_files import Case, cases_from_lists, find_cases, output_files
from .export_writer import quiet_torchscript
from .image_files import read_images, reader_writer_name, write_seg
from .loading import load_complete
from .metadata import read_metadata
from .model import NnUNetModel
from .pipeline import Pipeline
from .pipeline.build import kDeviceError

kNotPipelineFileError = (
    "{path!r} is an exported network without the pipeline (preprocessing, sliding window, export); "
    "export one with nnunet_export.load_complete(...).pipeline().to_torchscript(path)"
)
kNotTorchScriptError = "{path!r} is a {file_format} file; predict runs exported TorchScript pipeline files (.pt)"
kNoModelError = "model {model!r} is neither an exported pipeline file nor a model folder"
kFixedSettingError = (
    "{source} was built with {name}={fixed!r}; {name}={requested!r} cannot be applied to it "
    "(leave {name} unset, or build a pipeline with it from the model folder)"
)
kFolderOnlyError = "{name} applies to a model folder only; {source} already has its folds and checkpoint"
kConfigurationError = "configuration {requested!r} was requested, but {source} is configuration {actual!r}"
kChannelsError = "the image has {found} channel{s} ({files}), the model takes {count}"
kInputsError = (
    "inputs must be a folder, a list of lists of image files (one list per case), or a list of "
    "(image, spacing) pairs, got {kind}"
)
kArrayCaseError = "input {index}: an array case is (image (c, z, y, x), spacing (z, y, x) or properties dict)"
kDefaultStep = 0.5


class PredictError(ExportError):
    """predict cannot start: the model, its settings or the inputs are not usable."""


@dataclass
class CaseResult:
    """What happened to one case: ``status`` "ok", "skipped" (--continue_prediction) or "failed"."""

    case_id: str
    status: str
    seconds: float = 0.0
    error: Optional[str] = None
    outputs: list = field(default_factory=list)


@dataclass
class PredictionSummary:
    """The outcome of :func:`predict`: one :class:`CaseResult` per case, in input order."""

    output_dir: Path
    device: str
    model: str
    cases: list
    seconds: float = 0.0

    @property
    def failed(self) -> list:
        return [c for c in self.cases if c.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def table(self) -> str:
        done = [c for c in self.cases if c.status == "ok"]
        per_case = f"{sum(c.seconds for c in done) / len(done):.2f} s" if done else "-"
        rows = [("model", self.model), ("device", self.device), ("output", str(self.output_dir)),
                ("cases", f"{len(self.cases)} ({len(done)} predicted, "
                          f"{sum(c.status == 'skipped' for c in self.cases)} skipped, {len(self.failed)} failed)"),
                ("seconds per case", per_case), ("total time", f"{self.seconds:.2f} s")]
        rows += [(f"failed: {c.case_id}", c.error or "") for c in self.failed]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


@dataclass
class _Model:
    runner: Any              # Pipeline or the loaded TorchScript module: the same methods
    description: str
    config: dict             # file_ending, channel_names, labels, image_reader_writer, ...
    dataset_json: Optional[dict]
    plans_json: Optional[dict]


def _check_fixed(source: str, settings: dict, tile_step_size, use_mirroring) -> None:
    for name, requested in (("tile_step_size", tile_step_size), ("use_mirroring", use_mirroring)):
        fixed = settings.get(name)
        if requested is not None and requested != fixed:
            raise PredictError(kFixedSettingError.format(source=source, name=name, fixed=fixed, requested=requested))


def _config_dict(config) -> dict:
    return {k: getattr(config, k) for k in ("file_ending", "channel_names", "labels", "image_reader_writer",
                                             "num_input_channels", "configuration", "regions_class_order",
                                             "has_regions")}


def _folder_json(model_dir: Optional[str]) -> tuple[Optional[dict], Optional[dict]]:
    found = []
    for name in ("dataset.json", "plans.json"):
        path = Path(model_dir or "") / name
        found.append(json.loads(path.read_text()) if model_dir and path.is_file() else None)
    return found[0], found[1]


def _from_pipeline(pipeline: Pipeline, source: str) -> _Model:
    dataset_json, plans_json = _folder_json(pipeline.info.model_dir)
    # Scripted, as an exported file runs: the same code without Python's per-tile overhead
    # (eager runs a small network's sliding window markedly slower). A network built by a
    # trainer's own code cannot be scripted and runs eagerly.
    runner = pipeline
    if pipeline.info.scriptable:
        with quiet_torchscript():
            runner = torch.jit.script(pipeline)
    return _Model(runner, source, _config_dict(pipeline.info.config), dataset_json, plans_json)


def _dataset_json_from_metadata(config: dict) -> dict:
    """What an exported file knows of dataset.json (its plans are not stored)."""
    dataset = {"channel_names": config["channel_names"], "labels": config["labels"]}
    if config.get("has_regions"):
        dataset["regions_class_order"] = config["regions_class_order"]
    dataset["file_ending"] = config["file_ending"]
    return dataset


def _from_file(path: Path, tile_step_size, use_mirroring, device: str) -> _Model:
    metadata = read_metadata(path)
    if metadata.get("file_format") != "torchscript":
        raise PredictError(kNotTorchScriptError.format(path=str(path), file_format=metadata.get("file_format")))
    settings = metadata.get("pipeline")
    if not settings:
        raise PredictError(kNotPipelineFileError.format(path=str(path)))
    _check_fixed(f"the exported file {str(path)!r}", settings, tile_step_size, use_mirroring)
    if torch.device(device).type != "cpu":
        raise PredictError(kDeviceError.format(device=device))
    with warnings.catch_warnings():  # torch 2.13 deprecates torch.jit.load; the file is TorchScript
        warnings.simplefilter("ignore", DeprecationWarning)
        runner = torch.jit.load(str(path), map_location="cpu")
    config = dict(metadata["model_config"])
    return _Model(runner, str(path), config, _dataset_json_from_metadata(config), None)


def resolve_model(model: Any, *, folds=None, checkpoint_name: str = "checkpoint_final.pth",
                  configuration: Optional[str] = None, tile_step_size: Optional[float] = None,
                  use_mirroring: Optional[bool] = None, device: str = "cpu") -> _Model:
    """The runnable pipeline and what predict needs to know of the model (see :func:`predict`)."""
    folder_only = folds is not None or checkpoint_name != "checkpoint_final.pth"
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if path.is_dir():
            loaded = load_complete(path, folds=folds, checkpoint_name=checkpoint_name, device=device)
            resolved = _from_pipeline(loaded.pipeline(tile_step_size=kDefaultStep if tile_step_size is None
                                                      else tile_step_size,
                                                      use_mirroring=True if use_mirroring is None else use_mirroring),
                                      str(path))
        elif path.is_file():
            if folder_only:
                raise PredictError(kFolderOnlyError.format(name="folds/checkpoint_name", source=str(path)))
            resolved = _from_file(path, tile_step_size, use_mirroring, device)
        else:
            raise PredictError(kNoModelError.format(model=str(model)))
    elif isinstance(model, NnUNetModel):
        if folder_only:
            raise PredictError(kFolderOnlyError.format(name="folds/checkpoint_name", source="the loaded model"))
        resolved = _from_pipeline(model.pipeline(tile_step_size=kDefaultStep if tile_step_size is None
                                                 else tile_step_size,
                                                 use_mirroring=True if use_mirroring is None else use_mirroring),
                                  model.info.model_dir)
    elif isinstance(model, Pipeline):
        if folder_only:
            raise PredictError(kFolderOnlyError.format(name="folds/checkpoint_name", source="the pipeline"))
        _check_fixed("the pipeline", model.settings, tile_step_size, use_mirroring)
        resolved = _from_pipeline(model, model.info.model_dir)
    else:
        raise PredictError(kNoModelError.format(model=type(model).__name__))
    actual = resolved.config.get("configuration")
    if configuration is not None and configuration != actual:
        raise PredictError(kConfigurationError.format(requested=configuration, source=resolved.description,
                                                      actual=actual))
    return resolved


# --- inputs ------------------------------------------------------------------------------------

@dataclass
class _Input:
    case: Case
    array: Any = None        # (image, spacing or properties) for array inputs


def _inputs(inputs: Any, config: dict, case_ids: Optional[Sequence[str]]) -> list[_Input]:
    if isinstance(inputs, (str, os.PathLike)):
        return [_Input(c) for c in find_cases(inputs, config["file_ending"], config["channel_names"])]
    if not isinstance(inputs, (list, tuple)) or not inputs:
        raise PredictError(kInputsError.format(kind=type(inputs).__name__ if inputs is not None else "None"))
    if all(isinstance(i, (list, tuple)) and all(isinstance(f, (str, os.PathLike)) for f in i) for i in inputs):
        cases = cases_from_lists(inputs, config["file_ending"])
        if case_ids is not None:
            for case, case_id in zip(cases, case_ids):
                case.case_id = str(case_id)
        return [_Input(c) for c in cases]
    result = []
    for index, item in enumerate(inputs):
        if not (isinstance(item, (list, tuple)) and len(item) == 2 and hasattr(item[0], "shape")):
            raise PredictError(kArrayCaseError.format(index=index))
        case_id = str(case_ids[index]) if case_ids is not None else f"case_{index:04d}"
        result.append(_Input(Case(case_id, []), array=item))
    return result


def _array_case(item, config: dict) -> tuple[np.ndarray, dict]:
    image, spacing_or_properties = item
    image = np.asarray(image.cpu() if hasattr(image, "cpu") else image, dtype=np.float32)
    if isinstance(spacing_or_properties, dict):
        return image, dict(spacing_or_properties)
    spacing = [float(s) for s in (spacing_or_properties.tolist() if hasattr(spacing_or_properties, "tolist")
                                  else spacing_or_properties)]
    # No file geometry: the segmentation is written with the spacing, at the origin, unrotated.
    return image, {"sitk_stuff": {"spacing": tuple(spacing[::-1]), "origin": (0.0,) * len(spacing),
                                  "direction": tuple(np.eye(len(spacing)).ravel().tolist())},
                   "spacing": spacing}


# --- progress ----------------------------------------------------------------------------------

class _Progress:
    """Bars (tqdm) when wanted and possible, and per-case lines."""

    def __init__(self, progress, total: int):
        self.line: Callable[[str], Any] = progress if callable(progress) else (lambda text: None)
        self.overall = self.case = None
        self._tqdm = None
        if progress is True or (progress is None and sys.stderr.isatty()):
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            self._tqdm = tqdm
        if self._tqdm is not None:
            self.overall = self._tqdm(total=total, desc="cases", unit="case", position=0, file=sys.stderr)
        if progress is None or progress is True:
            self.line = self._write

    def _write(self, text: str) -> None:
        if self._tqdm is not None:
            self._tqdm.write(f"[nnunet-export] {text}", file=sys.stderr)
        else:
            print(f"[nnunet-export] {text}", file=sys.stderr, flush=True)

    def start_case(self, case_id: str, steps: int) -> None:
        if self._tqdm is not None:
            self.case = self._tqdm(total=steps, desc=case_id, unit="step", position=1, leave=False, file=sys.stderr)

    def step(self) -> None:
        if self.case is not None:
            self.case.update(1)

    def end_case(self) -> None:
        if self.case is not None:
            self.case.close()
            self.case = None
        if self.overall is not None:
            self.overall.update(1)

    def close(self) -> None:
        if self.case is not None:
            self.end_case()
        if self.overall is not None:
            self.overall.close()


# --- the run -----------------------------------------------------------------------------------

def _save_json(obj: dict, path: Path) -> None:
    # nnU-Net's save_json(..., sort_keys=False): json.dump with indent 4.
    with atomic_output(path) as tmp:
        with open(tmp, "w") as handle:
            json.dump(obj, handle, sort_keys=False, indent=4)


def _nnunet_properties(reader_properties: dict, properties: dict) -> dict:
    """The properties nnU-Net's preprocessing leaves (and its .pkl holds): the reader's plus the crop's."""
    result = dict(reader_properties)
    result["shape_before_cropping"] = tuple(int(s) for s in properties["shape_before_cropping"].tolist())
    result["bbox_used_for_cropping"] = [[int(a), int(b)] for a, b in properties["bbox_used_for_cropping"].tolist()]
    result["shape_after_cropping_and_before_resampling"] = tuple(
        int(s) for s in properties["shape_after_cropping_and_before_resampling"].tolist())
    return result


def _done(files: dict, save_probabilities: bool) -> bool:
    return files["segmentation"].is_file() and (not save_probabilities or files["npz"].is_file())


_kEnd = object()


def _reader(model: _Model, reader_writer: str, items: list, out: queue.Queue, stop: threading.Event) -> None:
    """Reads and preprocesses each item in turn; puts (item, (image properties, data, properties)
    or the exception) on ``out`` (bounded: this thread waits while the queue is full)."""
    for item in items:
        if stop.is_set():
            return
        try:
            if item.array is not None:
                image, reader_properties = _array_case(item.array, model.config)
            else:
                image, reader_properties = read_images(item.case.files, reader_writer)
            count = int(model.config["num_input_channels"])
            if image.shape[0] != count:
                files = ", ".join(os.path.basename(f) for f in item.case.files) or "array"
                raise PredictError(kChannelsError.format(found=image.shape[0], s="s" if image.shape[0] != 1 else "",
                                                         files=files, count=count))
            spacing = torch.tensor([float(s) for s in reader_properties["spacing"]], dtype=torch.float64)
            with torch.no_grad():
                data, properties = model.runner.preprocess(torch.from_numpy(image), spacing)
            result: Any = (reader_properties, data, properties)
        except Exception as err:  # noqa: BLE001 - recorded for this case, the run goes on
            result = err
        while not stop.is_set():
            try:
                out.put((item, result), timeout=0.1)
                break
            except queue.Full:
                continue
    while not stop.is_set():
        try:
            out.put(_kEnd, timeout=0.1)
            return
        except queue.Full:
            continue


def error_line(err: BaseException) -> str:
    """The one line a failure is reported with: ExportError/OSError text alone, others with their
    type (a case's error line here, the command's in the CLI)."""
    lines = str(err).strip().splitlines()
    message = lines[0] if lines else ""
    if isinstance(err, (ExportError, OSError)):
        return message or type(err).__name__
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


def _predict_one(model: _Model, reader_writer: str, item: _Input, result, files: dict,
                 save_probabilities: bool, bar: _Progress) -> list:
    reader_properties, data, properties = result
    with torch.no_grad():
        logits = model.runner.predict_logits(data)
        bar.step()
        if save_probabilities:
            segmentation, probabilities = model.runner.probabilities_from_logits(logits, properties)
        else:
            segmentation, probabilities = model.runner.segmentation_from_logits(logits, properties), None
        del logits
    bar.step()
    written = []
    if probabilities is not None:
        # nnU-Net's export_prediction_from_logits: .npz (probabilities), .pkl (properties), then the segmentation.
        with atomic_output(files["npz"]) as tmp:
            np.savez_compressed(tmp, probabilities=probabilities.numpy())
        written.append(files["npz"])
        with atomic_output(files["pkl"]) as tmp:
            with open(tmp, "wb") as handle:
                pickle.dump(_nnunet_properties(reader_properties, properties), handle)
        written.append(files["pkl"])
    write_seg(segmentation.numpy(), files["segmentation"], reader_properties, reader_writer)
    written.append(files["segmentation"])
    bar.step()
    return written


def predict(model: Any, inputs: Any, output_dir: Union[str, os.PathLike], *, folds=None,
            checkpoint_name: str = "checkpoint_final.pth", configuration: Optional[str] = None,
            tile_step_size: Optional[float] = None, use_mirroring: Optional[bool] = None,
            save_probabilities: bool = False, continue_prediction: bool = False, device: str = "cpu",
            case_ids: Optional[Sequence[str]] = None, progress: Any = None) -> PredictionSummary:
    """Predicts every case of ``inputs`` and writes the files ``nnUNetv2_predict`` writes.

    Args:
        model: an exported pipeline file (``.pt``), a model folder, an NnUNetModel or a Pipeline.
        inputs: a folder (``CASE_XXXX<file_ending>``, channels from dataset.json), a list of lists
            of files (one list per case, channels in order), or a list of ``(image (c, z, y, x),
            spacing (z, y, x) or reader properties)`` pairs (outputs ``case_0000``... or ``case_ids``).
        output_dir: created if missing; gets ``CASE<file_ending>`` per case (and ``CASE.npz`` with
            ``probabilities`` float32 (classes, z, y, x) and ``CASE.pkl`` with the properties when
            ``save_probabilities``), plus dataset.json and plans.json when known (an exported file
            stores no plans: only dataset.json, rebuilt from its metadata).
        folds, checkpoint_name: for a model folder (load_complete's).
        configuration: checked against the model's (a PredictError when it differs).
        tile_step_size, use_mirroring: default 0.5 and True; an exported file or a Pipeline has its
            own, and a different explicit value is refused.
        continue_prediction: skip cases whose outputs exist (the .npz too with save_probabilities).
        device: "cpu" (the pipeline runs on the CPU only for now; other devices are refused).
        progress: None: bars (tqdm) and error lines on stderr when it is a terminal; True: always;
            False: silent; a callable: gets one line per case.

    Returns:
        PredictionSummary; failed cases are in ``summary.failed`` (predict raises only when it
        cannot start).
    """
    started = time.perf_counter()
    resolved = resolve_model(model, folds=folds, checkpoint_name=checkpoint_name, configuration=configuration,
                             tile_step_size=tile_step_size, use_mirroring=use_mirroring, device=device)
    config = resolved.config
    reader_writer = reader_writer_name(config.get("image_reader_writer")
                                       or (resolved.dataset_json or {}).get("overwrite_image_reader_writer"),
                                       config["file_ending"])
    items = _inputs(inputs, config, case_ids)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if resolved.dataset_json is not None:
        _save_json(resolved.dataset_json, output_dir / "dataset.json")
    if resolved.plans_json is not None:
        _save_json(resolved.plans_json, output_dir / "plans.json")

    results: dict[int, CaseResult] = {}
    todo = []
    for index, item in enumerate(items):
        files = output_files(output_dir, item.case.case_id, config["file_ending"])
        if item.case.error is not None:
            results[index] = CaseResult(item.case.case_id, "failed", error=item.case.error)
        elif continue_prediction and _done(files, save_probabilities):
            results[index] = CaseResult(item.case.case_id, "skipped")
        else:
            todo.append(item)
    index_of = {id(item): index for index, item in enumerate(items)}
    bar = _Progress(progress, len(items))
    for index in sorted(results):
        if results[index].status == "failed":
            bar.line(f"{results[index].case_id}: failed: {results[index].error}")
        bar.end_case()

    out: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    thread = threading.Thread(target=_reader, args=(resolved, reader_writer, todo, out, stop),
                              name="nnunet-export-reader", daemon=True)
    thread.start()
    try:
        while True:
            got = out.get()
            if got is _kEnd:
                break
            item, result = got
            case_started = time.perf_counter()
            files = output_files(output_dir, item.case.case_id, config["file_ending"])
            bar.start_case(item.case.case_id, 3)
            try:
                if isinstance(result, BaseException):
                    raise result
                written = _predict_one(resolved, reader_writer, item, result, files, save_probabilities, bar)
                record = CaseResult(item.case.case_id, "ok", time.perf_counter() - case_started, outputs=written)
                bar.line(f"{item.case.case_id}: done in {record.seconds:.2f} s")
            except Exception as err:  # noqa: BLE001 - the case fails, the run goes on
                record = CaseResult(item.case.case_id, "failed", time.perf_counter() - case_started,
                                    error=error_line(err))
                bar.line(f"{item.case.case_id}: failed: {record.error}")
            results[index_of[id(item)]] = record
            bar.end_case()
    finally:
        stop.set()
        thread.join()
        bar.close()
    device_name = str(next(iter(resolved.runner.parameters()), torch.empty(0)).device)
    return PredictionSummary(output_dir, device_name, resolved.description,
                             [results[i] for i in range(len(items))], time.perf_counter() - started)


__all__ = ["CaseResult", "PredictError", "PredictionSummary", "predict", "resolve_model"]
