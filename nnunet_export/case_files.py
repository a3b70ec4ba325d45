"""Input cases found the way nnU-Net finds them (``create_lists_from_splitted_dataset_folder``):
files ``CASE_XXXX<file_ending>`` in one folder, ``XXXX`` the channel index; cases sorted by name.

Unlike nnU-Net, a case whose channel files do not match the model's channels (one missing, one
too many) is kept with an error, so that a prediction run reports it and goes on with the others.

Example:
    >>> cases = find_cases("imagesTs", ".nii.gz", 2)  # doctest: +SKIP
    >>> cases[0].case_id, cases[0].files, cases[0].error  # doctest: +SKIP
    ('case1', ['imagesTs/case1_0000.nii.gz', 'imagesTs/case1_0001.nii.gz'], None)
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ._core import ExportError

kNoFolderError = "input folder {folder!r} does not exist"
kNoCasesError = "input folder {folder!r} holds no image files named CASE_XXXX{ending} (XXXX: the channel, e.g. _0000)"
kMissingChannelError = "missing channel file{s} {names} (the model takes {count} channel{cs}: {channels})"
kExtraChannelError = "unexpected channel file{s} {names} (the model takes {count} channel{cs}: {channels})"


class CaseFilesError(ExportError):
    """The input folder is missing or holds no case."""


@dataclass
class Case:
    """One case to predict: its id (the output's name without ending), its channel files in channel
    order, and why it cannot be predicted (None when it can)."""

    case_id: str
    files: list
    error: Optional[str] = None


def _channel_text(channel_names: dict) -> str:
    return ", ".join(f"{int(k)} {v!r}" for k, v in sorted(channel_names.items(), key=lambda kv: int(kv[0])))


def find_cases(folder: str | os.PathLike, file_ending: str, channel_names: dict) -> list[Case]:
    """The cases in ``folder``: every ``ID_XXXX<file_ending>`` grouped by ``ID``, sorted by ``ID``;
    ``channel_names`` (dataset.json's, ``{"0": "CT", ...}``) says which channels each case needs.

    Raises:
        CaseFilesError: the folder does not exist or holds no file of that naming.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CaseFilesError(kNoFolderError.format(folder=str(folder)))
    pattern = re.compile(r"(.+)_(\d\d\d\d)" + re.escape(file_ending))
    by_case: dict[str, dict[int, str]] = {}
    for name in sorted(os.listdir(folder)):
        match = pattern.fullmatch(name)
        if match and (folder / name).is_file():
            by_case.setdefault(match.group(1), {})[int(match.group(2))] = str(folder / name)
    if not by_case:
        raise CaseFilesError(kNoCasesError.format(folder=str(folder), ending=file_ending))
    count = len(channel_names)
    return [_case(case_id, channels, file_ending, channel_names, count) for case_id, channels in sorted(by_case.items())]


def _case(case_id: str, channels: dict, file_ending: str, channel_names: dict, count: int) -> Case:
    expected = range(count)
    missing = [c for c in expected if c not in channels]
    extra = sorted(c for c in channels if c >= count)
    files = [channels[c] for c in sorted(channels)]
    for wrong, message in ((missing, kMissingChannelError), (extra, kExtraChannelError)):
        if wrong:
            names = ", ".join(f"{case_id}_{c:04d}{file_ending}" for c in wrong)
            return Case(case_id, files, message.format(s="s" if len(wrong) > 1 else "", names=names, count=count,
                                                       cs="s" if count > 1 else "",
                                                       channels=_channel_text(channel_names)))
    return Case(case_id, files)


def cases_from_lists(lists: list, file_ending: str) -> list[Case]:
    """Cases from nnU-Net's list of lists of files (one list per case, channels in order): the id is
    the first file's name without ``_XXXX<file_ending>``, as nnU-Net names the outputs."""
    cases = []
    for files in lists:
        files = [str(f) for f in files]
        name = os.path.basename(files[0]) if files else ""
        cut = len(file_ending) + 5
        case_id = name[:-cut] if name.endswith(file_ending) and len(name) > cut else Path(name).name.split(".")[0]
        cases.append(Case(case_id or "case", files, None if files else "no image files given"))
    return cases


def output_files(output_dir: str | os.PathLike, case_id: str, file_ending: str) -> dict:
    """The files nnU-Net writes for a case: the segmentation, and with probabilities .npz and .pkl."""
    base = Path(output_dir) / case_id
    return {"segmentation": Path(f"{base}{file_ending}"), "npz": Path(f"{base}.npz"), "pkl": Path(f"{base}.pkl")}


__all__ = ["Case", "CaseFilesError", "cases_from_lists", "find_cases", "output_files"]
