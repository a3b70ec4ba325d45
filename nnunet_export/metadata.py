"""The self-description stored inside every exported file, written by the C core with cJSON."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Union

import torch

from . import _core
from ._core import ExportError

METADATA_NAME = "nnunet_export.json"
METADATA_FORMAT_VERSION = 1


class MetadataError(ExportError):
    """An exported file has no readable nnunet_export metadata."""


def _config_dict(config: Any) -> dict:
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    if hasattr(config, "to_dict"):
        return config.to_dict()
    return dict(config)


def build_metadata(info, network: torch.nn.Module, *, method: str, file_format: str,
                   pipeline: dict | None = None) -> dict:
    """The metadata document of a model (``info``: its ModelInfo, ``network``: what holds its
    weights) exported with ``method``; ``pipeline`` holds a Pipeline's settings when the file is
    a whole prediction pipeline rather than the network."""
    cfg = _config_dict(info.config)
    params, nbytes = info.parameter_summary(network)
    spatial = len(cfg["patch_size"])
    axes = ", ".join("XYZ"[i] if spatial == 3 else "XY"[i] for i in range(spatial))
    if pipeline is None:
        input_layout = ("N, C, " + axes + " (float32, preprocessed as the plans say: transpose_forward, "
                        "resampling to spacing, normalization_schemes)")
        output_layout = "N, num_output_channels, same spatial size: logits " + (
            "(sigmoid per region, regions_class_order)" if cfg.get("has_regions") else "(softmax/argmax over labels)")
    else:
        volume = "X, Y, Z" if spatial == 3 else "slices, X, Y"
        input_layout = f"C, {volume}: one preprocessed volume (float32), as predict_logits_from_preprocessed_data takes it"
        output_layout = f"num_output_channels, {volume}: fp16 logits of the fold ensemble, as nnUNetPredictor returns them"
    document = {
        "format": "nnunet_export",
        "format_version": METADATA_FORMAT_VERSION,
        "file_format": file_format,
        "export_method": method,
        "nnunet_export_version": _core.__version__,
        "torch_version": torch.__version__,
        "dataset_name": cfg.get("dataset_name"),
        "plans_name": cfg.get("plans_name"),
        "configuration": cfg.get("configuration"),
        "trainer_name": info.trainer_name,
        "folds": [f if isinstance(f, str) else int(f) for f in info.folds],
        "checkpoint_name": info.checkpoint_name,
        "weights_sha256": {str(f): h for f, h in zip(info.folds, info.weights_sha256)},
        "ensemble": "mean of fold logits" if len(info.folds) > 1 else None,
        "parameters": params,
        "weight_bytes": nbytes,
        "input_layout": input_layout,
        "output_layout": output_layout,
        "mirroring_axes": list(info.mirroring_axes) if info.mirroring_axes is not None else None,
        "model_config": cfg,
    }
    if pipeline is not None:
        document["pipeline"] = pipeline
    return document


def metadata_json(metadata: dict) -> bytes:
    """The metadata document as JSON bytes, produced by the C core's cJSON writer."""
    return _core.metadata_to_json(metadata)


def read_metadata(path: Union[str, os.PathLike]) -> dict:
    """Read the metadata of a file written by ``to_torchscript``, ``to_exported_program`` or
    ``to_onnx`` (a ``.onnx`` file).

    Reads only the metadata entry of the file's ZIP container (or the ``metadata_props`` of an
    ONNX model, without the onnx package): the model is not loaded and nothing in the file is
    unpickled.

    Raises:
        MetadataError: the file is missing, not a ZIP archive (not an ONNX model), or has no
            nnunet_export metadata.

    Example:
        >>> meta = nnunet_export.read_metadata("model.pt")  # doctest: +SKIP
        >>> meta["configuration"], meta["folds"]  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise MetadataError(f"{str(path)!r} does not exist or is not a file")
    if path.suffix.lower() == ".onnx":
        return _parse_document(path, _onnx_metadata(path))
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("/extra/" + METADATA_NAME)]
            if len(names) != 1:
                raise MetadataError(
                    f"{str(path)!r} holds no nnunet_export metadata (extra/{METADATA_NAME}): "
                    "it was not written by nnunet_export"
                )
            raw = archive.read(names[0])
    except zipfile.BadZipFile as err:
        raise MetadataError(f"{str(path)!r} is not a TorchScript or .pt2 archive: {err}") from None
    return _parse_document(path, raw)


def _parse_document(path: Path, raw: bytes) -> dict:
    try:
        document = json.loads(raw)
    except ValueError as err:
        raise MetadataError(f"{str(path)!r}: metadata is not valid JSON: {err}") from None
    if not isinstance(document, dict) or document.get("format") != "nnunet_export":
        raise MetadataError(f"{str(path)!r}: metadata is not an nnunet_export document")
    return document


# ONNX files are protobuf ModelProto messages; metadata_props is field 14 (StringStringEntryProto:
# key = 1, value = 2). Walking the top-level fields and seeking past the others (the graph with
# its weights) reads the document without the onnx package and without loading the model.
_ONNX_METADATA_FIELD = 14
kNotOnnxError = "{path!r} is not an ONNX model: {reason}"
kNoOnnxMetadataError = (
    "{path!r} holds no nnunet_export metadata (metadata_props key {key!r}): it was not written by nnunet_export"
)


def _varint(handle) -> int | None:
    value, shift = 0, 0
    while True:
        byte = handle.read(1)
        if not byte:
            if shift == 0:
                return None
            raise ValueError("truncated varint")
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _fields(handle, end: int):
    """(field number, bytes or None) of each field up to ``end``; length-delimited fields other
    than metadata_props are skipped unread."""
    while handle.tell() < end:
        tag = _varint(handle)
        if tag is None:
            return
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            _varint(handle)
        elif wire == 1 or wire == 5:
            handle.seek(8 if wire == 1 else 4, os.SEEK_CUR)
        elif wire == 2:
            length = _varint(handle)
            if length is None or handle.tell() + length > end:
                raise ValueError(f"field {number} runs past the end of the file")
            if number == _ONNX_METADATA_FIELD:
                yield number, handle.read(length)
            else:
                handle.seek(length, os.SEEK_CUR)
        else:
            raise ValueError(f"field {number} has wire type {wire}")


def _entry(raw: bytes) -> dict[int, bytes]:
    handle = io.BytesIO(raw)
    entry = {}
    while handle.tell() < len(raw):
        tag = _varint(handle)
        length = _varint(handle) if tag is not None and tag & 7 == 2 else None
        if length is None:
            raise ValueError("metadata_props entry is not a key/value message")
        entry[tag >> 3] = handle.read(length)
    return entry


def _onnx_metadata(path: Path) -> bytes:
    end = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            for _, raw in _fields(handle, end):
                entry = _entry(raw)
                if entry.get(1) == METADATA_NAME.encode():
                    return entry.get(2, b"")
    except ValueError as err:
        raise MetadataError(kNotOnnxError.format(path=str(path), reason=err)) from None
    raise MetadataError(kNoOnnxMetadataError.format(path=str(path), key=METADATA_NAME))
