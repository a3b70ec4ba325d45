"""What each fixture is and where it lives on disk: dataset, planner settings, trainer,
configuration, folds, and the cache layout.

Pure data, no nnU-Net or numpy import: the public API (nnunet_fixtures.py) reads it to describe a
fixture without building it, the builder (fixture_build.py) reads it to build one.

Layout of one cache key folder:

    <cache>/<size>/<key>/groups/<group>/{nnUNet_raw, nnUNet_preprocessed, build_info.json}
    <cache>/<size>/<key>/variants/<name>/{nnUNet_results, build_info.json}

Each variant has its own nnUNet_results root, so a variant's model folder holds exactly its folds
and checkpoints, while variants of one group share the raw and preprocessed data.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SIZES = ("tiny", "realistic")
DEFAULT_PLANS = "nnUNetPlans"
DEFAULT_TRAINER = "nnUNetTrainer"
FINAL = "checkpoint_final.pth"
BEST = "checkpoint_best.pth"

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


@dataclass(frozen=True)
class DatasetSpec:
    """What one synthetic dataset looks like.

    Attributes:
        dataset_id / dataset_name: nnU-Net's DatasetXXX_Name.
        kind: "labels" (one label per structure, softmax), "regions" (overlapping regions) or
            "masked" (two MR-like channels, exactly zero outside a body with an enclosed hole).
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


@dataclass(frozen=True)
class PlannerSpec:
    """One nnU-Net experiment planner run, tuned only through the planner's own settings.

    The planner class is instantiated as nnU-Net's plan_experiment_dataset would; the attributes
    below are the knobs a custom planner subclass would set (base features, maximum features,
    GPU memory target which drives the patch size).
    """

    planner_class: str  # "ExperimentPlanner" | "nnUNetPlannerResEncM" | "nnUNetPlannerResEncL"
    plans_name: str
    configurations_to_preprocess: tuple[str, ...]
    gpu_memory_target_gb: float | None = None  # None: the planner's own default
    base_num_features: int | None = None
    max_num_features: int | None = None


@dataclass(frozen=True)
class GroupSpec:
    """A raw dataset plus its fingerprint, plans and preprocessed data, shared by several variants."""

    name: str
    dataset: DatasetSpec
    planners: tuple[PlannerSpec, ...]


@dataclass(frozen=True)
class TrainingRun:
    """One nnU-Net training run (a fold of one configuration)."""

    configuration: str
    fold: int | str
    trainer: str = DEFAULT_TRAINER
    plans_name: str = DEFAULT_PLANS
    num_epochs: int = 1
    iterations_per_epoch: int = 3
    # Lowres stage of a cascade: nnU-Net's validation writes predicted_next_stage.
    run_validation: bool = False
    # None: the plans' batch size. Realistic fixtures train one step with batch 1 so that a
    # 100 M-parameter 3D network fits a shared CPU machine; plans.json keeps the planned value.
    batch_size: int | None = None


@dataclass(frozen=True)
class VariantSpec:
    """A named fixture: its training runs and which model folder / folds / checkpoints it exposes."""

    name: str
    group: str
    configuration: str
    folds: tuple[int | str, ...]
    trainer: str = DEFAULT_TRAINER
    plans_name: str = DEFAULT_PLANS
    runs: tuple[TrainingRun, ...] = ()
    keep_best: bool = False
    # Derived variants copy another variant's folder and re-save network_weights with a prefix.
    derived_from: str | None = None
    key_prefix: str | None = None
    # Other model folders of the same results tree, e.g. {"3d_lowres": configuration} for a cascade.
    extra_configurations: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def checkpoint_names(self) -> tuple[str, ...]:
        return (FINAL, BEST) if self.keep_best else (FINAL,)


def _shapes(dataset_id: int, shape_zyx, num_cases: int) -> DatasetSpec:
    return DatasetSpec(dataset_id, "Shapes", "labels", num_cases, shape_zyx, (2.0, 1.0, 1.0))


def _regions(dataset_id: int, shape_zyx, num_cases: int) -> DatasetSpec:
    return DatasetSpec(dataset_id, "Regions", "regions", num_cases, shape_zyx, (2.0, 1.0, 1.0))


def _masked(dataset_id: int, shape_zyx, num_cases: int) -> DatasetSpec:
    # z spacing / in-plane spacing > 3 (nnU-Net's anisotropy threshold): the target spacing is
    # anisotropic, so nnU-Net resamples every image to it with the separate-z path.
    return DatasetSpec(dataset_id, "Masked", "masked", num_cases, shape_zyx, (3.0, 0.85, 0.85))


