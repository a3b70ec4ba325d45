"""load_complete: every requested fold's weights read at call time, checked, and loaded into
one ready-to-export module. Nothing is deferred to a later call."""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import torch

from ._core import CheckpointError, ExportError, ThreadGuard
from .architectures import EnsembleModule, load_weights, prepare_for_inference
from .architectures.build import NATIVE_BUILDER, build_for_checkpoint
from .architectures.clone import clone_with_weights
from .checkpoint import read_checkpoint
from .digests import FoldDigests
from .folds import (
    Fold,
    FoldsArg,
    ModelFolderError,
    checkpoint_file,
    detect_folds,
    normalize_folds,
    resolve_model_dir,
)
from .model import ModelInfo, NnUNetModel
from .model_config import read_model_config
from .prefixes import strip_state_dict_prefixes

# <Trainer>__<Plans>__<configuration>, as nnU-Net names its output folders.
_MODEL_DIR_NAME = re.compile(r"^(?P<trainer>.+?)__(?P<plans>.+?)__(?P<configuration>.+)$")


class FoldMismatchError(ExportError):
    """The folds of one model folder disagree (trainer, configuration, keys or shapes)."""


@dataclass(frozen=True)
class FoldWeights:
    fold: Fold
    path: Path
    trainer_name: str
    configuration: str
    mirroring_axes: tuple[int, ...] | None
    state_dict: dict[str, torch.Tensor]


def _read_fold(model_dir: Path, fold: Fold, checkpoint_name: str, copy: bool, verify_crc: bool) -> FoldWeights:
    path = checkpoint_file(model_dir, fold, checkpoint_name)
    # Default keys: init_args without its plans copy; files older than the mirroring entry are
    # read too (nnU-Net treats a missing inference_allowed_mirroring_axes as no mirroring).
    content = read_checkpoint(path, copy=copy, verify_crc=verify_crc)
    init_args = content.get("init_args") or {}
    trained_fold = init_args.get("fold")
    if trained_fold is not None and str(trained_fold) != str(fold):
        raise FoldMismatchError(
            f"{path} lies in fold_{fold} but was trained as fold {trained_fold!r}: "
            "a checkpoint was copied into the wrong fold folder"
        )
    configuration = init_args.get("configuration")
    if not isinstance(configuration, str):
        raise CheckpointError(f"{path}: init_args['configuration'] is missing or not a str")
    trainer_name = content.get("trainer_name")
    if not isinstance(trainer_name, str):
        raise CheckpointError(f"{path}: 'trainer_name' is missing or not a str")
    axes = content.get("inference_allowed_mirroring_axes")
    state_dict = strip_state_dict_prefixes(content["network_weights"])
    return FoldWeights(
        fold=fold,
        path=path,
        trainer_name=trainer_name,
        configuration=configuration,
        mirroring_axes=tuple(int(a) for a in axes) if axes is not None else None,
        state_dict=state_dict,
    )


def _check_folds_agree(folds: Sequence[FoldWeights]) -> None:
    first = folds[0]
    for other in folds[1:]:
        for what in ("trainer_name", "configuration", "mirroring_axes"):
            if getattr(other, what) != getattr(first, what):
                raise FoldMismatchError(
                    f"fold {other.fold} has {what} {getattr(other, what)!r} but fold {first.fold} "
                    f"has {getattr(first, what)!r} ({other.path} vs {first.path})"
                )
        shapes = {k: (tuple(v.shape), v.dtype) for k, v in first.state_dict.items()}
        other_shapes = {k: (tuple(v.shape), v.dtype) for k, v in other.state_dict.items()}
        if shapes != other_shapes:
            differing = sorted(set(shapes) ^ set(other_shapes)) or sorted(
                k for k in shapes if shapes[k] != other_shapes[k])
            raise FoldMismatchError(
                f"fold {other.fold} ({other.path}) holds different weights than fold {first.fold}: "
                f"{len(differing)} keys differ in name, shape or dtype, e.g. {differing[:5]}"
            )


