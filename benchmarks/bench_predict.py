"""Benchmark: `nnunet-export predict` end to end (image files in, segmentation files out) against
nnU-Net's nnUNetPredictor.predict_from_files as nnUNetv2_predict -device cpu runs it (3
preprocessing and 3 export worker processes, torch at the machine's thread count), on the same
folder of cases, in the same run.

Both sides are timed from the model on disk to the last file written: ours is
nnunet_export.predict(MODEL, input_folder, output_folder) with MODEL the exported pipeline file
(what a deployment runs) and, in a second row, the model folder (load_complete included);
nnU-Net's side is initialize_from_trained_model_folder + predict_from_files
(tests/predict_reference.py). Python start-up and imports are not timed on either side.

A row is ok when ours is at least 1.5x faster (ratio <= 1/1.5) and its files are identical to
nnU-Net's: the same case files, every voxel and dtype equal, and the same spacing, origin and
direction. Peak memory beside nnU-Net's in the notes: the proportional set size (PSS: resident
pages, shared ones divided among the processes mapping them) summed over this process and its
child processes (nnU-Net's spawned workers, each importing torch; ours has none), sampled every
10 ms, growth above the level before the run. The process count includes multiprocessing's
resource tracker once nnU-Net has started it.

Sizes: "tiny" is 4 small CT-like cases (about 30 x 60 x 60 at spacing (2.5, 0.9, 0.9) mm) with
the tiny 3d_fullres test fixture; "realistic" 6 cases up to 80 x 200 x 200 with the same tiny
model. The realistic 31 M-parameter model is not used: its sliding window over CT-sized cases
would take many minutes per case on this 2-core CPU, where the network, identical on both sides,
would hide the file, preprocessing and export work this benchmark compares.

    python benchmarks/bench_predict.py [tiny|realistic]
"""
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import median_seconds, peak_growth, row  # noqa: E402  (puts the repo and tests/ on sys.path)

import nnunet_fixtures  # noqa: E402
import nnunet_export  # noqa: E402
from predict_reference import nnunet_predict_folder, read_segmentation, write_case_folder  # noqa: E402
from preprocessing_cases import RawCase  # noqa: E402

BENCHMARK = "predict"
REPEATS = {"tiny": 1, "realistic": 1}
TARGET = 1 / 1.5
FIXTURE = "3d_fullres"
FOLDS = (0,)
SPACING = (2.5, 0.9, 0.9)
SHAPES = {
    "tiny": [(30, 60, 60), (26, 56, 64), (32, 64, 52), (28, 60, 60)],
    "realistic": [(40, 120, 120), (60, 160, 160), (80, 200, 200), (50, 140, 180), (80, 180, 200), (30, 100, 100)],
}
SAMPLE_INTERVAL_S = 0.01


def _cases(size: str, target_spacing) -> dict:
    """CT-like images (tests/preprocessing_cases.py's generator), deterministic per index."""
    cases = {}
    for index, shape in enumerate(SHAPES[size]):
        raw = RawCase(f"bench-{size}-{index}", FIXTURE, "ct", shape, SPACING, tuple(target_spacing))
        cases[f"ct_{index:03d}"] = raw.image()
    return cases


def _descendants(pid: int) -> list:
    """Child processes of `pid`, recursively (from /proc/PID/task/TID/children)."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{current}/task/{task}/children") as f:
                    children = [int(c) for c in f.read().split()]
            except OSError:
                continue
            found += children
            pending += children
    return found


def _memory_of(pid: int) -> int:
    """Proportional set size of `pid` (its resident pages, each shared page divided among the
    processes that map it), from /proc/PID/smaps_rollup; 0 when the process has ended."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


def peak_tree_memory_growth(function) -> tuple:
    """(peak growth of the memory (PSS) summed over this process and its descendants while
    `function` runs, the most descendants seen at once), sampled every SAMPLE_INTERVAL_S."""
    me = os.getpid()
    most = 0

    def total() -> int:
        nonlocal most
        children = _descendants(me)
        most = max(most, len(children))
        return _memory_of(me) + sum(_memory_of(c) for c in children)

    growth = peak_growth(function, total, SAMPLE_INTERVAL_S)
    return growth, most


