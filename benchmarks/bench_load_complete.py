"""Benchmark: load_complete against nnUNetPredictor.initialize_from_trained_model_folder.

`run(size)` returns rows {"benchmark", "case", "ours_s", "baseline_s", "ratio", "target", "ok",
"notes"}; time rows: ratio = ours_s / baseline_s (lower is better). Both sides read the same model
folder with a warm page cache, interleaved, in this process (median of repeats after a warm-up);
results are checked after timing (every fold's weights bit-identical to the predictor's, logits
within 1e-5 of nnU-Net's fold mean). Peak RSS is measured in fresh processes: VmHWM after the
call minus VmHWM of a process that imported the same modules and loaded nothing.

Sizes: "tiny" (the multifold fixture; a few thousand parameters per fold, so the 10x target is
reported but not applied, nor the RSS target: fixed Python and allocator costs dominate there) and
"realistic": nnU-Net's default 6-stage 3d_fullres PlainConvUNet (31 M parameters) and its ResEnc L
ResidualEncoderUNet (102 M). Five folds are made by copying fold 0's checkpoint with
init_args['fold'] rewritten (torch.save, optimizer state included as nnU-Net saves it), so the
extra folds hold fold 0's weights in separate files.

Besides the default call (weights copied out of the files, every CRC-32 checked), each case is
also timed with copy=False (weights stay in the files' private mappings, CRC-32 checked) and
copy=False, verify_crc=False (nothing read up front but the pickles), against the same baseline
runs: the difference is the price of surviving in-place rewrites and of verifying.

    python benchmarks/bench_load_complete.py tiny
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
from timing import REPO_ROOT  # noqa: E402  (puts tests/ and the repo root on sys.path)

import nnunet_fixtures  # noqa: E402
import nnunet_export  # noqa: E402

FINAL = "checkpoint_final.pth"
SPEED_TARGET = 0.1  # ours_s / baseline_s: at least 10x faster
RSS_TARGET = 1.2    # peak RSS growth / weight bytes of the folds loaded
REPEATS = {"tiny": (5, 5), "realistic": (5, 3)}  # (1 fold, 5 folds)

_RSS_CHILD = r"""
import json, sys, time
mode, model_dir, folds = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
import torch
import nnunet_export, nnunet_export.loading, nnunet_export.architectures.build
import nnunet_export.model_config, nnunet_export.checkpoint
if mode.startswith("predictor"):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

def hwm():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM"))

started = time.perf_counter()
weights = 0
if mode == "ours":
    model = nnunet_export.load_complete(model_dir, folds=folds)
    weights = model.info.parameter_summary(model.network)[1]
elif mode == "predictor":
    p = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False, verbose=False,
                        allow_tqdm=False)
    p.initialize_from_trained_model_folder(model_dir, folds, "checkpoint_final.pth")