def _check_folder_name(model_dir: Path, fold: FoldWeights) -> None:
    match = _MODEL_DIR_NAME.match(model_dir.name)
    if match is None:
        return  # a renamed folder is fine; the checkpoint and plans are authoritative
    if match["configuration"] != fold.configuration:
        raise FoldMismatchError(
            f"{fold.path} was trained with configuration {fold.configuration!r} but lies in "
            f"{model_dir.name!r} (configuration {match['configuration']!r})"
        )
    if match["trainer"] != fold.trainer_name:
        raise FoldMismatchError(
            f"{fold.path} was trained by {fold.trainer_name!r} but lies in {model_dir.name!r} "
            f"(trainer {match['trainer']!r})"
        )


def _eval_outside(module: torch.nn.Module, skip: set[int]) -> None:
    """Sets eval mode on `module` and its submodules, except below modules whose id is in `skip`."""
    module.training = False
    for child in module.children():
        if id(child) not in skip:
            _eval_outside(child, skip)


def load_complete(
    model_dir: Union[str, os.PathLike],
    folds: FoldsArg = None,
    checkpoint_name: str = "checkpoint_final.pth",
    device: Union[str, torch.device] = "cpu",
    *,
    configuration: str | None = None,
    num_threads: int | None = None,
    progress: Callable[[str], Any] | None = None,
    copy: bool = True,
    verify_crc: bool = True,
) -> NnUNetModel:
    """Load a trained nnU-Net model folder into one complete, ready-to-export module.

    Every requested fold's ``network_weights`` is read at call time through the safe C reader
    (nothing in the checkpoint is executed, the optimizer state is never read), all folds are
    checked against each other and against the plans, and the network is filled strictly.
    torch's thread count, cudnn.benchmark, grad mode and default dtype are the same after the
    call as before it, also when it raises.

    Args:
        model_dir: a ``<Trainer>__<Plans>__<configuration>`` folder, or one of its ``fold_X``.
        folds: None (detect ``fold_N`` folders holding the checkpoint, like nnU-Net; never
            ``fold_all``), an int, ``"all"``, or a sequence of those.
        checkpoint_name: ``checkpoint_final.pth`` or ``checkpoint_best.pth`` (or any file name).
        device: where the returned module lives.
        configuration: if given, must match the configuration the checkpoints were trained with.
        num_threads: bounds torch's intra-op threads during the call (restored afterwards).
        progress: called with one line per step (e.g. ``print``) for long loads.
        copy: copy the weights out of the checkpoint files (default). The model then outlives
            its files whatever happens to them; nnU-Net's training rewrites checkpoint_best.pth
            in place (``torch.save`` onto the same path). ``copy=False`` keeps the weights in
            private (copy-on-write) mappings of the files instead: faster and no second copy
            in memory, but a checkpoint truncated or rewritten in place while the model lives
            crashes the process (SIGBUS) or changes its weights. Use it only for files nothing
            writes to, e.g. a finished model's checkpoint_final.pth.
        verify_crc: check the CRC-32 of every weight byte read (default). Off, a corrupt file
            is only caught when its structure is broken, as with ``torch.load``.

    Returns:
        An :class:`nnunet_export.model.NnUNetModel` in eval mode, deep supervision off,
        ``requires_grad=False``, on ``device``. Several folds give one module averaging the
        folds' logits as nnU-Net does.

    Raises:
        ModelFolderError, CheckpointError, UnsafeCheckpointError, PlansError,
        FoldMismatchError, WeightsMismatchError (all ``ExportError``).

    Example:
        >>> import nnunet_export
        >>> model = nnunet_export.load_complete("Dataset001_X/nnUNetTrainer__nnUNetPlans__2d",
        ...                                     folds=0)  # doctest: +SKIP
        >>> model.to_torchscript("model.pt")  # doctest: +SKIP
    """
    with ThreadGuard(num_threads):
        with torch.no_grad():
            return _load_complete(model_dir, folds, checkpoint_name, device, configuration, progress,
                                  bool(copy), bool(verify_crc))


