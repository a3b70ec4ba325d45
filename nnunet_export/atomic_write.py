"""Files are replaced atomically: written next to the target, fsynced, then renamed."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from ._core import ExportError


class OutputPathError(ExportError):
    """The output path cannot be written (missing folder, not writable, is a directory)."""


def check_output_path(path: Path) -> None:
    """Raises OutputPathError before any work is done when ``path`` cannot be written."""
    folder = path.parent
    if path.is_dir():
        raise OutputPathError(f"output path {str(path)!r} is a directory; give a file name")
    if not folder.is_dir():
        raise OutputPathError(f"output folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(f"output folder {str(folder)!r} is not writable")
    # os.access says yes to root everywhere (read-only mounts, /sys): only creating a file
    # proves the folder takes one, and it must fail here, before minutes of export work.
    fd, probe = _make_temporary(path, ".probe")
    os.close(fd)
    os.unlink(probe)


def _make_temporary(path: Path, suffix: str) -> tuple[int, str]:
    """mkstemp next to ``path``; raises OutputPathError (not a bare OSError) when it cannot."""
    try:
        return tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    except OSError as err:
        raise OutputPathError(f"output folder {str(path.parent)!r} is not writable: {err.strerror}") from None


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yields a temporary path for ``path``; on success it is fsynced and renamed onto ``path``.
    On any exception the temporary is removed and ``path`` is left untouched.

    The temporary file has the target's own name inside a hidden folder next to it: torch.jit
    and torch.export name the archive's top folder after the file (and torch.export refuses
    names not ending in .pt2), so the finished file is the same as one written in place.
    """
    check_output_path(path)
    try:
        folder = Path(tempfile.mkdtemp(prefix=f".{path.stem}.", suffix=".partial", dir=path.parent))
    except OSError as err:
        raise OutputPathError(f"output folder {str(path.parent)!r} is not writable: {err.strerror}") from None
    tmp = folder / path.name
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
