"""Builds fixture model folders with nnU-Net's own code (run as a subprocess by nnunet_fixtures).

    python tests/fixture_build.py --size tiny --key-dir <cache>/<size>/<key> 3d_fullres bn ...

The raw images are synthetic (seeded shapes on noise, written below); every later step is
nnU-Net's: generate_dataset_json, fingerprint extraction, experiment planning,
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

import fixture_specs as specs  # noqa: E402
from fixture_specs import BEST, GROUPS, VARIANTS, DatasetSpec, GroupSpec, TrainingRun, VariantSpec  # noqa: E402
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


# ---------------------------------------------------------------------------- synthetic raw datasets
# Images are simple shapes on a noisy background whose intensities follow the labels, so a network
# could learn them. Everything is seeded: the same call writes the same files, in nnU-Net's raw
# format (imagesTr/labelsTr + dataset.json).

# Axis order of the numpy arrays below is (z, y, x); SimpleITK spacing is (x, y, z).
FILE_ENDING = ".nii.gz"


def _ball(shape, center, radius, spacing):
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    dist2 = sum(((g - c) * sp) ** 2 for g, c, sp in zip(grids, center, spacing))
    return dist2 <= radius ** 2


def _box(shape, low, high):
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(lo, hi) for lo, hi in zip(low, high))] = True
    return mask


def _case_shape(spec: DatasetSpec, rng: np.random.Generator) -> tuple[int, ...]:
    # +-10 % size jitter so the fingerprint sees a distribution, not one shape.
    return tuple(int(s + rng.integers(-max(1, s // 10), max(1, s // 10) + 1)) for s in spec.shape_zyx)


def _labels_case(spec: DatasetSpec, rng: np.random.Generator):
    """One-channel "CT" image: a ball (label 1, ~300 HU) and a box (label 2, ~600 HU)."""
    shape = _case_shape(spec, rng)
    extent_mm = np.array(shape) * np.array(spec.spacing_zyx)
    seg = np.zeros(shape, dtype=np.uint8)

    radius = float(rng.uniform(0.12, 0.18) * extent_mm.min())
    center = [rng.uniform(0.3, 0.45) * s for s in shape]
    seg[_ball(shape, center, radius, spec.spacing_zyx)] = 1

    low = [int(rng.uniform(0.55, 0.62) * s) for s in shape]
    high = [min(s - 1, lo + max(2, int(rng.uniform(0.2, 0.3) * s))) for lo, s in zip(low, shape)]
    seg[_box(shape, low, high)] = 2

    intensity_per_label = np.array([0.0, 300.0, 600.0], dtype=np.float32)
    image = intensity_per_label[seg] + rng.normal(0, 40, shape).astype(np.float32)
    return [image.astype(np.float32)], seg


def _regions_case(spec: DatasetSpec, rng: np.random.Generator):
    """Two-channel "MRI": an outer ball (label 1) with an inner core (label 2).

    Channel 0 is bright over the whole lesion (region [1, 2]), channel 1 only over the core
    (region [2]), mirroring how BraTS-style region training is set up.
    """
    shape = _case_shape(spec, rng)
    extent_mm = np.array(shape) * np.array(spec.spacing_zyx)
    center = [rng.uniform(0.4, 0.6) * s for s in shape]
    outer = float(rng.uniform(0.2, 0.28) * extent_mm.min())
    seg = np.zeros(shape, dtype=np.uint8)
    seg[_ball(shape, center, outer, spec.spacing_zyx)] = 1
    seg[_ball(shape, center, outer * 0.5, spec.spacing_zyx)] = 2

    whole = seg > 0
    core = seg == 2
    t1 = 100.0 + 200.0 * whole + rng.normal(0, 20, shape)
    t2 = 100.0 + 250.0 * core + rng.normal(0, 20, shape)
    return [t1.astype(np.float32), t2.astype(np.float32)], seg


def _ellipsoid(shape, center, radii_mm, spacing):
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum((((g - c) * sp) / r) ** 2 for g, c, sp, r in zip(grids, center, spacing, radii_mm)) <= 1.0


def _masked_case(spec: DatasetSpec, rng: np.random.Generator):
    """Two-channel "MRI" that is exactly 0 outside an ellipsoidal body (the bounding box of the
    body is about a third of the image) and in a closed cavity inside it, which nnU-Net's
    nonzero mask fills. An organ (label 1) and a lesion (label 2) lie in the body, away from the
    cavity; every body voxel is >= 1 in both channels."""
    shape = _case_shape(spec, rng)
    spacing = np.array(spec.spacing_zyx)
    extent_mm = np.array(shape) * spacing
    center = np.array([rng.uniform(0.47, 0.53) * s for s in shape])
    body_radii = extent_mm * np.array([0.36, 0.38, 0.36]) * rng.uniform(0.95, 1.05)
    body = _ellipsoid(shape, center, body_radii, spacing)

    def inside(offset_fraction, radius_mm):  # a ball at center + offset * body radius
        at = center + np.array(offset_fraction) * body_radii / spacing
        return _ellipsoid(shape, at, [radius_mm] * 3, spacing)

    seg = np.zeros(shape, dtype=np.uint8)
    seg[inside([0.0, -0.4, 0.25], 0.35 * body_radii[1:].min())] = 1
    seg[inside([0.0, 0.45, 0.2], 0.25 * body_radii[1:].min())] = 2
    cavity = inside([0.0, 0.05, -0.4], max(spacing[0] * 1.1, 0.22 * body_radii[1:].min()))
    seg[~body | cavity] = 0

    def channel(per_label):
        values = np.array(per_label, dtype=np.float64)[seg] + rng.normal(0, 25, shape)
        return np.where(body & ~cavity, np.maximum(values, 1.0), 0.0).astype(np.float32)

    return [channel([300.0, 380.0, 460.0]), channel([150.0, 350.0, 100.0])], seg


def _dataset_json_args(spec: DatasetSpec) -> dict:
    if spec.kind == "labels":
        return dict(channel_names={0: "CT"}, labels={"background": 0, "ball": 1, "box": 2})
    if spec.kind == "regions":
        return dict(
            channel_names={0: "T1", 1: "T2"},
            labels={"background": 0, "whole": (1, 2), "core": 2},
            regions_class_order=(1, 2),
        )
    if spec.kind == "masked":
        return dict(channel_names={0: "T1", 1: "T2"}, labels={"background": 0, "organ": 1, "lesion": 2})
    raise ValueError(f"unknown dataset kind {spec.kind!r}; allowed: 'labels', 'regions', 'masked'")


def _write_nifti(array: np.ndarray, spacing_zyx, path: Path) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in reversed(spacing_zyx)))
    sitk.WriteImage(image, str(path), useCompression=True)


def write_raw_dataset(spec: DatasetSpec, raw_root: Path, seed: int) -> Path:
    """Write `spec` under raw_root/DatasetXXX_Name in nnU-Net's raw layout; returns that folder."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    folder = raw_root / specs.dataset_folder_name(spec)
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    make_case = {"labels": _labels_case, "regions": _regions_case, "masked": _masked_case}[spec.kind]
    rng = np.random.default_rng(seed)
    for case_index in range(spec.num_cases):
        identifier = f"{spec.dataset_name.lower()}_{case_index:03d}"
        channels, seg = make_case(spec, rng)
        for channel_index, channel in enumerate(channels):
            _write_nifti(channel, spec.spacing_zyx,
                         folder / "imagesTr" / f"{identifier}_{channel_index:04d}{FILE_ENDING}")
        _write_nifti(seg, spec.spacing_zyx, folder / "labelsTr" / f"{identifier}{FILE_ENDING}")

    generate_dataset_json(
        str(folder),
        num_training_cases=spec.num_cases,
        file_ending=FILE_ENDING,
        dataset_name=folder.name,
        description="Synthetic nnunet_export test dataset (seeded shapes on noise).",
        license="CC0",
        converted_by="nnunet_export test fixtures",
        **_dataset_json_args(spec),
    )
    return folder


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
        plans_file = Path(os.environ["nnUNet_preprocessed"]) / specs.dataset_folder_name(group.dataset) / (
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

    dataset_folder = preprocessed_root / specs.dataset_folder_name(group.dataset)
    data_folder = next(p for p in sorted(dataset_folder.iterdir()) if p.is_dir() and p.name.endswith("_3d_fullres"))
    identifiers = infer_dataset_class(str(data_folder)).get_identifiers(str(data_folder))
    splits = generate_crossval_split(list(np.sort(list(identifiers))), seed=12345, n_splits=5)
    from batchgenerators.utilities.file_and_folder_operations import save_json

    save_json(splits, str(dataset_folder / "splits_final.json"))


def build_group(size: str, group: GroupSpec, key_dir: Path) -> None:
    final = specs.group_dir(key_dir, group.name)
    if final.is_dir():
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_tmp(final)
    started = time.perf_counter()
    raw_root, preprocessed_root = tmp / specs.RAW, tmp / specs.PREPROCESSED
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

    dataset_folder = Path(os.environ["nnUNet_preprocessed"]) / specs.dataset_folder_name(
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
    final = specs.variant_dir(key_dir, name)
    if final.is_dir():
        return
    group = GROUPS[size][variant.group]
    build_group(size, group, key_dir)
    if variant.derived_from is not None:
        build_variant(size, variant.derived_from, key_dir)

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_tmp(final)
    started = time.perf_counter()
    results_root = tmp / specs.RESULTS
    if variant.derived_from is not None:
        shutil.copytree(specs.variant_dir(key_dir, variant.derived_from) / specs.RESULTS, results_root)
        _rewrite_with_prefix(results_root, variant.key_prefix)
    else:
        group_folder = specs.group_dir(key_dir, group.name)
        with _environ(nnUNet_raw=str(group_folder / specs.RAW),
                      nnUNet_preprocessed=str(group_folder / specs.PREPROCESSED),
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
    (folder / specs.BUILD_INFO).write_text(json.dumps(info, indent=2))


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
