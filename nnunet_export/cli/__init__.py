"""nnunet-export: export trained nnU-Net models, in nnU-Net's own command-line vocabulary.

    nnunet-export export -d 1 -c 3d_fullres -f 0 1 2 3 4 -o model.pt
    nnunet-export -d 1 -c 3d_fullres -f 0 -o model.pt        (bare form: the same as 'export')
    nnunet-export export -m RESULTS/Dataset001_X/nnUNetTrainer__nnUNetPlans__2d -f all -o model.pt2
    nnunet-export inspect PATH      (a model folder, a checkpoint, or an exported file)
    nnunet-export verify model.pt -m MODEL_FOLDER   (weights and predictions against the model)
    nnunet-export triton -m MODEL_FOLDER -o REPOSITORY [--onnx]   (a Triton model repository)
    nnunet-export predict -i IMAGES -o OUTPUT -m model.pt   (image files in, nnUNetv2_predict's files out)

One module per subcommand (``export.py``, ``inspect.py``, ``predict.py``, ``triton.py``, ``verify.py``), each with ``add_parser(subparsers)``
and ``run(args) -> int``; a new subcommand is one more module listed in ``COMMANDS``.

Exit codes: 0 success, 1 failure (one-line message; --verbose adds the traceback), 2 usage error.
"""
from __future__ import annotations

import argparse
import sys
import traceback
from typing import Sequence

from .._core import __version__
from . import export, inspect, predict, triton, verify
from .common import UsageError, one_line

__all__ = ["COMMANDS", "UsageError", "main"]

# name -> module; the first one is what a bare `nnunet-export -d ... -o ...` runs.
COMMANDS = {"export": export, "inspect": inspect, "predict": predict, "triton": triton, "verify": verify}
kDefaultCommand = "export"
kTopLevel = ("-h", "--help", "--version")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and each command's parser by name."""
    parser = argparse.ArgumentParser(
        prog="nnunet-export",
        description="Export trained nnU-Net models to verified TorchScript or torch.export files. "
        "Without a command, the arguments are export's: 'nnunet-export -d 1 -c 3d_fullres -o model.pt'.",
        epilog="'nnunet-export COMMAND --help' describes a command. Exit codes: 0 success, "
        "1 failure, 2 usage error.",
    )
    parser.add_argument("--version", action="version", version=f"nnunet-export {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    return parser, {name: module.add_parser(commands) for name, module in COMMANDS.items()}


class _ParserExit(Exception):
    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def _parse(argv: list[str]) -> argparse.Namespace:
    # The bare form starts with an option; a word that is no command is left to argparse, which
    # names the commands ("invalid choice"), rather than read as export's stray argument.
    if argv and argv[0].startswith("-") and argv[0] not in kTopLevel:
        argv = [kDefaultCommand, *argv]
    parser, command_parsers = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # reported by the command's parser, so that its usage line is shown
            command_parsers[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
        return args
    except SystemExit as exit_:  # argparse: usage errors exit 2, --help and --version exit 0
        raise _ParserExit(int(exit_.code or 0)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``nnunet-export`` and ``python -m nnunet_export``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    try:
        args = _parse(argv)
        return COMMANDS[args.command].run(args)
    except _ParserExit as exit_:
        return exit_.code
    except UsageError as err:
        print(f"nnunet-export: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nnunet-export: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every failure is one line unless --verbose
        if verbose:
            traceback.print_exc()
        print(f"nnunet-export: error: {one_line(err)}", file=sys.stderr)
        return 1