def _load_complete(model_dir, folds, checkpoint_name, device, configuration, progress, copy,
                   verify_crc) -> NnUNetModel:
    say = progress or (lambda line: None)
    started = time.perf_counter()
    model_dir, fold_from_path = resolve_model_dir(model_dir)
    requested = normalize_folds(folds)
    if fold_from_path is not None and requested is not None and requested != (fold_from_path,):
        raise ModelFolderError(
            f"{str(model_dir / f'fold_{fold_from_path}')!r} names fold {fold_from_path!r} but folds="
            f"{folds!r} was given: pass the model folder to choose other folds"
        )
    if requested is None:
        requested = (fold_from_path,) if fold_from_path is not None else detect_folds(model_dir, checkpoint_name)
    device = torch.device(device)

    fold_weights: list[FoldWeights] = []
    for index, fold in enumerate(requested):
        fold_weights.append(_read_fold(model_dir, fold, checkpoint_name, copy, verify_crc))
        say(f"read fold {fold} ({index + 1}/{len(requested)}): {fold_weights[-1].path}")
    _check_folds_agree(fold_weights)
    first = fold_weights[0]
    _check_folder_name(model_dir, first)
    if configuration is not None and configuration != first.configuration:
        raise FoldMismatchError(
            f"configuration {configuration!r} was requested but {first.path} was trained with "
            f"{first.configuration!r}"
        )
    config = read_model_config(model_dir, first.configuration)

    built = build_for_checkpoint(config, first.trainer_name, first.state_dict, model_dir)
    # Adopts the checkpoint's tensors without another copy.
    load_weights(built.network, first.state_dict, strict=True, source=str(first.path))
    networks = [prepare_for_inference(built.network)]
    for fw in fold_weights[1:]:
        # The folds agree on every key, shape and dtype (checked above): the package's own
        # architectures copy fold 0's module tree; other builders build each fold.
        if built.builder == NATIVE_BUILDER:
            networks.append(clone_with_weights(networks[0], fw.state_dict, source=str(fw.path)))
        else:
            network = build_for_checkpoint(config, first.trainer_name, fw.state_dict, model_dir).network
            networks.append(prepare_for_inference(load_weights(network, fw.state_dict, strict=True,
                                                               source=str(fw.path))))
    if device.type != "cpu":  # the reader's tensors are always on the CPU
        networks = [network.to(device) for network in networks]
    if progress is not None:
        for fw, network in zip(fold_weights, networks):
            say(f"built fold {fw.fold}: {sum(p.numel() for p in network.parameters()):,} parameters")
    network = networks[0] if len(networks) == 1 else EnsembleModule(networks)
    info = ModelInfo(
        model_dir=str(model_dir),
        config=config,
        folds=tuple(fw.fold for fw in fold_weights),
        checkpoint_name=checkpoint_name,
        checkpoint_paths=tuple(str(fw.path) for fw in fold_weights),
        trainer_name=first.trainer_name,
        mirroring_axes=first.mirroring_axes,
        weights_sha256=FoldDigests([fw.state_dict for fw in fold_weights], torch.get_num_threads()),
        scriptable=built.scriptable,
        not_scriptable_reason=built.not_scriptable_reason,
        builder=built.builder,
        weights_mapped=not copy and device.type == "cpu",
    )
    if device.type != "cpu":
        # The digests would keep the CPU copies of the weights alive until first use.
        tuple(info.weights_sha256)
    model = NnUNetModel(network, info)
    # Every fold network is already in eval mode without gradients (prepare_for_inference, or
    # cloned from one that is); only the new wrappers start in training mode, and walking all
    # the folds' modules again costs milliseconds per fold.
    _eval_outside(model, {id(n) for n in networks})
    say(f"loaded {len(networks)} fold(s) in {time.perf_counter() - started:.2f} s")
    return model
