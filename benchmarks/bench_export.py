"""Benchmark: to_torchscript against a hand-written torch.jit.trace of nnU-Net's own network.

`run(size)` returns rows {"benchmark", "case", "ours_s", "baseline_s", "ratio", "target", "ok",
"notes"} (ratio = ours / baseline, lower is better). The model is the 3d_fullres fixture of
tests/nnunet_fixtures.py at `size` ("tiny" or "realistic"); set NNUNET_EXPORT_BENCH_MODEL_DIR to a
trained model folder (fold_0/checkpoint_final.pth) to time that instead.

Baseline, as a user writes it today: ``nnUNetPredictor.initialize_from_trained_model_folder``
(fold 0), ``network.eval()``, ``torch.jit.trace`` on a patch, ``torch.jit.save``.
Ours: ``to_torchscript(model_dir, path, folds=0)`` (safe load, script, save, reload, verify on two
input sizes, bitwise weight check) and the same with ``verify=False``.

Rows: export time; file size; forward latency of the exported file against the eager nnU-Net
network on one patch (target ratio <= 1.02). Repeats are interleaved (ours, baseline, ours, ...)
after warm-up runs, and medians are reported; one intra-op thread on both sides so that other
load on a shared machine hits both alike. Results are checked after timing: our file's logits
equal the eager network's and the baseline file's.

    PYTHONPATH=. python benchmarks/bench_export.py tiny
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import row  # noqa: E402  (puts the repo and tests/ on sys.path)

from nnunet_export import to_torchscript  # noqa: E402

BENCHMARK = "export"
LATENCY_TARGET = 1.02
TOLERANCE = 1e-6
# (export repeats, forward repeats, forward warm-up runs) per size
REPEATS = {"tiny": (3, 30, 5), "realistic": (1, 3, 2)}
THREADS = 1


def _model_dir(size: str) -> Path:
    given = os.environ.get("NNUNET_EXPORT_BENCH_MODEL_DIR")
    if given:
        return Path(given)
    from nnunet_fixtures import get_fixture

    return get_fixture("3d_fullres", size=size).model_dir


def _nnunet_network(model_dir: Path) -> torch.nn.Module:
    # nnU-Net's trainer lookup needs the tests' shim where torchvision is broken (see its docstring)
    from primus_import_shim import skip_primus_trainers_if_torchvision_is_broken

    skip_primus_trainers_if_torchvision_is_broken()
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(device=torch.device("cpu"), verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_dir), use_folds=(0,),
                                                   checkpoint_name="checkpoint_final.pth")
    network = predictor.network
    network.eval()
    return network


def _patch_input(model_dir: Path) -> torch.Tensor:
    plans = json.loads((model_dir / "plans.json").read_text())
    dataset = json.loads((model_dir / "dataset.json").read_text())
    patch = plans["configurations"]["3d_fullres"]["patch_size"]
    channels = len(dataset.get("channel_names") or dataset["modality"])
    return torch.randn((1, channels, *patch), generator=torch.Generator().manual_seed(0))


def _baseline_export(model_dir: Path, path: Path, example: torch.Tensor) -> None:
    network = _nnunet_network(model_dir)
    with torch.no_grad():
        traced = torch.jit.trace(network, (example,))
    torch.jit.save(traced, str(path))


def _data_bytes(path: Path) -> int:
    with zipfile.ZipFile(path) as archive:
        return sum(i.file_size for i in archive.infolist()
                   if "/data/" in i.filename and i.filename.split("/data/")[1].isdigit())


def _interleaved(cases: dict, repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, function in cases.items():
            started = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def run(size: str = "tiny") -> list[dict]:
    if size not in REPEATS:
        raise ValueError(f"size must be one of {sorted(REPEATS)}, got {size!r}")
    export_repeats, forward_repeats, warmup = REPEATS[size]
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        return _run(size, export_repeats, forward_repeats, warmup)
    finally:
        torch.set_num_threads(previous_threads)


def _run(size: str, export_repeats: int, forward_repeats: int, warmup: int) -> list[dict]:
    model_dir = _model_dir(size)
    example = _patch_input(model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        ours_path, ours_nv_path, base_path = Path(tmp, "ours.pt"), Path(tmp, "ours_noverify.pt"), Path(tmp, "base.pt")
        reports = []
        export_times = _interleaved({
            "ours": lambda: reports.append(to_torchscript(model_dir, ours_path, folds=0)),
            "ours_noverify": lambda: to_torchscript(model_dir, ours_nv_path, folds=0, verify=False),
            "baseline": lambda: _baseline_export(model_dir, base_path, example),
        }, export_repeats)
        report = reports[-1]

        ours_file, base_file = ours_path.stat().st_size, base_path.stat().st_size
        ours_data, base_data = _data_bytes(ours_path), _data_bytes(base_path)

        eager = _nnunet_network(model_dir)
        exported = torch.jit.load(str(ours_path))
        baseline_file = torch.jit.load(str(base_path))

        def forward(module):
            def call():
                with torch.no_grad():
                    return module(example)
            return call

        cases = {"exported": forward(exported), "eager": forward(eager), "baseline_file": forward(baseline_file)}
        for _ in range(warmup):  # the TorchScript executor profiles and optimises on the first calls
            for call in cases.values():
                call()
        latency = _interleaved(cases, forward_repeats)

        # correctness after timing
        with torch.no_grad():
            expected = eager(example)
            ours_out = exported(example)
            base_out = baseline_file(example)
        ours_diff = float((ours_out.double() - expected.double()).abs().max())
        base_diff = float((base_out.double() - expected.double()).abs().max())
        correct = (report.verified and report.max_abs_diff <= TOLERANCE and ours_diff <= TOLERANCE
                   and ours_out.shape == expected.shape)

    params = sum(p.numel() for p in eager.parameters())
    context = (f"{size}: {model_dir.name}, patch {tuple(example.shape)}, {params / 1e6:.2f}M parameters, "
               f"torch {torch.__version__}, {THREADS} thread(s)")
    return [
        row(BENCHMARK, "export time: to_torchscript (load+script+save+verify) vs predictor+trace+save",
            export_times["ours"], export_times["baseline"], None, correct,
            f"median of {export_repeats} interleaved; ours also reloads the file and checks 2 input sizes "
            f"and every weight bit for bit; {context}"),
        row(BENCHMARK, "export time: to_torchscript(verify=False) vs predictor+trace+save",
            export_times["ours_noverify"], export_times["baseline"], None, correct,
            f"median of {export_repeats} interleaved"),
        row(BENCHMARK, "file size (bytes in ours_s/baseline_s columns)", float(ours_file), float(base_file), None,
            correct, f"ours {ours_file} B (data/* {ours_data} B, unique weights {report.weight_bytes} B, "
            f"overhead {ours_file - ours_data} B = {100 * (ours_file - ours_data) / ours_file:.1f}% incl. metadata); "
            f"baseline {base_file} B (data/* {base_data} B)"),
        row(BENCHMARK, "forward latency: exported file vs eager nnU-Net network", latency["exported"],
            latency["eager"], LATENCY_TARGET, correct,
            f"median of {forward_repeats} interleaved after {warmup} warm-up runs each; max |diff| vs eager "
            f"{ours_diff:.3g} (baseline traced file {base_diff:.3g}); {context}"),
        row(BENCHMARK, "forward latency: exported file vs baseline traced file", latency["exported"],
            latency["baseline_file"], None, correct, "report only"),
    ]


if __name__ == "__main__":
    for result in run(sys.argv[1] if len(sys.argv) > 1 else "tiny"):
        print(json.dumps(result))