print(json.dumps({"hwm": hwm(), "seconds": time.perf_counter() - started, "weights": weights}))
"""


# (fixture variant, model folder glob under nnUNet_results/, label) of the realistic models.
REALISTIC_MODELS = (
    ("3d_fullres", "*/nnUNetTrainer__nnUNetPlans__3d_fullres", "3d_fullres"),
    ("resenc", "*/nnUNetTrainer__nnUNetResEncUNetLPlans__3d_fullres", "ResEnc L"),
)
# Zero-copy variants timed beside the default: (case suffix, load_complete keywords).
VARIANTS = (("copy=False", {"copy": False}), ("copy=False, verify_crc=False", {"copy": False, "verify_crc": False}))


def _realistic_model_dir(variant: str, folder_glob: str, label: str) -> tuple[Path, str, str]:
    """A realistic fixture's model folder; an already-built one from another cache key if the
    current key has none (building one trains a 31 M / 102 M-parameter network: minutes)."""
    key_dir = nnunet_fixtures.cache_root() / "realistic" / nnunet_fixtures.cache_key()
    if (key_dir / "variants" / variant).is_dir() or os.environ.get("NNUNET_EXPORT_BENCH_BUILD") == "1":
        return nnunet_fixtures.get_fixture(variant, size="realistic").model_dir, f"realistic {label} fixture", label
    found = sorted(nnunet_fixtures.cache_root().glob(f"realistic/*/variants/{variant}/nnUNet_results/{folder_glob}"))
    if not found:
        return nnunet_fixtures.get_fixture(variant, size="realistic").model_dir, f"realistic {label} fixture", label
    key = found[-1].parts[-6]
    return found[-1], f"realistic {label} fixture of cache key {key} (current key not built)", label


def _five_fold_folder(source: Path, fold0: Path, target: Path) -> Path:
    """A model folder with folds 0..4: fold 0 copied, folds 1..4 re-saved with their fold number."""
    target.mkdir(parents=True)
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        if (source / name).is_file():
            shutil.copy(source / name, target / name)
    checkpoint = torch.load(fold0, map_location="cpu", weights_only=False)
    for fold in range(5):
        (target / f"fold_{fold}").mkdir()
        checkpoint["init_args"]["fold"] = fold
        torch.save(checkpoint, target / f"fold_{fold}" / FINAL)
    return target


def _predictor_init(model_dir: Path, folds):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False,
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_dir), folds, FINAL)
    return predictor


def _time_interleaved(functions: dict, repeats: int) -> dict:
    """Median seconds of each function, called in turn `repeats` times after one warm-up round,
    so machine load hits all alike; each round starts one function later, so none always runs
    right after the baseline has freed its memory."""
    for fn in functions.values():
        fn()  # warm-up: imports, page cache
    names = list(functions)
    times = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            result = functions[name]()
            times[name].append(time.perf_counter() - started)
            del result
    return {name: statistics.median(values) for name, values in times.items()}


def _check(model_dir: Path, folds, small_input: bool, **options) -> str:
    """Weights bit-identical to the predictor's per fold; logits within 1e-5 of its fold mean."""
    model = nnunet_export.load_complete(model_dir, folds=folds, **options)
    predictor = _predictor_init(model_dir, folds)
    nets = model.network.networks if len(folds) > 1 else [model.network]
    for net, params in zip(nets, predictor.list_of_parameters):
        own = net.state_dict()
        assert set(own) == set(params) and all(torch.equal(own[k], v) for k, v in params.items())
    config = model.info.config
    shape = [int(p) for p in config.patch_size]
    if small_input:  # the smallest input the network takes: one voxel per axis at the bottleneck
        shape = [1] * len(shape)
        for stride in config.architecture["arch_kwargs"]["strides"]:
            stride = [stride] * len(shape) if isinstance(stride, int) else stride
            shape = [a * int(s) for a, s in zip(shape, stride)]
        shape = [2 * a for a in shape]
    x = torch.randn(1, config.num_input_channels, *shape, generator=torch.Generator().manual_seed(0))
    network = predictor.network.eval()
    with torch.no_grad():
        total = None
        for params in predictor.list_of_parameters:
            network.load_state_dict(params)
            y = network(x)
            total = y if total is None else total + y
        if len(folds) > 1:
            total /= len(folds)
        diff = float((model(x).double() - total.double()).abs().max())
    assert diff <= 1e-5, diff
    return f"checked: weights bit-identical, max |logit diff| {diff:.2g} on {tuple(x.shape)}"


def _rss(mode: str, model_dir: Path, folds) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", _RSS_CHILD, mode, str(model_dir), json.dumps(list(folds))],
                         capture_output=True, text=True, check=True, env=env, cwd=str(REPO_ROOT / "tests"))
    return json.loads(out.stdout.strip().splitlines()[-1])


