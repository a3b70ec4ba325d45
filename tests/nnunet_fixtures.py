"""Genuine nnU-Net v2 model folders for tests and benchmarks, written by nnU-Net's own code.

Public API (others code against it; keep it stable):

    FIXTURE_NAMES                 variant names available at size "tiny"
    PREPROCESSING_FIXTURE_NAMES   further tiny variants for preprocessing/export tests ("masked", ...)
    TINY_FIXTURE_NAMES            both together: everything get_fixture(name, "tiny") accepts
    REALISTIC_FIXTURE_NAMES       the subset available at size "realistic"
    ModelFixture                  frozen description of one built fixture
    get_fixture(name, size)       build on first use (cached on disk), return its ModelFixture
    build_fixtures(names, size)   build several missing fixtures in one process
    checkpoint_path(fixture, fold=..., checkpoint_name=...)

Example:
    >>> fixture = get_fixture("3d_fullres")
    >>> fixture.model_dir.name
    'nnUNetTrainer__nnUNetPlans__3d_fullres'
    >>> checkpoint_path(fixture).name
    'checkpoint_final.pth'

Fixtures are cached under `<repo>/.fixture-cache/<size>/<key>/` (override the root with
NNUNET_EXPORT_FIXTURE_CACHE). The key changes with the factory's source files, the nnunetv2 and
torch versions and FACTORY_VERSION, so stale fixtures are never reused. Building happens in a
subprocess (see fixture_build.py) under a file lock; finished folders are never modified.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

_TESTS_DIR = Path(__file__).resolve().parent
if str(_TESTS_DIR) not in sys.path:  # benchmarks import this file by path
    sys.path.insert(0, str(_TESTS_DIR))

import fixture_specs as specs  # noqa: E402
from fixture_specs import FINAL, GROUPS, SIZES, VARIANTS  # noqa: E402
from primus_import_shim import skip_primus_trainers_if_torchvision_is_broken  # noqa: E402

# Benchmarks and tests that use these fixtures load them with nnU-Net's predictor, whose trainer
# lookup needs the shim where torchvision is broken (see primus_import_shim.py).
skip_primus_trainers_if_torchvision_is_broken()

FACTORY_VERSION = 1
CACHE_ENV = "NNUNET_EXPORT_FIXTURE_CACHE"
FIXTURE_NAMES: tuple[str, ...] = (
    "2d", "3d_fullres", "cascade", "resenc", "bn", "regions", "multifold", "best",
    "orig_mod_prefix", "module_prefix",
)
# MR-like images with a zero background (nnU-Net normalises inside the nonzero mask): the
# preprocessing and export tests use them; kept out of FIXTURE_NAMES, which every export suite
# runs over.
PREPROCESSING_FIXTURE_NAMES: tuple[str, ...] = ("masked", "masked_2d")
TINY_FIXTURE_NAMES: tuple[str, ...] = FIXTURE_NAMES + PREPROCESSING_FIXTURE_NAMES
REALISTIC_FIXTURE_NAMES: tuple[str, ...] = ("3d_fullres", "resenc", "orig_mod_prefix", "module_prefix")
_FACTORY_SOURCES = ("nnunet_fixtures.py", "fixture_build.py", "fixture_specs.py", "primus_import_shim.py")

kUnknownFixture = "unknown fixture {name!r} for size {size!r}; available: {available}"
kUnknownSize = "unknown fixture size {size!r}; allowed: {allowed}"
kBuildFailed = "building nnU-Net fixtures {names} ({size}) failed with exit code {rc}; log: {log}\n{tail}"
kNotAFold = "fold {fold!r} is not one of fixture {name!r}'s folds {folds}"
kNotACheckpoint = "checkpoint {checkpoint!r} is not one of fixture {name!r}'s checkpoints {checkpoints}"


@dataclass(frozen=True)
class ModelFixture:
    """A trained nnU-Net model folder written by nnU-Net itself.

    Attributes:
        name / size: the variant ("3d_fullres", "bn", ...) and "tiny" or "realistic".
        model_dir: the `<Trainer>__<Plans>__<configuration>` folder (what nnUNetPredictor takes).
        folds: folds present, as nnU-Net names them (ints and/or "all").
        configuration, trainer, plans_name, dataset_name: nnU-Net's names for this model.
        checkpoint_names: checkpoint files present in every fold folder.
        results_dir / raw_dir / preprocessed_dir: the nnUNet_results, nnUNet_raw and
            nnUNet_preprocessed roots (dataset folders `dataset_name` inside).
        extra_model_dirs: other model folders of the same results tree, by configuration
            (cascade: {"3d_lowres": ...}; its lowres folder holds folds 0 and "all").
        key_prefix: prefix added to every network_weights key ("_orig_mod.", "module.") or None.
    """

    name: str
    size: str
    model_dir: Path
    folds: tuple[int | str, ...]
    configuration: str
    trainer: str
    plans_name: str
    dataset_name: str
    checkpoint_names: tuple[str, ...]
    results_dir: Path
    raw_dir: Path
    preprocessed_dir: Path
    extra_model_dirs: Mapping[str, Path] = field(default_factory=dict, hash=False, compare=False)
    key_prefix: str | None = None


def cache_root() -> Path:
    """Root of the fixture cache: $NNUNET_EXPORT_FIXTURE_CACHE or <repo>/.fixture-cache."""
    override = os.environ.get(CACHE_ENV)
    return Path(override).expanduser().resolve() if override else _TESTS_DIR.parent / ".fixture-cache"


def cache_key() -> str:
    """Changes whenever the factory code, nnunetv2 or torch changes."""
    digest = hashlib.sha256()
    for source in _FACTORY_SOURCES:
        digest.update((_TESTS_DIR / source).read_bytes())
    versions = f"nnunetv2-{importlib.metadata.version('nnunetv2')}-torch-{importlib.metadata.version('torch')}"
    digest.update(versions.encode())
    return f"v{FACTORY_VERSION}-{digest.hexdigest()[:12]}"


def _key_dir(size: str) -> Path:
    return cache_root() / size / cache_key()


def _check(name: str, size: str) -> None:
    if size not in SIZES:
        raise ValueError(kUnknownSize.format(size=size, allowed=SIZES))
    available = TINY_FIXTURE_NAMES if size == "tiny" else REALISTIC_FIXTURE_NAMES
    if name not in available:
        raise ValueError(kUnknownFixture.format(name=name, size=size, available=available))


def _describe(name: str, size: str, key_dir: Path) -> ModelFixture:
    variant = VARIANTS[size][name]
    dataset_name = specs.dataset_folder_name(GROUPS[size][variant.group].dataset)
    group_folder = specs.group_dir(key_dir, variant.group)
    results_dir = specs.variant_dir(key_dir, name) / specs.RESULTS

    def model_dir(configuration: str) -> Path:
        return results_dir / dataset_name / specs.model_folder_name(variant.trainer, variant.plans_name, configuration)

    return ModelFixture(
        name=name, size=size, model_dir=model_dir(variant.configuration), folds=variant.folds,
        configuration=variant.configuration, trainer=variant.trainer, plans_name=variant.plans_name,
        dataset_name=dataset_name, checkpoint_names=variant.checkpoint_names, results_dir=results_dir,
        raw_dir=group_folder / specs.RAW, preprocessed_dir=group_folder / specs.PREPROCESSED,
        extra_model_dirs={k: model_dir(c) for k, c in variant.extra_configurations.items()},
        key_prefix=variant.key_prefix,
    )


def build_fixtures(names: Iterable[str] = FIXTURE_NAMES, size: str = "tiny") -> dict[str, ModelFixture]:
    """Build every missing fixture of `names` in one subprocess; return all of them.

    Raises:
        ValueError: unknown name or size.
        RuntimeError: the build failed (message names the log file and quotes its tail).
    """
    names = tuple(dict.fromkeys(names))
    for name in names:
        _check(name, size)
    key_dir = _key_dir(size)
    key_dir.mkdir(parents=True, exist_ok=True)
    # One builder at a time per cache key (other pytest runs, benchmarks); the others wait, then
    # find the folders published.
    with open(key_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        missing = [n for n in names if not specs.variant_dir(key_dir, n).is_dir()]
        if missing:
            _run_builder(missing, size, key_dir)
    return {name: _describe(name, size, key_dir) for name in names}


def get_fixture(name: str, size: str = "tiny") -> ModelFixture:
    """Return fixture `name` of `size`, building it (with nnU-Net) on first use.

    Example:
        >>> get_fixture("bn").trainer
        'nnUNetTrainerBN'
    """
    return build_fixtures((name,), size)[name]


def checkpoint_path(fixture: ModelFixture, fold: int | str | None = None,
                    checkpoint_name: str = FINAL) -> Path:
    """Path of `checkpoint_name` in `fold` (default: the fixture's first fold) of `fixture`.

    Raises:
        ValueError: the fixture has no such fold or checkpoint.
    """
    fold = fixture.folds[0] if fold is None else fold
    if fold not in fixture.folds:
        raise ValueError(kNotAFold.format(fold=fold, name=fixture.name, folds=fixture.folds))
    if checkpoint_name not in fixture.checkpoint_names:
        raise ValueError(kNotACheckpoint.format(checkpoint=checkpoint_name, name=fixture.name,
                                                checkpoints=fixture.checkpoint_names))
    return fixture.model_dir / f"fold_{fold}" / checkpoint_name


def _run_builder(names: list[str], size: str, key_dir: Path) -> None:
    log_dir = key_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    log = log_dir / f"build-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    env = dict(os.environ, PYTHONHASHSEED="0", MPLBACKEND="agg")
    command = [sys.executable, str(_TESTS_DIR / "fixture_build.py"), "--size", size, "--key-dir", str(key_dir), *names]
    with open(log, "w") as out:
        rc = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=_TESTS_DIR).returncode
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(kBuildFailed.format(names=names, size=size, rc=rc, log=log, tail=tail))
