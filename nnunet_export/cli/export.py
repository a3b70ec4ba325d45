"""nnunet-export export: load every requested fold of a trained model and write a verified file.

    nnunet-export export -d 1 -c 3d_fullres -f 0 1 2 3 4 -o model.pt     (or without 'export')
"""
from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path

import torch

from ..export import to_exported_program, to_torchscript
from ..onnx_export import to_onnx
from ..loading import load_complete
from .common import UsageError, add_model_arguments, add_verbose, progress

HELP = "export a trained model (all requested folds) to a verified TorchScript or torch.export file"


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("export", help=HELP, description=HELP[0].upper() + HELP[1:] + ".")
    add_model_arguments(parser, title="model (like nnUNetv2_predict)", model_dest="model_folder",
                        model_help="the <Trainer>__<Plans>__<configuration> folder itself")
    parser.add_argument("-o", dest="output", required=True, help="output file (.pt, .pt2 or .onnx)")
    parser.add_argument("--format", choices=("torchscript", "pt2", "onnx"), default=None,
                        help="output format (default: from the extension, .pt2 -> pt2, .onnx -> onnx, "
                        "else torchscript)")
    parser.add_argument("--trace", action="store_true", help="trace instead of script (TorchScript)")
    parser.add_argument("--no-verify", action="store_true", help="skip reloading and comparing the file")
    parser.add_argument("--device", default="cpu", help="device for loading and verification (default cpu)")
    parser.add_argument("--num-threads", type=int, default=None, help="bound torch's threads during the export")
    add_verbose(parser)
    return parser


def _results_root() -> Path:
    root = os.environ.get("nnUNet_results")
    if not root:
        raise UsageError("-d needs $nnUNet_results to be set (or pass the folder with -m)")
    return Path(root)


def _dataset_folder(results: Path, dataset: str) -> Path:
    if dataset.isdigit():
        prefix = f"Dataset{int(dataset):03d}_"
        matches = sorted(p for p in results.glob(prefix + "*") if p.is_dir())
        if len(matches) != 1:
            found = "none" if not matches else ", ".join(p.name for p in matches)
            raise UsageError(f"dataset id {dataset} must match exactly one {prefix}* folder in {results} (found {found})")
        return matches[0]
    folder = results / dataset
    if not folder.is_dir():
        raise UsageError(f"dataset {dataset!r} has no folder in {results}")
    return folder


def resolve_model_folder(args: argparse.Namespace) -> Path:
    """The model folder named by -m, or by -d/-c/-tr/-p under $nnUNet_results (UsageError if none)."""
    if args.model_folder:
        if args.dataset or args.configuration:
            raise UsageError("give either -m MODEL_FOLDER or -d DATASET -c CONFIGURATION, not both")
        return Path(args.model_folder)
    if not (args.dataset and args.configuration):
        raise UsageError("give -d DATASET -c CONFIGURATION (with optional -tr/-p) or -m MODEL_FOLDER")
    folder = _dataset_folder(_results_root(), args.dataset) / f"{args.trainer}__{args.plans}__{args.configuration}"
    if not folder.is_dir():
        raise UsageError(f"no trained model at {folder} (check -tr, -p and -c)")
    return folder


def run(args: argparse.Namespace) -> int:
    folder = resolve_model_folder(args)
    fmt = args.format or {".pt2": "pt2", ".onnx": "onnx"}.get(Path(args.output).suffix, "torchscript")
    if fmt != "torchscript" and args.trace:
        raise UsageError("--trace applies to TorchScript only")
    try:
        torch.device(args.device)
    except RuntimeError:
        raise UsageError(f"--device {args.device!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if args.num_threads is not None and args.num_threads < 1:
        raise UsageError(f"--num-threads must be >= 1, got {args.num_threads}")
    started = time.perf_counter()
    model = load_complete(folder, folds=args.folds, checkpoint_name=args.checkpoint, device=args.device,
                          num_threads=args.num_threads, progress=progress)
    if fmt == "onnx":
        report = to_onnx(model, args.output, verify=not args.no_verify, progress=progress)
    elif fmt == "pt2":
        report = to_exported_program(model, args.output, verify=not args.no_verify, progress=progress)
    else:
        report = to_torchscript(model, args.output, method="trace" if args.trace else "auto",
                                verify=not args.no_verify, progress=progress)
    print(summary_table(report, model, folder, time.perf_counter() - started))
    progress(f"done in {time.perf_counter() - started:.1f} s")
    return 0


def summary_table(report, model, folder: Path, total_seconds: float) -> str:
    """ExportReport.table() plus the model folder, folds, device and total time, one aligned table."""
    rows = [("model", str(folder)), ("folds", ", ".join(str(f) for f in model.info.folds)),
            ("device", str(next(iter(model.parameters())).device))]
    for line in report.table().splitlines():
        key, value = re.split(r"\s{2,}", line, maxsplit=1)
        rows.append((key, value))
    rows.append(("total time", f"{total_seconds:.2f} s (loading, export and verification)"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
