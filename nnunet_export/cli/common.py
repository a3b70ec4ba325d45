"""What every nnunet-export subcommand shares: the usage-error type, progress lines, one-line errors."""
from __future__ import annotations

import argparse
import sys

from .._core import ExportError


class UsageError(Exception):
    """A command-line mistake: exit code 2."""


def progress(line: str) -> None:
    """One progress line on stderr (stdout carries only the command's result)."""
    print(f"[nnunet-export] {line}", file=sys.stderr, flush=True)


def one_line(err: BaseException) -> str:
    """The message printed for a failure: ExportError/OSError text alone, others with their type."""
    text = str(err).strip().splitlines()
    message = text[0] if text else ""
    if isinstance(err, (ExportError, OSError)):
        return message or type(err).__name__
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


def add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help="print tracebacks on failure")
