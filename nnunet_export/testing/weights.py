"""assert_weights_match: every weight of an exported file bit for bit against the checkpoints."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
import torch

from ..checkpoint import read_checkpoint
from ..digests import weights_sha256
from ..folds import FoldsArg, checkpoint_file
from ..prefixes import strip_state_dict_prefixes
from .exported import ExportedFile, check_fold_count, open_exported, resolve_folds

kMissingKeyError = "{path}: fold {fold}: weight {key!r} of {checkpoint} is missing from the exported file"
kExtraKeyError = "{path}: fold {fold}: the exported file holds {key!r}, which {checkpoint} does not have"
kLayoutError = ("{path}: fold {fold}: weight {key!r} is {got} in the exported file but {want} in "
                "{checkpoint}")
kValueError = ("{path}: fold {fold}: weight {key!r} differs from {checkpoint}: first at index {index}, "
               "file {got} vs checkpoint {want} ({count} of {total} values differ)")
kDigestMissingError = "{path}: the metadata holds no weights_sha256 for fold {fold} (it has folds {have})"
kDigestError = ("{path}: the metadata's weights_sha256 of fold {fold} is {got}, but the weights of "
                "{checkpoint} hash to {want}")

_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _flat_bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().contiguous().reshape(-1).view(_INT_VIEW[tensor.element_size()])


def _value_text(flat: torch.Tensor, index: int) -> str:
    value = flat[index:index + 1]
    if value.dtype == torch.bfloat16:
        return repr(float(value))
    return str(value.numpy()[0])  # NumPy prints the shortest text that round-trips in the dtype


def _layout(tensor: torch.Tensor) -> str:
    return f"{str(tensor.dtype).replace('torch.', '')} {list(tensor.shape)}"


def _compare_tensor(got: torch.Tensor, want: torch.Tensor, where: dict) -> None:
    if got.dtype != want.dtype or got.shape != want.shape:
        raise AssertionError(kLayoutError.format(got=_layout(got), want=_layout(want), **where))
    if got.numel() == 0:
        return
    differ = _flat_bits(got) != _flat_bits(want)
    if not bool(differ.any()):
        return
    first = int(differ.nonzero()[0])
    index = [int(i) for i in np.unravel_index(first, tuple(got.shape))] if got.dim() else []
    flat_got, flat_want = got.detach().cpu().contiguous().reshape(-1), want.detach().contiguous().reshape(-1)
    raise AssertionError(kValueError.format(index=index, got=_value_text(flat_got, first),
                                            want=_value_text(flat_want, first), count=int(differ.sum()),
                                            total=got.numel(), **where))


def _view_of(tensor: torch.Tensor) -> tuple:
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.stride()),
            tuple(tensor.shape), tensor.dtype)


def _compare_fold(file: ExportedFile, exported: dict, checkpoint: dict, fold, source: Path) -> None:
    where = {"path": file.path, "fold": fold, "checkpoint": source}
    for key in exported:
        if key not in checkpoint:
            raise AssertionError(kExtraKeyError.format(key=key, **where))
    # A file may store an alias (dna names encoder weights several times) once; a missing key
    # is fine only when the checkpoint's tensor for it is a view another checked key shares.
    checked = {_view_of(checkpoint[key]) for key in exported}
    for key, want in checkpoint.items():
        if key in exported:
            _compare_tensor(exported[key], want, {**where, "key": key})
        elif _view_of(want) not in checked:
            raise AssertionError(kMissingKeyError.format(key=key, **where))


def assert_weights_match(
    exported: Union[str, os.PathLike],
    model_dir: Union[str, os.PathLike],
    folds: FoldsArg = None,
    checkpoint_name: str = "checkpoint_final.pth",
) -> None:
    """Assert that every weight of an exported file is bit-identical to the model's checkpoints.

    The checkpoints are read with :func:`nnunet_export.read_checkpoint` (nothing in them is
    executed); the file's fold networks are matched to ``folds`` in order (a network export holds
    ``network.`` or ``network.networks.K.`` keys, a pipeline ``networks.K.``). The metadata's
    ``weights_sha256`` must be the checkpoints' digests too. Works with or without pytest.

    Args:
        exported: a file written by nnunet_export (network or pipeline, TorchScript or .pt2).
        model_dir: the ``<Trainer>__<Plans>__<configuration>`` folder (or one ``fold_X`` of it).
        folds: the folds the file must hold, in its order; None: the folds its metadata names.
        checkpoint_name: the checkpoint file of each fold.

    Raises:
        AssertionError: a fold, key, shape or value differs; the message names the fold, the key
            and the first differing element (its index and both values).
        nnunet_export.MetadataError, ModelFolderError, CheckpointError: a file cannot be read.

    Example:
        >>> from nnunet_export.testing import assert_weights_match
        >>> assert_weights_match("model.pt", "nnUNetTrainer__nnUNetPlans__3d_fullres", folds=[0])  # doctest: +SKIP
    """
    file = open_exported(exported)
    folder, chosen = resolve_folds(model_dir, folds, file.metadata)
    networks = file.network_weights()
    check_fold_count(file, len(networks), chosen)
    digests = file.metadata.get("weights_sha256") or {}
    for fold, exported_weights in zip(chosen, networks):
        source = checkpoint_file(folder, fold, checkpoint_name)
        checkpoint = strip_state_dict_prefixes(read_checkpoint(source, ["network_weights"])["network_weights"])
        _compare_fold(file, exported_weights, checkpoint, fold, source)
        if str(fold) not in digests:
            raise AssertionError(kDigestMissingError.format(path=file.path, fold=fold, have=list(digests)))
        want = weights_sha256(checkpoint)
        if digests[str(fold)] != want:
            raise AssertionError(kDigestError.format(path=file.path, fold=fold, got=digests[str(fold)],
                                                     checkpoint=source, want=want))
