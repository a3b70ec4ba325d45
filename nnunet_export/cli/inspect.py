"""nnunet-export inspect PATH: summarise a model folder, a checkpoint (read safely) or an exported file."""
from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

from .._core import ExportError
from ..checkpoint import read_checkpoint
from ..metadata import read_metadata
from ..model_config import read_model_config
from ..folds import resolve_model_dir
from .common import UsageError, add_verbose

HELP = "summarise a model folder, a checkpoint (read safely) or an exported file"
kNotAnInput = "{path!r} is neither a model folder nor a file"
kNotAZip = "{path!r} is not a checkpoint or exported file (not a ZIP archive)"
_METADATA_KEYS = ("dataset_name", "plans_name", "configuration", "trainer_name", "folds", "checkpoint_name",
                  "parameters", "mirroring_axes", "torch_version", "nnunet_export_version")


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("inspect", help=HELP, description=HELP[0].upper() + HELP[1:] + ".")
    parser.add_argument("path", help="a <Trainer>__<Plans>__<configuration> folder, a .pth checkpoint, "
                        "or a file written by export")
    add_verbose(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.is_dir():
        return _model_folder(path)
    if not path.is_file():
        raise UsageError(kNotAnInput.format(path=args.path))
    try:
        meta = read_metadata(path)
    except ExportError:
        meta = None
    if meta is not None:
        return _exported_file(path, meta)
    if not zipfile.is_zipfile(path):
        raise ExportError(kNotAZip.format(path=args.path))
    return _checkpoint(path)


def _model_folder(path: Path) -> int:
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


def _exported_file(path: Path, meta: dict) -> int:
    print(f"exported file  {path} ({meta['file_format']}, {meta['export_method']})")
    for key in _METADATA_KEYS:
        print(f"  {key:<22} {meta.get(key)}")
    for fold, digest in meta.get("weights_sha256", {}).items():
        print(f"  sha256 fold {fold:<10} {digest}")
    return 0


def _checkpoint(path: Path) -> int:
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
