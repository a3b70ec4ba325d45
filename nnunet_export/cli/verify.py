"""nnunet-export verify EXPORTED -m MODEL_DIR: the checks of nnunet_export.testing from the
command line, one table row per check; exit 0 when all pass, 1 when one fails, 2 on usage errors.

    nnunet-export verify model.pt -m RESULTS/Dataset001_X/nnUNetTrainer__nnUNetPlans__3d_fullres -f 0 1 2 3 4
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ..testing import assert_matches_nnunet, assert_weights_match
from .common import UsageError, add_verbose, progress

HELP = "check an exported file against the trained model: weights bit for bit, predictions against nnU-Net"
kNoExportError = "{path!r} does not exist or is not a file"
kImageKindError = ("-i {path!r}: images must be preprocessed volumes saved as .npy; reading image files "
                   "with their spacing is not supported yet")
kImageMissingError = "-i {path!r} does not exist or is not a file"


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("verify", help=HELP, description=HELP[0].upper() + HELP[1:] + ".",
                                 epilog="Exit codes: 0 every check passed, 1 a check failed, 2 usage error.")
    parser.add_argument("exported", help="the file written by nnunet-export (network or pipeline)")
    parser.add_argument("-m", dest="model_folder", required=True,
                        help="the <Trainer>__<Plans>__<configuration> folder it was exported from")
    parser.add_argument("-i", dest="images", nargs="+", default=None, metavar="NPY",
                        help="preprocessed volumes (.npy) to predict (default: generated inputs)")
    parser.add_argument("-f", dest="folds", nargs="+", default=None,
                        help="the folds the file holds (default: the folds its metadata names)")
    parser.add_argument("-chk", dest="checkpoint", default="checkpoint_final.pth",
                        help="checkpoint file name (default checkpoint_final.pth)")
    parser.add_argument("-step_size", dest="step_size", type=float, default=0.5,
                        help="nnU-Net's tile step size for the comparison (default 0.5)")
    parser.add_argument("--disable_tta", action="store_true", help="compare with nnU-Net without mirroring")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="accept predictions within this max |difference| (default: bit for bit)")
    parser.add_argument("--weights-only", action="store_true", help="skip the comparison with nnU-Net")
    add_verbose(parser)
    return parser


def _images(paths):
    if paths is None:
        return None
    volumes = []
    for name in paths:
        path = Path(name)
        if path.suffix != ".npy":
            raise UsageError(kImageKindError.format(path=name))
        if not path.is_file():
            raise UsageError(kImageMissingError.format(path=name))
        volumes.append(np.load(path, allow_pickle=False))
    return volumes


def run(args: argparse.Namespace) -> int:
    if not Path(args.exported).is_file():
        raise UsageError(kNoExportError.format(path=args.exported))
    images = _images(args.images)
    common = {"folds": args.folds, "checkpoint_name": args.checkpoint}
    checks = [("weights match the checkpoints", lambda: assert_weights_match(args.exported, args.model_folder, **common))]
    if not args.weights_only:
        checks.append(("predictions match nnU-Net", lambda: assert_matches_nnunet(
            args.exported, args.model_folder, images, exact=args.tolerance is None, tolerance=args.tolerance,
            tile_step_size=args.step_size, use_mirroring=not args.disable_tta, **common)))
    rows, failures = [], []
    for name, check in checks:
        progress(f"checking: {name}")
        started = time.perf_counter()
        try:
            check()
            result = "pass"
        except (AssertionError, ImportError) as err:
            result = "FAIL"
            failures.append(f"{name}: {err}")
        rows.append((name, result, f"{time.perf_counter() - started:.1f} s"))
    width = max(len(name) for name, _, _ in rows)
    print(f"{'check':<{width}}  result  time")
    for name, result, seconds in rows:
        print(f"{name:<{width}}  {result:<6}  {seconds}")
    for failure in failures:
        print(f"\n{failure}")
    return 1 if failures else 0
