"""Synthetic raw datasets in nnU-Net's raw format (imagesTr/labelsTr + dataset.json).

Images are simple shapes on a noisy background whose intensities follow the labels, so a
network could learn them. Everything is seeded: the same call writes the same files.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Axis order of the numpy arrays below is (z, y, x); SimpleITK spacing is (x, y, z).
FILE_ENDING = ".nii.gz"


@dataclass(frozen=True)
class DatasetSpec:
    """What one synthetic dataset looks like.

    Attributes:
        dataset_id / dataset_name: nnU-Net's DatasetXXX_Name.
        kind: "labels" (one label per structure, softmax) or "regions" (overlapping regions).
        num_cases: training cases (>= 5 so nnU-Net's 5-fold split works).
        shape_zyx: median image shape; cases vary by a few voxels around it.
        spacing_zyx: voxel spacing in mm.
    """

    dataset_id: int
    dataset_name: str
    kind: str
    num_cases: int
    shape_zyx: tuple[int, int, int]
    spacing_zyx: tuple[float, float, float]


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


def _dataset_json_args(spec: DatasetSpec) -> dict:
    if spec.kind == "labels":
        return dict(channel_names={0: "CT"}, labels={"background": 0, "ball": 1, "box": 2})
    if spec.kind == "regions":
        return dict(
            channel_names={0: "T1", 1: "T2"},
            labels={"background": 0, "whole": (1, 2), "core": 2},
            regions_class_order=(1, 2),
        )
    raise ValueError(f"unknown dataset kind {spec.kind!r}; allowed: 'labels', 'regions'")


def _write_nifti(array: np.ndarray, spacing_zyx, path: Path) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in reversed(spacing_zyx)))
    sitk.WriteImage(image, str(path), useCompression=True)


def write_raw_dataset(spec: DatasetSpec, raw_root: Path, seed: int) -> Path:
    """Write `spec` under raw_root/DatasetXXX_Name in nnU-Net's raw layout; returns that folder."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    folder = raw_root / f"Dataset{spec.dataset_id:03d}_{spec.dataset_name}"
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    make_case = _labels_case if spec.kind == "labels" else _regions_case
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
