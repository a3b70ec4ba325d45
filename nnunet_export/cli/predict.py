"""nnunet-export predict: image files in, the files nnUNetv2_predict writes out.

    nnunet-export predict -i imagesTs -o predictions -m model.pt
    nnunet-export predict -i imagesTs -o predictions -d 1 -c 3d_fullres -f 0 1 2 3 4
    nnunet-export predict -i imagesTs -o predictions -m RESULTS/Dataset001_X/nnUNetTrainer__nnUNetPlans__2d -f all

Exit codes: 0 every case predicted (or skipped), 1 some case failed (each has an error line, the
others are written), 2 usage error.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..predict import predict
from .common import UsageError, add_model_arguments, add_verbose, progress
from .export import resolve_model_folder

HELP = "predict a folder of images (nnU-Net's naming) with an exported pipeline file or a model folder"
kFailedCases = "{failed} of {total} cases failed (see the error lines above)"


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("predict", help=HELP, description=HELP[0].upper() + HELP[1:] + ".")
    parser.add_argument("-i", dest="input", required=True, help="input folder: CASE_XXXX<file_ending> files")
    parser.add_argument("-o", dest="output", required=True, help="output folder (created if missing)")
    add_model_arguments(parser, title="model (an exported pipeline file, or a model folder like nnUNetv2_predict)",
                        model_dest="model", model_help="an exported pipeline file (.pt) or a model folder",
                        of_what=" of a model folder")
    parser.add_argument("-step_size", dest="step_size", type=float, default=None,
                        help="sliding-window step as a fraction of the patch (default 0.5; an exported file has its own)")
    parser.add_argument("--disable_tta", action="store_true", help="no mirroring (test-time augmentation)")
    parser.add_argument("--save_probabilities", action="store_true",
                        help="also write CASE.npz (probabilities) and CASE.pkl (properties), as nnU-Net does")
    parser.add_argument("--continue_prediction", action="store_true",
                        help="skip cases whose output files exist")
    parser.add_argument("-device", dest="device", default="cpu", help="cpu (the pipeline runs on the CPU for now)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or per-case lines")
    add_verbose(parser)
    return parser


def _model(args: argparse.Namespace):
    if args.model and Path(args.model).is_file():
        if args.dataset or args.configuration:
            raise UsageError("give either -m MODEL or -d DATASET -c CONFIGURATION, not both")
        return args.model
    return resolve_model_folder(argparse.Namespace(model_folder=args.model, dataset=args.dataset,
                                                   configuration=args.configuration, trainer=args.trainer,
                                                   plans=args.plans))


def run(args: argparse.Namespace) -> int:
    model = _model(args)
    if args.step_size is not None and not 0 < args.step_size <= 1:
        raise UsageError(f"-step_size must be in (0, 1], got {args.step_size}")
    summary = predict(model, args.input, args.output, folds=args.folds, checkpoint_name=args.checkpoint,
                      tile_step_size=args.step_size, use_mirroring=False if args.disable_tta else None,
                      save_probabilities=args.save_probabilities, continue_prediction=args.continue_prediction,
                      device=args.device, progress=False if args.quiet else None)
    if args.quiet:
        for case in summary.failed:
            progress(f"{case.case_id}: failed: {case.error}")
    print(summary.table())
    if summary.failed:
        print(f"nnunet-export: error: {kFailedCases.format(failed=len(summary.failed), total=len(summary.cases))}",
              file=sys.stderr)
        return 1
    return 0
