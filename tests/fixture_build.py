"""Builds fixture model folders with nnU-Net's own code (run as a subprocess by nnunet_fixtures).

    python tests/fixture_build.py --size tiny --key-dir <cache>/<size>/<key> 3d_fullres bn ...

Every step is nnU-Net's: generate_dataset_json, fingerprint extraction, experiment planning,
preprocessing, the real trainer classes (run_training on CPU for a few iterations, so weights and
BatchNorm statistics move away from initialisation) and their save_checkpoint. Only the
`*_prefix` variants are rewritten afterwards, the way user code that saved a compiled or DDP
network's state_dict produces them.

Runs in its own process because nnU-Net reads some settings at import (nnUNet_def_n_proc), changes
process-wide state (torch threads, matplotlib backend) and spawns worker pools that re-import the
main module. Each group and variant is built in a temporary folder and renamed into place, so an
interrupted build never leaves a half-written fixture.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import sys
import time
import warnings
import zlib
from collections import OrderedDict
from pathlib import Path

# nnU-Net reads these at import time; this process imports nnunetv2 only after setting them.
os.environ["nnUNet_def_n_proc"] = "1"
os.environ["nnUNet_compile"] = "false"

import numpy as np  # noqa: E402

import fixture_layout as layout  # noqa: E402
from fixture_data import write_raw_dataset  # noqa: E402
from fixture_specs import BEST, GROUPS, VARIANTS, GroupSpec, TrainingRun, VariantSpec  # noqa: E402
from primus_import_shim import skip_primus_trainers_if_torchvision_is_broken  # noqa: E402

TRAINER_MODULES = {
    "nnUNetTrainer": "nnunetv2.training.nnUNetTrainer.nnUNetTrainer",
    "nnUNetTrainerBN": "nnunetv2.training.nnUNetTrainer.variants.network_architecture.nnUNetTrainerBN",
}
PLANNER_MODULES = {
    "ExperimentPlanner": "nnunetv2.experiment_planning.experiment_planners.default_experiment_planner",
    "nnUNetPlannerResEncM": "nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners",
    "nnUNetPlannerResEncL": "nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners",
}


def _import(module: str, name: str):
    import importlib

    return getattr(importlib.import_module(module), name)


@contextlib.contextmanager
def _environ(**values: str):
    """nnunetv2.paths reads nnUNet_raw/_preprocessed/_results from os.environ on every use (2.8)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _seed_everything(*parts) -> None:
    import torch

    seed = zlib.crc32("/".join(str(p) for p in parts).encode()) & 0x7FFFFFFF
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _fresh_tmp(final: Path) -> Path:
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _publish(tmp: Path, final: Path) -> None:
    # rename is atomic on one file system; the final folder appears complete or not at all.
    os.rename(tmp, final)


# ---------------------------------------------------------------------------- dataset groups

def _plan(group: GroupSpec) -> None:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess_dataset

    dataset_id = group.dataset.dataset_id
    for planner_spec in group.planners:
        planner_class = _import(PLANNER_MODULES[planner_spec.planner_class], planner_spec.planner_class)
        kwargs = dict(plans_name=planner_spec.plans_name)
        if planner_spec.gpu_memory_target_gb is not None:
            kwargs["gpu_memory_target_in_gb"] = planner_spec.gpu_memory_target_gb
        with warnings.catch_warnings():
            # ResEnc presets warn about a non-standard GPU memory target: intended for tiny fixtures.
            warnings.simplefilter("ignore")
            planner = planner_class(dataset_id, **kwargs)
        # The settings a custom planner subclass would change; everything else is nnU-Net's logic.
        if planner_spec.base_num_features is not None:
            planner.UNet_base_num_features = planner_spec.base_num_features
        if planner_spec.max_num_features is not None:
            planner.UNet_max_features_2d = planner_spec.max_num_features
            planner.UNet_max_features_3d = planner_spec.max_num_features
        planner.plan_experiment()

        # ResEnc plans reuse nnUNetPlans' preprocessed 2d/3d_fullres data (same data_identifier):
        # preprocess only what is not there yet, as a user following nnU-Net's docs would.
        plans_file = Path(os.environ["nnUNet_preprocessed"]) / layout.dataset_folder_name(group.dataset) / (
            planner_spec.plans_name + ".json")
        plans_manager = PlansManager(str(plans_file))
        todo = [c for c in planner_spec.configurations_to_preprocess
                if not (plans_file.parent / plans_manager.get_configuration(c).data_identifier).is_dir()]
        if todo:
            preprocess_dataset(dataset_id, planner_spec.plans_name, todo, num_processes=[1] * len(todo),
                               verbose=False, show_progress_bar=False)


def _write_splits(group: GroupSpec, preprocessed_root: Path) -> None:
    """Create splits_final.json exactly as nnUNetTrainer.do_split would on first use.

    Done here so that training never writes into the shared, already published group folder.
    """
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    dataset_folder = preprocessed_root / layout.dataset_folder_name(group.dataset)
    data_folder = next(p for p in sorted(dataset_folder.iterdir()) if p.is_dir() and p.name.endswith("_3d_fullres"))
    identifiers = infer_dataset_class(str(data_folder)).get_identifiers(str(data_folder))
    splits = generate_crossval_split(list(np.sort(list(identifiers))), seed=12345, n_splits=5)
    from batchgenerators.utilities.file_and_folder_operations import save_json

    save_json(splits, str(dataset_folder / "splits_final.json"))


