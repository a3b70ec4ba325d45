"""Model folders and folds, resolved the way nnU-Net resolves them. The one place that decides
what a model folder is: every reader of plans, dataset.json or checkpoints goes through here."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence, Union

from ._core import ExportError

Fold = Union[int, str]
FoldsArg = Union[None, int, str, Sequence[Union[int, str]]]

_FOLD_DIR = re.compile(r"^fold_(\d+|all)$")


class ModelFolderError(ExportError):
    """The model folder, fold or checkpoint requested does not exist or is not an nnU-Net folder."""


def resolve_model_dir(model_dir: Union[str, os.PathLike]) -> tuple[Path, Fold | None]:
    """Returns (the ``<Trainer>__<Plans>__<configuration>`` folder, the fold named by the path).

    A ``fold_X`` folder is accepted too: its parent is the model folder and X the fold.
    """
    path = Path(model_dir).expanduser()
    if not path.exists():
        raise ModelFolderError(f"model folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise ModelFolderError(f"model folder {str(path)!r} is not a directory")
    match = _FOLD_DIR.match(path.name)
    if match and not (path / "plans.json").is_file() and (path.parent / "plans.json").is_file():
        return path.parent, _parse_fold_name(match.group(1))
    if not (path / "plans.json").is_file():
        raise ModelFolderError(
            f"{str(path)!r} is not an nnU-Net model folder: it has no plans.json "
            "(expected <Trainer>__<Plans>__<configuration>/ with plans.json, dataset.json and fold_X/)"
        )
    return path, None


def fold_folders(model_dir: Path) -> list[Path]:
    """The ``fold_X`` folders of a model folder (``fold_all`` included), sorted by name."""
    return sorted(entry for entry in model_dir.iterdir() if _FOLD_DIR.match(entry.name) and entry.is_dir())


def _parse_fold_name(text: str) -> Fold:
    return "all" if text == "all" else int(text)


def normalize_folds(folds: FoldsArg) -> tuple[Fold, ...] | None:
    """Turns the ``folds`` argument into a tuple of folds (None means: detect them).

    Accepts None, an int, ``"all"``, a digit string, or a sequence of those, as nnU-Net's
    ``-f 0 1 2`` / ``use_folds`` does.
    """
    if folds is None:
        return None
    items = [folds] if isinstance(folds, (int, str)) else list(folds)
    if not items:
        raise ModelFolderError("folds is empty: give None to detect them, or e.g. [0, 1, 2, 3, 4]")
    result: list[Fold] = []
    for item in items:
        if isinstance(item, bool):
            raise ModelFolderError(f"fold {item!r} is not a fold: use an int or 'all'")
        if isinstance(item, int):
            if item < 0:
                raise ModelFolderError(f"fold {item} is negative")
            fold: Fold = item
        elif isinstance(item, str) and (item == "all" or item.isdigit()):
            fold = _parse_fold_name(item)
        else:
            raise ModelFolderError(f"fold {item!r} is not a fold: use an int or 'all'")
        if fold in result:
            raise ModelFolderError(f"fold {fold!r} is listed twice")
        result.append(fold)
    return tuple(result)


def detect_folds(model_dir: Path, checkpoint_name: str) -> tuple[Fold, ...]:
    """Lists ``fold_N`` folders holding ``checkpoint_name``, like nnU-Net (never ``fold_all``)."""
    found = []
    for entry in model_dir.iterdir():
        match = _FOLD_DIR.match(entry.name)
        if match and match.group(1) != "all" and (entry / checkpoint_name).is_file():
            found.append(int(match.group(1)))
    if not found:
        raise ModelFolderError(
            f"no fold_N folder with {checkpoint_name!r} in {str(model_dir)!r}: "
            "pass folds= explicitly (e.g. folds='all') or check checkpoint_name"
        )
    return tuple(sorted(found))


def checkpoint_file(model_dir: Path, fold: Fold, checkpoint_name: str) -> Path:
    """Path of a fold's checkpoint, with a clear error when it is missing."""
    if not checkpoint_name or os.sep in checkpoint_name or checkpoint_name in (".", ".."):
        raise ModelFolderError(f"checkpoint_name {checkpoint_name!r} must be a plain file name")
    path = model_dir / f"fold_{fold}" / checkpoint_name
    if not path.is_file():
        available = sorted(p.name for p in (model_dir / f"fold_{fold}").glob("*.pth")) if (
            model_dir / f"fold_{fold}").is_dir() else []
        hint = f"; that fold has {available}" if available else "; that fold folder does not exist"
        raise ModelFolderError(f"checkpoint {str(path)!r} does not exist{hint}")
    return path
