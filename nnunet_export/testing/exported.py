"""An exported file opened for checking: its metadata, the loaded module, and its weights split
into one state dict per fold network, keyed as the checkpoints key them."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import torch

from ..export_writer import _FORMATS, quiet_torchscript
from ..folds import Fold, FoldsArg, normalize_folds, resolve_model_dir
from ..metadata import read_metadata

# Network exports hold NnUNetModel's keys: "network." + dna's key (one fold) or
# "network.networks.K." + dna's key (an ensemble); pipelines hold "networks.K." + dna's key.
_NETWORK_KEY = re.compile(r"^network\.(?:networks\.(?P<index>\d+)\.)?(?P<key>.+)$")
_PIPELINE_KEY = re.compile(r"^networks\.(?P<index>\d+)\.(?P<key>.+)$")
# Pipeline buffers that are no checkpoint weight (computed from the patch size at build time).
_PIPELINE_OWN = ("gaussian",)

kUnknownKeyError = "{path}: the exported file holds {key!r}, which belongs to no fold network"
kFoldCountError = "{path}: the exported file holds {networks} fold network(s) but {count} fold(s) were given ({folds})"


@dataclass
class ExportedFile:
    """A file written by nnunet_export, loaded on the CPU."""

    path: Path
    metadata: dict
    module: Any  # the loaded TorchScript module (or a torch.export program's module)
    state_dict: dict

    @property
    def is_pipeline(self) -> bool:
        return "pipeline" in self.metadata

    def network_weights(self) -> list[dict[str, torch.Tensor]]:
        """One dict per fold network, in the file's fold order, keyed like the checkpoints."""
        pattern = _PIPELINE_KEY if self.is_pipeline else _NETWORK_KEY
        networks: dict[int, dict[str, torch.Tensor]] = {}
        for key, tensor in self.state_dict.items():
            if self.is_pipeline and key in _PIPELINE_OWN:
                continue
            match = pattern.match(key)
            if match is None:
                raise AssertionError(kUnknownKeyError.format(path=self.path, key=key))
            networks.setdefault(int(match["index"] or 0), {})[match["key"]] = tensor
        return [networks[index] for index in sorted(networks)]

    def predict(self, data: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.module.predict_logits(data) if self.is_pipeline else self.module(data)


def open_exported(exported: Union[str, os.PathLike]) -> ExportedFile:
    """Reads the metadata (MetadataError if there is none) and loads the file on the CPU."""
    path = Path(exported)
    metadata = read_metadata(path)
    fmt = _FORMATS[metadata.get("file_format", "torchscript")]
    with quiet_torchscript():
        module, state_dict = fmt.load(path, torch.device("cpu"))
    return ExportedFile(path=path, metadata=metadata, module=module, state_dict=dict(state_dict))


def resolve_folds(model_dir: Union[str, os.PathLike], folds: FoldsArg, metadata: dict) -> tuple[Path, tuple[Fold, ...]]:
    """(model folder, folds to compare with): the given folds, else the fold a ``fold_X`` path
    names, else the folds the file's metadata names."""
    folder, fold_from_path = resolve_model_dir(model_dir)
    chosen = normalize_folds(folds)
    if chosen is None:
        chosen = (fold_from_path,) if fold_from_path is not None else normalize_folds(metadata.get("folds"))
    return folder, tuple(chosen)


def check_fold_count(file: ExportedFile, networks: int, folds: tuple) -> None:
    if networks != len(folds):
        raise AssertionError(kFoldCountError.format(path=file.path, networks=networks, count=len(folds),
                                                    folds=", ".join(map(str, folds))))
