"""Writes the seed corpora of the fuzz targets into fuzz/work/seeds/ (nothing is committed).

Run with the project's normal interpreter (torch, nnunetv2 and the normal build of
nnunet_export importable), from the repository root: fuzz/run.sh does it when the seeds are
missing. Sources:
  * real nnU-Net model folders from the test fixture factory (tests/nnunet_fixtures.py; built on
    first use, reused from $NNUNET_EXPORT_FIXTURE_CACHE): their plans.json / dataset.json and the
    data.pkl of their checkpoints;
  * small nnU-Net-shaped torch.save checkpoints (tests/checkpoint_helpers.py), also repacked
    without alignment and with ZIP64 records;
  * the hostile and corrupt pickles the tests use (their pytest parameter lists);
  * the planner plans and their variants of tests/plans_cases.py.

Usage: python fuzz/make_seeds.py [--no-fixtures] [OUT_DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tempfile
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import checkpoint_helpers as ch  # noqa: E402
import plans_cases  # noqa: E402
from fuzz_common import PLANS_CONFIGURATIONS as CONFIGURATIONS  # noqa: E402
from fuzz_common import PLANS_SEPARATOR as SEPARATOR  # noqa: E402


def _save(folder: str, data: bytes) -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, hashlib.sha1(data).hexdigest()[:16]), "wb") as f:
        f.write(data)


def _pickle_of(raw: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))


def _zip64(raw: bytes) -> bytes:
    """The same archive with ZIP64 extra fields and end records (what torch writes for >4 GiB)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            with zout.open(zipfile.ZipInfo(info.filename), "w", force_zip64=True) as f:
                f.write(zin.read(info))
    return out.getvalue()


def _test_pickles() -> list[bytes]:
    """Hostile / malformed data.pkl payloads from the tests' parameter lists."""
    import test_checkpoint_corrupt
    import test_checkpoint_hostile

    pickles = []
    for mark in test_checkpoint_hostile.test_malformed_or_forbidden_pickles.pytestmark:
        if mark.name == "parametrize":
            pickles += [pkl for pkl, _ in mark.args[1]]
    for mark in test_checkpoint_corrupt.test_tensor_outside_its_storage.pytestmark:
        if mark.name == "parametrize":
            pickles += [ch.p_top(network_weights=tensor) for tensor, _ in mark.args[1]]
    g, s, call = ch.p_global, ch.p_str, ch.p_call
    od = call(g("collections", "OrderedDict"))
    raw = call(g("_codecs", "encode"), s("\x00" * 8), s("latin1"))
    f8 = call(g("numpy", "dtype"), s("f8"), b"\x89", b"\x88")
    pickles += [
        ch.p_top(network_weights=od + b"}(" + s("_metadata") + b"}u" + b"b"),
        ch.p_top(logging=call(g("numpy.core.multiarray", "scalar"), f8, raw)),
        ch.p_top(init_args=call(g("torch", "device"), s("cpu"))),
        ch.p_top(network_weights=b"](" + ch.p_rebuild(ch.p_storage(g("torch", "FloatStorage"))) +
                 ch.p_rebuild(ch.p_storage(g("torch", "IntStorage"))) + b"e"),
        ch.p_top(network_weights=b"]" * 300 + b"a" * 299),
    ]
    return pickles


def _fixture_folders(use_fixtures: bool):
    if not use_fixtures:
        return []
    import nnunet_fixtures

    folders = []
    for name, fixture in nnunet_fixtures.build_fixtures().items():
        folders.append((fixture.model_dir, fixture))
        folders += [(d, fixture) for d in fixture.extra_model_dirs.values()]
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=os.path.join(HERE, "work", "seeds"))
    parser.add_argument("--no-fixtures", action="store_true",
                        help="skip the nnU-Net fixture model folders (no fixture build)")
    args = parser.parse_args()
    out = args.out
    os.makedirs(out, exist_ok=True)

    # ---- checkpoints: the template of the pickle target and the zip seeds ----
    with tempfile.TemporaryDirectory() as tmp:
        template = os.path.join(tmp, "template.pth")
        ch.save_small_checkpoint(template, features=(2, 4))
        with open(template, "rb") as f:
            template_raw = f.read()
        small = os.path.join(tmp, "small.pth")
        torch.manual_seed(1)
        checkpoint = ch.nnunet_checkpoint_dict(ch.make_unet((2, 4), dim=2), epochs=1, patch=(8, 8))
        torch.save(checkpoint, small)
        with open(small, "rb") as f:
            small_raw = f.read()
    with open(os.path.join(out, "pickle_template.pth"), "wb") as f:
        f.write(template_raw)

    zip_dir = os.path.join(out, "zip")
    for raw in (template_raw, small_raw):
        _save(zip_dir, raw)
        _save(zip_dir, ch.rewrite_zip(raw))
        _save(zip_dir, _zip64(raw))
    _save(zip_dir, ch.rewrite_zip(small_raw, drop=("byteorder",), rename_folder="x"))
    # a bare archive around a hostile pickle, and one with a storage, as torch.save lays them out
    _save(zip_dir, ch.zip_with_pickle(ch.p_top(network_weights=ch.p_rebuild(
        ch.p_storage(ch.p_global("torch", "FloatStorage")))), {"0": b"\x00" * 16}))

    # ---- pickles ----
    pkl_dir = os.path.join(out, "pickle")
    _save(pkl_dir, _pickle_of(template_raw))
    _save(pkl_dir, _pickle_of(small_raw))
    for pkl in _test_pickles():
        _save(pkl_dir, pkl)

    # ---- plans / dataset pairs ----
    plans_dir = os.path.join(out, "plans")

    def plans_seed(configuration: str, plans: bytes, dataset: bytes) -> None:
        index = CONFIGURATIONS.index(configuration) if configuration in CONFIGURATIONS else 0
        _save(plans_dir, bytes([index]) + plans + SEPARATOR + dataset)

    for _, plans, dataset in plans_cases.variants():
        for configuration in ("3d_fullres", "2d", "3d_cascade_fullres"):
            plans_seed(configuration, json.dumps(plans, indent=1).encode(), json.dumps(dataset).encode())
    with open(os.path.join(out, "dataset_default.json"), "w") as f:
        json.dump(plans_cases.DATASET, f)

    # ---- real nnU-Net model folders ----
    for model_dir, fixture in _fixture_folders(not args.no_fixtures):
        model_dir = str(model_dir)
        with open(os.path.join(model_dir, "plans.json"), "rb") as f:
            plans = f.read()
        with open(os.path.join(model_dir, "dataset.json"), "rb") as f:
            dataset = f.read()
        configuration = os.path.basename(model_dir).rsplit("__", 1)[-1]
        plans_seed(configuration, plans, dataset)
        for fold in sorted(os.listdir(model_dir)):
            fold_dir = os.path.join(model_dir, fold)
            if not fold.startswith("fold_"):
                continue
            for name in sorted(os.listdir(fold_dir)):
                if name.endswith(".pth"):
                    with open(os.path.join(fold_dir, name), "rb") as f:
                        _save(pkl_dir, _pickle_of(f.read()))
    for target in ("zip", "pickle", "plans"):
        print(f"make_seeds: {target}: {len(os.listdir(os.path.join(out, target)))} seeds")


if __name__ == "__main__":
    main()
