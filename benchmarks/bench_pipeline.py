"""Benchmark: Pipeline.predict_logits against nnUNetPredictor.predict_logits_from_preprocessed_data
on the same preprocessed volume and the same model, in the same process. Ours is the scripted
pipeline, as an exported file runs it.

`run(size)` returns rows (ratio = ours / baseline, lower is better). Exact mode must never be
slower than nnU-Net (target 1.0); fast mode (mirror passes batched) must be 1.5x faster (target
0.67). Results are checked after timing: exact mode bit-identical to nnU-Net's logits, fast mode
within a few fp16 ulp. Size "tiny" uses the test fixtures (3d_fullres, ResEnc, a 3-fold
ensemble); "realistic" the 31 M-parameter 3d_fullres model, 1 fold and 5 folds, on a volume of two
tiles along the first axis.

    python benchmarks/bench_pipeline.py [tiny|realistic]
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import median_seconds, row  # noqa: E402  (puts the repo and tests/ on sys.path)

import nnunet_fixtures  # noqa: E402
import nnunet_export  # noqa: E402
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor  # noqa: E402

BENCHMARK = "predict_logits"
REPEATS = {"tiny": 3, "realistic": 1}
# nnU-Net caps torch at 8 threads while predicting; both sides get the machine's threads.
TARGETS = {"exact": 1.0, "fast": 1 / 1.5}

# (fixture, folds, volume as a multiple of the patch per axis) per size.
CASES = {
    "tiny": [("3d_fullres", (0,), (1.3, 2.5, 1.7)), ("resenc", (0,), (1.5, 1.5, 1.5)),
             ("multifold", (0, 1, 2), (1.3, 2.5, 1.7))],
    "realistic": [("3d_fullres", (0,), (1.5, 1.0, 1.0)), ("3d_fullres", (0, 1, 2, 3, 4), (1.5, 1.0, 1.0))],
}


def _volume(config, scale):
    shape = [max(1, int(round(p * s))) for p, s in zip(config.patch_size, scale)]
    generator = torch.Generator().manual_seed(7)
    return torch.randn([config.num_input_channels] + shape, generator=generator, dtype=torch.float32)


def _predictor(model_dir, folds):
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=False, device=torch.device("cpu"),
                                verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_dir), folds, "checkpoint_final.pth")
    return predictor


def _model_dir(name, size, folds):
    fixture = nnunet_fixtures.get_fixture(name, size)
    if len(folds) > 1 and size == "realistic":
        return nnunet_fixtures.five_fold_model_dir(fixture) if hasattr(nnunet_fixtures, "five_fold_model_dir") \
            else fixture.model_dir
    return fixture.model_dir


def run(size: str) -> list:
    rows = []
    threads = torch.get_num_threads()
    for name, folds, scale in CASES[size]:
        model_dir = _model_dir(name, size, folds)
        model = nnunet_export.load_complete(model_dir, folds=list(folds))
        predictor = _predictor(model_dir, folds)
        data = _volume(model.info.config, scale)
        # Scripted, as an exported file runs (the eager module is the same code, run by Python).
        pipelines = {mode: torch.jit.script(model.pipeline(mode=mode)) for mode in TARGETS}

        def baseline():
            torch.set_num_threads(threads)
            return predictor.predict_logits_from_preprocessed_data(data.clone())

        # Interleaved: the baseline is timed between the two modes of ours.
        exact_s = median_seconds(lambda: pipelines["exact"].predict_logits(data), REPEATS[size])
        baseline_s = median_seconds(baseline, REPEATS[size])
        fast_s = median_seconds(lambda: pipelines["fast"].predict_logits(data), REPEATS[size])
        expected = baseline()
        exact = pipelines["exact"].predict_logits(data)
        fast = pipelines["fast"].predict_logits(data)
        case = f"{name} {len(folds)} fold(s), volume {list(data.shape[1:])}, patch {model.info.config.patch_size}"
        same = torch.equal(exact.view(torch.int16), expected.view(torch.int16))
        rows.append(row(BENCHMARK, f"exact: {case}", exact_s, baseline_s, TARGETS["exact"], same,
                        "bit-identical to nnU-Net" if same else "NOT bit-identical"))
        difference = float((fast.float() - expected.float()).abs().max())
        largest = float(expected.float().abs().max())
        close = difference <= 8 * 2.0 ** (torch.tensor(largest).log2().floor().item() - 10)
        changed = int((fast.argmax(0) != expected.argmax(0)).sum())
        rows.append(row(BENCHMARK, f"fast: {case}", fast_s, baseline_s, TARGETS["fast"], close,
                        f"max |diff| {difference:.3g} (max |logit| {largest:.3g}), argmax changed in {changed} voxels"))
    return rows


if __name__ == "__main__":
    import json

    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "tiny"), indent=1))
