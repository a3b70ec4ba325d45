"""Where fixtures live on disk (shared by the public API and the builder).

    <cache>/<size>/<key>/groups/<group>/{nnUNet_raw, nnUNet_preprocessed, build_info.json}
    <cache>/<size>/<key>/variants/<name>/{nnUNet_results, build_info.json}

Each variant has its own nnUNet_results root, so a variant's model folder holds exactly its folds
and checkpoints, while variants of one group share the raw and preprocessed data.
"""
from __future__ import annotations

from pathlib import Path

RAW = "nnUNet_raw"
PREPROCESSED = "nnUNet_preprocessed"
RESULTS = "nnUNet_results"
BUILD_INFO = "build_info.json"


def dataset_folder_name(dataset) -> str:
    return f"Dataset{dataset.dataset_id:03d}_{dataset.dataset_name}"


def model_folder_name(trainer: str, plans_name: str, configuration: str) -> str:
    # nnU-Net's naming: <Trainer>__<Plans>__<configuration>
    return f"{trainer}__{plans_name}__{configuration}"


def group_dir(key_dir: Path, group: str) -> Path:
    return key_dir / "groups" / group


def variant_dir(key_dir: Path, name: str) -> Path:
    return key_dir / "variants" / name