def _segmentations(folder: Path) -> dict:
    return {p.name: read_segmentation(p) for p in sorted(folder.glob("*.nii.gz"))}


def _compare(ours: dict, theirs: dict) -> tuple:
    """(identical, note) for two {file name: (array, spacing, origin, direction)}."""
    if set(ours) != set(theirs):
        return False, f"files differ: ours {sorted(ours)}, nnU-Net {sorted(theirs)}"
    differences = []
    for name, (array, *geometry) in theirs.items():
        got, *got_geometry = ours[name]
        if got.dtype != array.dtype or got.shape != array.shape:
            differences.append(f"{name}: {got.dtype}{list(got.shape)} vs {array.dtype}{list(array.shape)}")
        elif not np.array_equal(got, array):
            differences.append(f"{name}: {int((got != array).sum())} voxels differ")
        elif tuple(got_geometry) != tuple(geometry):
            differences.append(f"{name}: geometry {got_geometry} vs {geometry}")
    if differences:
        return False, "NOT identical: " + "; ".join(differences)
    return True, f"{len(theirs)} files identical (voxels, dtype, spacing/origin/direction)"


def _memory(growth: int, processes: int) -> str:
    return f"{growth / 2**20:.0f} MiB" + (f" ({processes + 1} processes)" if processes else "")


def run(size: str) -> list:
    threads = torch.get_num_threads()
    fixture = nnunet_fixtures.get_fixture(FIXTURE)
    model_dir = Path(fixture.model_dir)
    config = nnunet_export.read_model_config(model_dir)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        cases = _cases(size, config.spacing)
        write_case_folder(root / "in", cases)
        exported = root / "model.pt"
        nnunet_export.load_complete(model_dir, folds=list(FOLDS)).pipeline().to_torchscript(exported)
        outputs = {"file": root / "ours_file", "folder": root / "ours_folder", "nnunet": root / "nnunet"}

        def cli_threads():
            torch.set_num_threads(os.cpu_count())  # nnUNetv2_predict -device cpu does this first

        def ours_file():
            cli_threads()
            nnunet_export.predict(exported, root / "in", outputs["file"], progress=False)

        def ours_folder():
            cli_threads()
            nnunet_export.predict(model_dir, root / "in", outputs["folder"], folds=list(FOLDS), progress=False)

        def baseline():
            cli_threads()
            nnunet_predict_folder(model_dir, FOLDS, root / "in", outputs["nnunet"])

        try:
            # Interleaved: the baseline is timed between the two ways of running ours.
            times = {"file": median_seconds(ours_file, REPEATS[size]),
                     "nnunet": median_seconds(baseline, REPEATS[size]),
                     "folder": median_seconds(ours_folder, REPEATS[size])}
            # One more run each under the memory sampler; its files are the ones compared.
            memory = {"file": peak_tree_memory_growth(ours_file), "nnunet": peak_tree_memory_growth(baseline),
                      "folder": peak_tree_memory_growth(ours_folder)}
        finally:
            torch.set_num_threads(threads)
        expected = _segmentations(outputs["nnunet"])
        voxels = sum(int(np.prod(image.shape[1:])) for image, _ in cases.values())
        described = (f"{len(cases)} CT cases {[list(s) for s in SHAPES[size]]} at {list(SPACING)} mm "
                     f"({voxels / 1e6:.2f} Mvoxels), {FIXTURE} fold(s) {list(FOLDS)}")
        for kind, model in (("file", "exported file"), ("folder", "model folder")):
            same, note = _compare(_segmentations(outputs[kind]), expected)
            peak = (f"peak PSS growth {_memory(*memory[kind])} vs nnU-Net {_memory(*memory['nnunet'])}; "
                    f"{times['nnunet'] / len(cases):.2f} s/case nnU-Net, {times[kind] / len(cases):.2f} s/case ours")
            rows.append(row(BENCHMARK, f"{model}: {described}", times[kind], times["nnunet"], TARGET, same,
                            f"{note}; {peak}"))
    return rows


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "tiny"), indent=1))
