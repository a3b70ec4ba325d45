"""Pipeline.predict_logits against nnU-Net's own predictor on the same preprocessed volume:
exact mode is bit for bit nnUNetPredictor.predict_logits_from_preprocessed_data on the CPU, eager,
scripted and from the exported file in a fresh process; fast mode's difference is measured."""
from __future__ import annotations

import json
import os

import pytest
import torch

import nnunet_export
from fresh_process import run_fresh

# One thread: the reference and the pipeline run the same kernels in the same order (nnU-Net
# caps torch's threads at 8 inside its prediction; 1 stays 1).
THREADS = 1

# (fixture, folds, spatial shape): several tiles per axis, odd sizes, smaller than the patch on
# some or every axis, 2-D slice by slice, ResEnc, BatchNorm, regions, a fold ensemble.
CASES = [
    ("3d_fullres", (0,), [13, 27, 35]),
    ("3d_fullres", (0,), [5, 7, 9]),
    ("3d_fullres", (0,), [10, 45, 19]),
    ("2d", (0,), [3, 30, 61]),
    ("2d", (0,), [1, 20, 20]),
    ("resenc", (0,), [9, 19, 15]),
    ("bn", (0,), [21, 41, 23]),
    ("regions", (0,), [11, 21, 21]),
    ("multifold", (0, 1, 2), [12, 25, 22]),
]
# (tile_step_size, use_gaussian, use_mirroring) beyond nnU-Net's defaults, on 3d_fullres.
SETTINGS = [(0.75, True, True), (1.0, True, False), (0.5, False, True), (0.3, False, False)]


def _id(case):
    name, folds, shape = case
    return f"{name}-{'_'.join(map(str, folds))}-{'x'.join(map(str, shape))}"


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int16)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))


