"""nnunet-export triton: a Triton Inference Server model repository for a trained model.

    nnunet-export triton -m MODEL_FOLDER -o REPOSITORY [--name NAME] [--onnx [--max-batch-size N]]
"""
from __future__ import annotations

import argparse

from ..triton import write_triton_repository
from .common import UsageError, add_model_arguments, add_verbose, progress
from .export import resolve_model_folder

HELP = "write a Triton model repository (the pipeline as TorchScript, optionally the network as ONNX)"


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("triton", help=HELP, description=HELP[0].upper() + HELP[1:] + ".")
    add_model_arguments(parser, title="model (like nnUNetv2_predict)", model_dest="model_folder",
                        model_help="the <Trainer>__<Plans>__<configuration> folder itself")
    parser.add_argument("-o", dest="output", required=True, help="repository folder (new or empty)")
    parser.add_argument("--name", default="nnunet", help="model name in the repository (default nnunet)")
    parser.add_argument("--onnx", action="store_true", help="also NAME_network: the network as ONNX (onnxruntime)")
    parser.add_argument("--max-batch-size", type=int, default=0,
                        help="max_batch_size of the ONNX network model (default 0: no batching)")
    add_verbose(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    folder = resolve_model_folder(args)
    if args.max_batch_size < 0:
        raise UsageError(f"--max-batch-size must be >= 0, got {args.max_batch_size}")
    if args.max_batch_size and not args.onnx:
        raise UsageError("--max-batch-size applies to the ONNX network model: add --onnx")
    repository = write_triton_repository(folder, args.output, name=args.name, max_batch_size=args.max_batch_size,
                                         onnx=args.onnx, progress=progress, folds=args.folds,
                                         checkpoint_name=args.checkpoint)
    print(f"Triton repository written to {repository} (see its README.md)")
    return 0
