"""Benchmark: the pipeline's preprocessing and export back to the image's geometry against
nnU-Net's own functions (DefaultPreprocessor.run_case_npy and
convert_predicted_logits_to_segmentation_with_correct_shape) on a CT-like volume, same process.

Ours is scripted, as an exported file runs it. The CT is 0.8 x 0.8 mm in-plane with 2.5 mm
slices, resampled to the 3d_fullres fixture's plans spacing (2, 1, 1): nnU-Net's separate-z path
(order 3 in-plane, nearest along z), and back for the logits (order 1 in-plane). The export runs
with 3 classes (the fixture's labels) and with 15 (the same plans, a dataset.json with 15
labels). Each row is ok when ours is at least 3x faster (ratio <= 1/3) and bit-identical:
preprocessed data torch.equal to nnU-Net's, the segmentation equal in every voxel. Peak memory
(RSS growth during the call) is given beside nnU-Net's in the notes.

    python benchmarks/bench_image_path.py [tiny|realistic]
"""
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import measure, row  # noqa: E402  (puts the repo and tests/ on sys.path)

import nnunet_fixtures  # noqa: E402
import nnunet_export  # noqa: E402
from nnunet_export.pipeline.build import build_prediction_export, build_preprocessing  # noqa: E402
from pipeline_reference import nnunet_export_logits, nnunet_preprocess  # noqa: E402

REPEATS = {"tiny": 3, "realistic": 1}
TARGET = 1 / 3
# (z, y, x) of the CT per size; spacing (z, y, x) in mm.
SHAPES = {"tiny": (48, 128, 128), "realistic": (300, 512, 512)}
SPACING = [2.5, 0.8, 0.8]
CLASS_COUNTS = (3, 15)


def _ct(shape):
    """A CT-like image: air (-1000) around a water-like body with bone-like structures."""
    generator = np.random.default_rng(5)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    body = (y ** 2 + x ** 2) < 0.8
    image = np.where(body, 40.0, -1000.0) + generator.normal(0, 20, shape)
    image[body & ((y - 0.2) ** 2 + (x + 0.3) ** 2 < 0.02)] = 900.0
    return image.astype(np.float32)[None]


def _logits(classes, shape):
    """Smooth fp16 logits (a low-resolution random field upsampled), as a network gives them."""
    coarse = torch.randn([1, classes] + [max(2, s // 16) for s in shape], generator=torch.Generator().manual_seed(9))
    return (torch.nn.functional.interpolate(coarse, size=list(shape), mode="trilinear")[0] * 6).half()


def _model_with_labels(model_dir: Path, classes: int, into: Path) -> Path:
    """plans.json and a dataset.json with `classes` labels: what the export reads."""
    into.mkdir()
    shutil.copy(model_dir / "plans.json", into / "plans.json")
    dataset = json.loads((model_dir / "dataset.json").read_text())
    dataset["labels"] = {"background": 0, **{f"label{i}": i for i in range(1, classes)}}
    (into / "dataset.json").write_text(json.dumps(dataset))
    return into


def _memory_note(ours, baseline) -> str:
    return f"peak RSS growth {ours / 2**20:.0f} MiB vs nnU-Net {baseline / 2**20:.0f} MiB"


def run(size: str) -> list:
    rows = []
    threads = torch.get_num_threads()
    fixture = nnunet_fixtures.get_fixture("3d_fullres")
    model_dir = Path(fixture.model_dir)
    config = nnunet_export.read_model_config(model_dir)
    image = _ct(SHAPES[size])
    preprocessing = torch.jit.script(build_preprocessing(config))
    spacing = torch.tensor(SPACING, dtype=torch.float64)
    source = torch.from_numpy(image)

    def ours_preprocess():
        return preprocessing(source, spacing)

    def baseline_preprocess():
        result = nnunet_preprocess(model_dir, config.configuration, image, SPACING)
        torch.set_num_threads(threads)
        return result

    ours_s, (data, properties), ours_peak = measure(ours_preprocess, REPEATS[size])
    baseline_s, (expected, _, nnunet_properties), baseline_peak = measure(baseline_preprocess, REPEATS[size])
    same = tuple(data.shape) == expected.shape and torch.equal(data, torch.from_numpy(expected))
    memory = _memory_note(ours_peak, baseline_peak)
    case = f"CT {list(image.shape[1:])} at {SPACING} mm -> {list(data.shape[1:])} at {config.spacing} (separate z)"
    rows.append(row("preprocess", case, ours_s, baseline_s, TARGET, same,
                    ("bit-identical" if same else "NOT bit-identical") + "; " + memory))

    with tempfile.TemporaryDirectory() as folder:
        for classes in CLASS_COUNTS:
            labelled = _model_with_labels(model_dir, classes, Path(folder) / f"c{classes}")
            labelled_config = nnunet_export.read_model_config(labelled, config.configuration)
            export = torch.jit.script(build_prediction_export(labelled_config))
            logits = _logits(classes, list(data.shape[1:]))

            def ours_export():
                return export.segmentation(logits, properties)

            def baseline_export():
                result = nnunet_export_logits(labelled, config.configuration, logits, nnunet_properties)
                torch.set_num_threads(threads)
                return result

            ours_s, got, ours_peak = measure(ours_export, REPEATS[size])
            baseline_s, wanted, baseline_peak = measure(baseline_export, REPEATS[size])
            got = got.numpy()
            same = got.dtype == wanted.dtype and np.array_equal(got, wanted)
            memory = _memory_note(ours_peak, baseline_peak)
            changed = "" if same else f", {int((got != wanted).sum())} voxels differ"
            rows.append(row("export", f"{classes} classes, logits {list(logits.shape[1:])} -> {list(got.shape)}",
                            ours_s, baseline_s, TARGET, same,
                            ("identical segmentation" if same else "NOT identical" + changed) + "; " + memory))
    return rows


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "tiny"), indent=1))