# Tiny: a 0.002 GB "GPU memory target" makes the planner pick a patch small enough (12x20x16) that
# nnU-Net itself adds a 3d_lowres configuration (fullres patch < 25 % of the median image), so the
# cascade exists without editing plans. 4 base features keep every network a few thousand params.
_TINY_PLANNERS = dict(gpu_memory_target_gb=0.002, base_num_features=4, max_num_features=32)
_TINY_GROUPS = {
    "shapes": GroupSpec("shapes", _shapes(901, (24, 40, 40), 6), (
        PlannerSpec("ExperimentPlanner", DEFAULT_PLANS, ("2d", "3d_fullres", "3d_lowres"), **_TINY_PLANNERS),
        PlannerSpec("nnUNetPlannerResEncM", "nnUNetResEncUNetMPlans", ("3d_fullres",), **_TINY_PLANNERS),
    )),
    "regions": GroupSpec("regions", _regions(902, (24, 40, 40), 6), (
        PlannerSpec("ExperimentPlanner", DEFAULT_PLANS, ("3d_fullres",), **_TINY_PLANNERS),
    )),
    # Zero background around the body: the fingerprint's median size after cropping is < 75 %,
    # so the planner normalises inside the nonzero mask (use_mask_for_norm) with ZScore (MR).
    "masked": GroupSpec("masked", _masked(903, (14, 40, 36), 5), (
        PlannerSpec("ExperimentPlanner", DEFAULT_PLANS, ("2d", "3d_fullres"), **_TINY_PLANNERS),
    )),
}

# Realistic: nnU-Net's default settings on 128^3-ish images. The default planner then builds its
# usual 6-stage PlainConvUNet (32..320 features, ~31 M parameters) and ResEnc L its 6-stage
# ResidualEncoderUNet (~102 M parameters). Only generated on request (benchmarks).
_REALISTIC_GROUPS = {
    "shapes": GroupSpec("shapes", _shapes(911, (72, 144, 144), 5), (
        PlannerSpec("ExperimentPlanner", DEFAULT_PLANS, ("3d_fullres",)),
        PlannerSpec("nnUNetPlannerResEncL", "nnUNetResEncUNetLPlans", ("3d_fullres",)),
    )),
}

GROUPS = {"tiny": _TINY_GROUPS, "realistic": _REALISTIC_GROUPS}


def _variants(size: str) -> dict[str, VariantSpec]:
    iterations = 3 if size == "tiny" else 1
    resenc_plans = "nnUNetResEncUNetMPlans" if size == "tiny" else "nnUNetResEncUNetLPlans"

    def run(configuration, fold, **kwargs):
        kwargs.setdefault("iterations_per_epoch", iterations)
        if size == "realistic":
            kwargs.setdefault("batch_size", 1)
        return TrainingRun(configuration, fold, **kwargs)

    fullres = VariantSpec("3d_fullres", "shapes", "3d_fullres", (0,), runs=(run("3d_fullres", 0),))
    variants = [
        fullres,
        VariantSpec("resenc", "shapes", "3d_fullres", (0,), plans_name=resenc_plans,
                    runs=(run("3d_fullres", 0, plans_name=resenc_plans),)),
        VariantSpec("orig_mod_prefix", "shapes", "3d_fullres", (0,), derived_from="3d_fullres",
                    key_prefix="_orig_mod."),
        VariantSpec("module_prefix", "shapes", "3d_fullres", (0,), derived_from="3d_fullres",
                    key_prefix="module."),
    ]
    if size == "tiny":
        variants += [
            VariantSpec("2d", "shapes", "2d", (0,), runs=(run("2d", 0),)),
            # The lowres fold "all" validates on every case, so nnU-Net's own validation writes the
            # predicted_next_stage segmentations that the cascade's training data loader needs.
            VariantSpec("cascade", "shapes", "3d_cascade_fullres", (0,),
                        runs=(run("3d_lowres", "all", run_validation=True), run("3d_lowres", 0),
                              run("3d_cascade_fullres", 0)),
                        extra_configurations={"3d_lowres": "3d_lowres"}),
            VariantSpec("bn", "shapes", "3d_fullres", (0,), trainer="nnUNetTrainerBN",
                        runs=(run("3d_fullres", 0, trainer="nnUNetTrainerBN"),)),
            VariantSpec("regions", "regions", "3d_fullres", (0,), runs=(run("3d_fullres", 0),)),
            VariantSpec("masked", "masked", "3d_fullres", (0,), runs=(run("3d_fullres", 0),)),
            VariantSpec("masked_2d", "masked", "2d", (0,), runs=(run("2d", 0),)),
            VariantSpec("multifold", "shapes", "3d_fullres", (0, 1, 2, "all"),
                        runs=tuple(run("3d_fullres", f) for f in (0, 1, 2, "all"))),
            # Three epochs: best is written after epoch 0 and whenever the EMA pseudo Dice improves,
            # final after the last epoch, so the two checkpoints are different training states.
            VariantSpec("best", "shapes", "3d_fullres", (0,), keep_best=True,
                        runs=(run("3d_fullres", 0, num_epochs=3),)),
        ]
    return {v.name: v for v in variants}


VARIANTS = {size: _variants(size) for size in SIZES}