def build_group(size: str, group: GroupSpec, key_dir: Path) -> None:
    final = layout.group_dir(key_dir, group.name)
    if final.is_dir():
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_tmp(final)
    started = time.perf_counter()
    raw_root, preprocessed_root = tmp / layout.RAW, tmp / layout.PREPROCESSED
    write_raw_dataset(group.dataset, raw_root, seed=zlib.crc32(f"{size}/{group.name}".encode()))
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset

    # The planner calls torch.set_num_threads(nnUNet_n_proc_DA): must be >= 1 here.
    with _environ(nnUNet_raw=str(raw_root), nnUNet_preprocessed=str(preprocessed_root), nnUNet_n_proc_DA="1"):
        extract_fingerprint_dataset(group.dataset.dataset_id, num_processes=1, check_dataset_integrity=False,
                                    clean=True, verbose=False, show_progress_bar=False)
        _plan(group)
        _write_splits(group, preprocessed_root)
    _write_build_info(tmp, started)
    _publish(tmp, final)


# ---------------------------------------------------------------------------- training

def _train(size: str, variant: VariantSpec, run: TrainingRun) -> None:
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json

    dataset_folder = Path(os.environ["nnUNet_preprocessed"]) / layout.dataset_folder_name(
        GROUPS[size][variant.group].dataset)
    _seed_everything(size, variant.name, run.configuration, run.fold, run.trainer)
    # The same steps as nnU-Net's get_trainer_from_args, with the class imported directly.
    plans = load_json(str(dataset_folder / f"{run.plans_name}.json"))
    plans["continue_training"] = False
    dataset_json = load_json(str(dataset_folder / "dataset.json"))
    trainer_class = _import(TRAINER_MODULES[run.trainer], run.trainer)
    trainer = trainer_class(plans=plans, configuration=run.configuration, fold=run.fold,
                            dataset_json=dataset_json, device=torch.device("cpu"))
    # Trainer variants such as nnUNetTrainer_1epoch change exactly these attributes.
    trainer.num_epochs = run.num_epochs
    trainer.num_iterations_per_epoch = run.iterations_per_epoch
    trainer.num_val_iterations_per_epoch = 1
    if run.batch_size is not None:
        trainer.initialize()  # sets trainer.batch_size from the plans; run_training then skips it
        trainer.batch_size = run.batch_size
    trainer.run_training()
    if run.run_validation:
        trainer.perform_actual_validation()


def _drop_best_checkpoints(results_root: Path) -> None:
    """nnU-Net's loop always writes checkpoint_best.pth; variants that do not list it keep only the
    final checkpoint, as a user who deletes the intermediate one would."""
    for path in results_root.rglob(BEST):
        path.unlink()


def _rewrite_with_prefix(results_root: Path, prefix: str) -> None:
    """Re-save every checkpoint with `prefix` on the network_weights keys (same container format)."""
    import torch

    for path in sorted(results_root.rglob("checkpoint_*.pth")):
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        checkpoint["network_weights"] = OrderedDict(
            (prefix + key, value) for key, value in checkpoint["network_weights"].items())
        torch.save(checkpoint, path)


def build_variant(size: str, name: str, key_dir: Path) -> None:
    variant = VARIANTS[size][name]
    final = layout.variant_dir(key_dir, name)
    if final.is_dir():
        return
    group = GROUPS[size][variant.group]
    build_group(size, group, key_dir)
    if variant.derived_from is not None:
        build_variant(size, variant.derived_from, key_dir)

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_tmp(final)
    started = time.perf_counter()
    results_root = tmp / layout.RESULTS
    if variant.derived_from is not None:
        shutil.copytree(layout.variant_dir(key_dir, variant.derived_from) / layout.RESULTS, results_root)
        _rewrite_with_prefix(results_root, variant.key_prefix)
    else:
        group_folder = layout.group_dir(key_dir, group.name)
        with _environ(nnUNet_raw=str(group_folder / layout.RAW),
                      nnUNet_preprocessed=str(group_folder / layout.PREPROCESSED),
                      nnUNet_results=str(results_root),
                      # SingleThreadedAugmenter: no background augmentation workers.
                      nnUNet_n_proc_DA="0"):
            for run in variant.runs:
                _train(size, variant, run)
        if not variant.keep_best:
            _drop_best_checkpoints(results_root)
    _write_build_info(tmp, started)
    _publish(tmp, final)
    print(f"[fixture_build] {size}/{name}: {time.perf_counter() - started:.1f} s", flush=True)


def _write_build_info(folder: Path, started: float) -> None:
    info = {"build_seconds": round(time.perf_counter() - started, 2), "python": sys.version.split()[0]}
    (folder / layout.BUILD_INFO).write_text(json.dumps(info, indent=2))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(GROUPS), required=True)
    parser.add_argument("--key-dir", type=Path, required=True)
    parser.add_argument("names", nargs="+")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in VARIANTS[args.size]]
    if unknown:
        parser.error(f"unknown fixture(s) {unknown} for size {args.size}; known: {sorted(VARIANTS[args.size])}")
    skip_primus_trainers_if_torchvision_is_broken()
    import matplotlib

    matplotlib.use("agg")  # nnU-Net plots progress.png; never open a display
    for name in args.names:
        build_variant(args.size, name, args.key_dir)
    return 0


if __name__ == "__main__":  # spawn workers re-import this file as __mp_main__: keep the guard
    sys.exit(main())