@pytest.fixture(scope="module")
def reference(nnunet_fixture):
    """nnU-Net's logits for (fixture, folds, shape, settings), computed once each."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictors, cache = {}, {}

    def get(name, folds, shape, step=0.5, gaussian=True, mirroring=True):
        key = (name, folds, tuple(shape), step, gaussian, mirroring)
        if key not in cache:
            if (name, folds, step, gaussian, mirroring) not in predictors:
                predictor = nnUNetPredictor(tile_step_size=step, use_gaussian=gaussian, use_mirroring=mirroring,
                                            perform_everything_on_device=False, device=torch.device("cpu"),
                                            verbose=False, allow_tqdm=False)
                predictor.initialize_from_trained_model_folder(str(nnunet_fixture(name).model_dir), folds,
                                                               "checkpoint_final.pth")
                predictors[(name, folds, step, gaussian, mirroring)] = predictor
            torch.set_num_threads(THREADS)
            data = volume(nnunet_fixture, name, shape)
            cache[key] = (data, predictors[(name, folds, step, gaussian, mirroring)]
                          .predict_logits_from_preprocessed_data(data.clone()))
        return cache[key]

    return get


def volume(nnunet_fixture, name, shape):
    config = nnunet_export.read_model_config(nnunet_fixture(name).model_dir)
    generator = torch.Generator().manual_seed(sum(shape))
    return torch.randn([config.num_input_channels] + list(shape), generator=generator, dtype=torch.float32)


@pytest.fixture(scope="module")
def models(nnunet_fixture):
    loaded = {}

    def get(name, folds):
        if (name, folds) not in loaded:
            loaded[(name, folds)] = nnunet_export.load_complete(nnunet_fixture(name).model_dir, folds=list(folds))
        return loaded[(name, folds)]

    return get


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_exact_is_bit_identical_to_nnunet_eager_and_scripted(case, reference, models):
    name, folds, shape = case
    data, expected = reference(name, folds, shape)
    pipeline = models(name, folds).pipeline()
    torch.set_num_threads(THREADS)
    got = pipeline.predict_logits(data)
    assert got.dtype == torch.float16 and list(got.shape) == list(expected.shape)
    assert _same_bits(got, expected), f"{int((_bits(got) != _bits(expected)).sum())} logits differ"
    scripted = torch.jit.script(pipeline)
    assert _same_bits(scripted.predict_logits(data), expected)


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: f"step{s[0]}-gauss{int(s[1])}-mirror{int(s[2])}")
def test_exact_follows_the_settings_bit_for_bit(settings, reference, models):
    step, gaussian, mirroring = settings
    data, expected = reference("3d_fullres", (0,), [13, 27, 35], step, gaussian, mirroring)
    pipeline = models("3d_fullres", (0,)).pipeline(tile_step_size=step, use_gaussian=gaussian,
                                                   use_mirroring=mirroring)
    assert _same_bits(pipeline.predict_logits(data), expected)


def test_settings_change_the_result(reference, models):
    # The parity above would be empty if the settings were ignored: they change nnU-Net's bits.
    data, default = reference("3d_fullres", (0,), [13, 27, 35])
    _, no_mirror = reference("3d_fullres", (0,), [13, 27, 35], 1.0, True, False)
    assert not _same_bits(default, no_mirror)
    assert not _same_bits(models("3d_fullres", (0,)).pipeline(use_mirroring=False).predict_logits(data), default)


FAST_REPORT = os.environ.get("NNUNET_EXPORT_FAST_REPORT")  # a JSON file to collect the numbers in


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_fast_mode_differs_from_nnunet_only_at_fp16_precision(case, reference, models):
    name, folds, shape = case
    data, expected = reference(name, folds, shape)
    torch.set_num_threads(THREADS)
    got = models(name, folds).pipeline(mode="fast").predict_logits(data)
    assert got.dtype == torch.float16 and got.shape == expected.shape
    difference = (got.float() - expected.float()).abs()
    # Batched convolutions differ from one-by-one ones around 1e-6; after nnU-Net's fp16 sums
    # that is a few fp16 ulp of the largest logit, never more.
    largest = float(expected.float().abs().max())
    ulp = 2.0 ** (torch.tensor(largest).log2().floor().item() - 10)
    assert float(difference.max()) <= 8 * ulp
    if expected.shape[0] > 1 and not models(name, folds).info.config.has_regions:
        changed = int((got.argmax(0) != expected.argmax(0)).sum())
        assert changed <= 0.01 * expected[0].numel()
    else:
        changed = int(((got > 0) != (expected > 0)).sum())
    if FAST_REPORT:
        rows = json.loads(open(FAST_REPORT).read()) if os.path.exists(FAST_REPORT) else {}
        rows[_id(case)] = {"max_abs_diff": float(difference.max()), "max_abs_logit": float(expected.float().abs().max()),
                           "changed_voxels": changed, "voxels": int(expected[0].numel())}
        with open(FAST_REPORT, "w") as f:
            json.dump(rows, f, indent=1)


_FRESH_BODY = r"""
import torch
torch.set_num_threads(1)
module = torch.jit.load(sys.argv[1], map_location="cpu")
data = torch.load(sys.argv[2], weights_only=True)
torch.save(module.predict_logits(data), sys.argv[3])
"""


@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[8]], ids=_id)
def test_exported_pipeline_gives_the_same_bits_in_a_fresh_process(case, reference, models, tmp_path):
    name, folds, shape = case
    data, expected = reference(name, folds, shape)
    path = tmp_path / "pipeline.pt"
    report = nnunet_export.to_torchscript(models(name, folds).pipeline(), path)
    assert report.verified and report.max_abs_diff == 0.0
    metadata = nnunet_export.read_metadata(path)
    config = models(name, folds).info.config
    assert metadata["pipeline"] == {
        "tile_step_size": 0.5, "use_gaussian": True, "use_mirroring": True, "mode": "exact", "folds": len(folds),
        "preprocessing": {"transpose_forward": config.transpose_forward, "spacing": config.spacing,
                          "normalization_schemes": config.normalization_schemes,
                          "use_mask_for_norm": config.use_mask_for_norm,
                          "resampling": {k: v for k, v in config.resampling.items() if k != "seg"}}}
    torch.save(data, tmp_path / "data.pt")
    result = run_fresh(_FRESH_BODY, path, tmp_path / "data.pt", tmp_path / "out.pt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _same_bits(torch.load(tmp_path / "out.pt", weights_only=True), expected)
