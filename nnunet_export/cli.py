"""nnunet-export: export trained nnU-Net models, in nnU-Net's own command-line vocabulary.

    nnunet-export -d 1 -c 3d_fullres -f 0 1 2 3 4 -o model.pt
    nnunet-export -m RESULTS/Dataset001_X/nnUNetTrainer__nnUNetPlans__2d -f all -o model.pt2 --format pt2
    nnunet-export inspect PATH      (a model folder, a checkpoint, or an exported file)

Exit codes: 0 success, 1 failure (one-line message; --verbose adds the traceback), 2 usage error.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
import traceback
import zipfile
from pathlib import Path
from typing import Sequence

from ._core import ExportError


class UsageError(Exception):
    """A command-line mistake: exit code 2."""


def _export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnunet-export",
        description="Export a trained nnU-Net model (all requested folds) to a verified "
        "TorchScript or torch.export file. 'nnunet-export inspect PATH' summarises a model "
        "folder, a checkpoint or an exported file.",
    )
    where = parser.add_argument_group("model (like nnUNetv2_predict)")
    where.add_argument("-d", dest="dataset", help="dataset name or id, resolved under $nnUNet_results")
    where.add_argument("-c", dest="configuration", help="configuration, e.g. 2d, 3d_fullres")
    where.add_argument("-tr", dest="trainer", default="nnUNetTrainer", help="trainer (default nnUNetTrainer)")
    where.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    where.add_argument("-m", dest="model_folder", help="the <Trainer>__<Plans>__<configuration> folder itself")
    parser.add_argument("-f", dest="folds", nargs="+", default=None,
                        help="folds, e.g. 0 1 2 3 4 or all (default: detect like nnU-Net)")
    parser.add_argument("-chk", dest="checkpoint", default="checkpoint_final.pth",
                        help="checkpoint file name (default checkpoint_final.pth)")
    parser.add_argument("-o", dest="output", required=True, help="output file (.pt or .pt2)")
    parser.add_argument("--format", choices=("torchscript", "pt2"), default=None,
                        help="output format (default: from the extension, .pt2 -> pt2, else torchscript)")
    parser.add_argument("--trace", action="store_true", help="trace instead of script (TorchScript)")
    parser.add_argument("--no-verify", action="store_true", help="skip reloading and comparing the file")
    parser.add_argument("--device", default="cpu", help="device for loading and verification (default cpu)")
    parser.add_argument("--num-threads", type=int, default=None, help="bound torch's threads during the export")
    parser.add_argument("--verbose", action="store_true", help="print tracebacks on failure")
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


def _progress(line: str) -> None:
    print(f"[nnunet-export] {line}", file=sys.stderr, flush=True)


def run_export(args: argparse.Namespace) -> int:
    from .export import to_exported_program, to_torchscript
    from .loading import load_complete

    import torch

    folder = resolve_model_folder(args)
    fmt = args.format or ("pt2" if args.output.endswith(".pt2") else "torchscript")
    if fmt == "pt2" and args.trace:
        raise UsageError("--trace applies to TorchScript only")
    try:
        torch.device(args.device)
    except RuntimeError:
        raise UsageError(f"--device {args.device!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if args.num_threads is not None and args.num_threads < 1:
        raise UsageError(f"--num-threads must be >= 1, got {args.num_threads}")
    started = time.perf_counter()
    model = load_complete(folder, folds=args.folds, checkpoint_name=args.checkpoint, device=args.device,
                          num_threads=args.num_threads, progress=_progress)
    if fmt == "pt2":
        report = to_exported_program(model, args.output, verify=not args.no_verify, progress=_progress)
    else:
        report = to_torchscript(model, args.output, method="trace" if args.trace else "auto",
                                verify=not args.no_verify, progress=_progress)
    print(summary_table(report, model, folder, time.perf_counter() - started))
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


def run_inspect(path_text: str) -> int:
    from .checkpoint import read_checkpoint
    from .metadata import read_metadata

    path = Path(path_text)
    if path.is_dir():
        from .folds import resolve_model_dir
        from .model_config import read_model_config

        model_dir, _ = resolve_model_dir(path)
        folds = sorted(p.name for p in model_dir.iterdir() if p.is_dir() and p.name.startswith("fold_"))
        print(f"model folder  {model_dir}")
        for fold in folds:
            names = sorted(c.name for c in (model_dir / fold).glob("*.pth"))
            print(f"  {fold:<9} {', '.join(names) or '(no checkpoint)'}")
        name_parts = model_dir.name.split("__")
        configuration = name_parts[2] if len(name_parts) == 3 else None
        if configuration:
            cfg = read_model_config(model_dir, configuration)
            print(f"  configuration {cfg.configuration}, plans {cfg.plans_name}, dataset {cfg.dataset_name}")
            print(f"  architecture  {cfg.architecture['network_class_name']}")
            print(f"  patch size    {list(cfg.patch_size)}, channels {cfg.num_input_channels} in / {cfg.num_output_channels} out")
        return 0
    if not path.is_file():
        raise UsageError(f"{path_text!r} is neither a model folder nor a file")
    try:
        meta = read_metadata(path)
    except ExportError:
        meta = None
    if meta is not None:
        print(f"exported file  {path} ({meta['file_format']}, {meta['export_method']})")
        for key in ("dataset_name", "plans_name", "configuration", "trainer_name", "folds",
                    "checkpoint_name", "parameters", "mirroring_axes", "torch_version",
                    "nnunet_export_version"):
            print(f"  {key:<22} {meta.get(key)}")
        for fold, digest in meta.get("weights_sha256", {}).items():
            print(f"  sha256 fold {fold:<10} {digest}")
        return 0
    if not zipfile.is_zipfile(path):
        raise ExportError(f"{path_text!r} is not a checkpoint or exported file (not a ZIP archive)")
    content = read_checkpoint(path)
    weights = content.get("network_weights", {})
    init_args = content.get("init_args") or {}
    print(f"checkpoint  {path} (read safely: nothing executed, optimizer state not read)")
    print(f"  trainer        {content.get('trainer_name')}")
    print(f"  configuration  {init_args.get('configuration')}, fold {init_args.get('fold')}")
    print(f"  epoch          {content.get('current_epoch')}")
    print(f"  mirroring axes {content.get('inference_allowed_mirroring_axes')}")
    unique = {t.data_ptr(): t for t in weights.values()}
    print(f"  weights        {len(weights)} keys, {sum(t.numel() for t in unique.values()):,} values")
    return 0


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    message = text[0] if text else ""
    if isinstance(err, (ExportError, OSError)):
        return message or type(err).__name__
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    try:
        return parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: usage errors exit 2, --help exits 0
        raise _ParserExit(int(exit_.code or 0)) from None


class _ParserExit(Exception):
    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``nnunet-export`` and ``python -m nnunet_export``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    started = time.perf_counter()
    try:
        if argv and argv[0] == "inspect":
            parser = argparse.ArgumentParser(prog="nnunet-export inspect",
                                             description="Summarise a model folder, checkpoint or exported file.")
            parser.add_argument("path")
            parser.add_argument("--verbose", action="store_true")
            return run_inspect(_parse(parser, argv[1:]).path)
        args = _parse(_export_parser(), argv)
        code = run_export(args)
        _progress(f"done in {time.perf_counter() - started:.1f} s")
        return code
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
        print(f"nnunet-export: error: {_one_line(err)}", file=sys.stderr)
        return 1
