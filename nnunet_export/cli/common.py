"""What every nnunet-export subcommand shares: the usage-error type, progress lines, one-line
errors, and the model-selection arguments in nnU-Net's vocabulary."""
from __future__ import annotations

import argparse
import sys

from ..predict import error_line


class UsageError(Exception):
    """A command-line mistake: exit code 2."""


def progress(line: str) -> None:
    """One progress line on stderr (stdout carries only the command's result)."""
    print(f"[nnunet-export] {line}", file=sys.stderr, flush=True)


def one_line(err: BaseException) -> str:
    """The message printed for a failure (the same line predict reports a failed case with)."""
    return error_line(err)


def add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help="print tracebacks on failure")


def add_model_arguments(parser: argparse.ArgumentParser, *, title: str, model_dest: str, model_help: str,
                        of_what: str = "") -> None:
    """nnUNetv2_predict's model selection: -d/-c/-tr/-p (resolved under $nnUNet_results) or -m,
    then -f and -chk. ``of_what`` qualifies the fold and checkpoint help (" of a model folder")."""
    where = parser.add_argument_group(title)
    where.add_argument("-m", dest=model_dest, help=model_help)
    where.add_argument("-d", dest="dataset", help="dataset name or id, resolved under $nnUNet_results")
    where.add_argument("-c", dest="configuration", help="configuration, e.g. 2d, 3d_fullres")
    where.add_argument("-tr", dest="trainer", default="nnUNetTrainer", help="trainer (default nnUNetTrainer)")
    where.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("-f", dest="folds", nargs="+", default=None,
                        help=f"folds{of_what}, e.g. 0 1 2 3 4 or all (default: detect like nnU-Net)")
    parser.add_argument("-chk", dest="checkpoint", default="checkpoint_final.pth",
                        help=f"checkpoint file name{of_what} (default checkpoint_final.pth)")
