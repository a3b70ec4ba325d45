"""Files are replaced atomically: written next to the target, fsynced, then renamed."""
from __future__ import annotations

import contextlib
import os
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


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yields a temporary path in ``path``'s folder; on success it is fsynced and renamed onto
    ``path``. On any exception the temporary file is removed and ``path`` is left untouched."""
    check_output_path(path)
    # The temporary keeps the target's extension: torch.export refuses archives not named .pt2.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
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
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