def _row(case, ours_s, baseline_s, ratio, target, ok, notes):
    return {"benchmark": "load_complete", "case": case, "ours_s": ours_s, "baseline_s": baseline_s,
            "ratio": ratio, "target": target, "ok": bool(ok), "notes": notes}


def _speed_rows(short: str, origin: str, model_dir: Path, folds: tuple, repeats: int, size: str) -> list[dict]:
    functions = {"default": lambda: nnunet_export.load_complete(model_dir, folds=folds)}
    for name, options in VARIANTS:
        functions[name] = lambda options=options: nnunet_export.load_complete(model_dir, folds=folds, **options)
    functions["baseline"] = lambda: _predictor_init(model_dir, folds)
    medians = _time_interleaved(functions, repeats)
    target = SPEED_TARGET if size == "realistic" else None
    rows = []
    for name, options in (("default", {}), *VARIANTS):
        checked = _check(model_dir, folds, small_input=size == "realistic", **options)
        ratio = medians[name] / medians["baseline"]
        case = f"{short}, {len(folds)} fold(s) vs nnUNetPredictor.initialize_from_trained_model_folder"
        rows.append(_row(
            case if name == "default" else f"{case}, {name}", medians[name], medians["baseline"], ratio, target,
            target is None or ratio <= target,
            f"{origin}; median of {repeats} interleaved warm runs, {torch.get_num_threads()} threads; "
            f"{1 / ratio:.1f}x faster; {checked}"
            + ("" if target else "; target applies to realistic sizes only")))
    return rows


def _rss_row(short: str, model_dir: Path, folds: tuple, size: str) -> dict:
    baseline_hwm = _rss("baseline", model_dir, folds)["hwm"]
    baseline_pred_hwm = _rss("predictor-baseline", model_dir, folds)["hwm"]
    measured = _rss("ours", model_dir, folds)
    predictor = _rss("predictor", model_dir, folds)
    delta = measured["hwm"] - baseline_hwm
    pred_delta = predictor["hwm"] - baseline_pred_hwm
    rss_target = RSS_TARGET if size == "realistic" else None
    return _row(
        f"{short}, {len(folds)} fold(s) peak RSS growth / weight bytes", measured["seconds"],
        predictor["seconds"], delta / measured["weights"], rss_target,
        rss_target is None or delta <= RSS_TARGET * measured["weights"],
        f"VmHWM, fresh processes: ours +{delta / 2**20:.1f} MiB, nnUNetPredictor +{pred_delta / 2**20:.1f} "
        f"MiB ({pred_delta / measured['weights']:.2f}x weights), weights {measured['weights'] / 2**20:.1f} MiB; "
        "seconds: one cold-process call"
        + ("" if rss_target else "; target applies to realistic sizes only (fixed costs dominate)"))


def run(size: str = "tiny") -> list[dict]:
    if size not in REPEATS:
        raise ValueError(f"size must be one of {sorted(REPEATS)}, got {size!r}")
    if size == "tiny":
        models = [(nnunet_fixtures.get_fixture("multifold").model_dir, "tiny multifold fixture", "multifold")]
    else:
        models = [_realistic_model_dir(*spec) for spec in REALISTIC_MODELS]
    rows = []
    for source, origin, short in models:
        with tempfile.TemporaryDirectory() as tmp:
            five = _five_fold_folder(source, source / "fold_0" / FINAL, Path(tmp) / source.name)
            for folds, repeats in (((0,), REPEATS[size][0]), ((0, 1, 2, 3, 4), REPEATS[size][1])):
                model_dir = source if folds == (0,) else five
                for path in model_dir.glob("fold_*/" + FINAL):
                    path.read_bytes()  # warm page cache for both sides
                rows += _speed_rows(short, origin, model_dir, folds, repeats, size)
                rows.append(_rss_row(short, model_dir, folds, size))
    return rows


if __name__ == "__main__":
    for result in run(sys.argv[1] if len(sys.argv) > 1 else "tiny"):
        print(json.dumps(result))
