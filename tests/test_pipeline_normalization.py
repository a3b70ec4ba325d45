"""numpy's float32 reductions and nnU-Net's normalization schemes, bit for bit against the real
thing (numpy itself, nnunetv2's normalizer classes), eager and scripted."""
import numpy as np
import pytest
import torch

from nnunet_export.pipeline.errors import PipelineSettingsError
from nnunet_export.pipeline.normalization import (NORMALIZATION_SCHEMES, check_normalization_scheme,
                                                  normalize_channel)
from nnunet_export.pipeline.numpy_reductions import numpy_float32_mean_std, numpy_float32_sum

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
schemes = pytest.importorskip("nnunetv2.preprocessing.normalization.default_normalization_schemes")

SUM = [numpy_float32_sum, torch.jit.script(numpy_float32_sum)]
MEAN_STD = [numpy_float32_mean_std, torch.jit.script(numpy_float32_mean_std)]
NORMALIZE = [normalize_channel, torch.jit.script(normalize_channel)]
IDS = ["eager", "scripted"]
UNKNOWN = ("normalization scheme 'FooNormalization' is not one of nnU-Net's: CTNormalization, "
           "ZScoreNormalization, RescaleTo01Normalization, RGBTo01Normalization, NoNormalization")


def _data(rng, n):
    return (rng.standard_normal(n) * rng.uniform(1, 1000) + rng.uniform(-1e5, 1e5)).astype(np.float32)


def _bits(value) -> torch.Tensor:
    return torch.tensor(np.float32(value))


@pytest.mark.parametrize("fn", SUM, ids=IDS)
def test_sum_small_sizes_match_numpy(fn):
    rng = np.random.default_rng(0)
    for n in range(0, 301):
        a = _data(rng, n)
        assert torch.equal(fn(torch.from_numpy(a)), _bits(np.add.reduce(a))), n


@pytest.mark.parametrize("fn", SUM, ids=IDS)
def test_sum_large_sizes_and_shapes_match_numpy(fn):
    rng = np.random.default_rng(1)
    for n in [1023, 4097, 65543, 300_017, 2_999_999]:
        a = _data(rng, n)
        assert torch.equal(fn(torch.from_numpy(a)), _bits(np.add.reduce(a))), n
    a = _data(rng, 37 * 41 * 53).reshape(37, 41, 53)
    assert torch.equal(fn(torch.from_numpy(a)), _bits(np.add.reduce(a.ravel())))


def test_sum_of_negative_zeros_is_positive_zero_like_numpy():
    a = -np.zeros(300, np.float32)
    assert np.signbit(np.add.reduce(a)) == bool(torch.signbit(numpy_float32_sum(torch.from_numpy(a))))


@pytest.mark.parametrize("fn", MEAN_STD, ids=IDS)
def test_mean_std_match_numpy(fn):
    rng = np.random.default_rng(2)
    sizes = list(range(1, 301)) + [int(s) for s in rng.integers(1000, 3_000_000, 4)]
    for n in sizes:
        a = _data(rng, n)
        mean, std = fn(torch.from_numpy(a))
        assert torch.equal(mean, _bits(a.mean())) and torch.equal(std, _bits(a.std())), n


def test_mean_std_of_empty_is_nan():
    mean, std = numpy_float32_mean_std(torch.zeros(0))
    assert bool(torch.isnan(mean)) and bool(torch.isnan(std))


def _case(rng, shape):
    image = (rng.standard_normal(shape) * rng.uniform(1, 500) + rng.uniform(-1000, 1000)).astype(np.float32)
    seg = np.where(rng.random(shape) < 0.3, -1, 0).astype(np.int8)
    image[seg < 0] = 0  # zero background outside the mask, as after cropping
    props = {"mean": float(rng.uniform(-200, 200)), "std": float(rng.uniform(0.5, 400)),
             "percentile_00_5": float(rng.uniform(-1000, -100)), "percentile_99_5": float(rng.uniform(100, 1000))}
    return image, seg, props


def _reference(name, use_mask, props, image, seg):
    cls = getattr(schemes, name)
    return cls(use_mask_for_norm=use_mask, intensityproperties=props).run(image.copy(), seg)


@pytest.mark.parametrize("fn", NORMALIZE, ids=IDS)
@pytest.mark.parametrize("name", NORMALIZATION_SCHEMES)
@pytest.mark.parametrize("use_mask", [False, True])
def test_normalize_channel_matches_nnunet_class(fn, name, use_mask):
    rng = np.random.default_rng(abs(hash((name, use_mask))) % 2**32)
    for trial in range(12):
        shape = tuple(int(s) for s in rng.integers(1, 30, 3 if trial % 3 else 2))
        image, seg, props = _case(rng, shape)
        if name == "RGBTo01Normalization":
            image = np.abs(image) % 255
        intensity = [props["mean"], props["std"], props["percentile_00_5"], props["percentile_99_5"]]
        ref = _reference(name, use_mask, props, image, seg)
        out = fn(torch.from_numpy(image.copy()), torch.from_numpy(seg), name, use_mask, intensity)
        assert out.dtype == torch.float32 and torch.equal(out, torch.from_numpy(ref)), (trial, shape)


@pytest.mark.parametrize("fn", NORMALIZE, ids=IDS)
def test_zscore_constant_image_and_tiny_std_use_eps(fn):
    image = np.full((4, 5, 6), 7.25, np.float32)
    seg = np.zeros(image.shape, np.int8)
    for use_mask in (False, True):
        ref = _reference("ZScoreNormalization", use_mask, {}, image, seg)
        out = fn(torch.from_numpy(image), torch.from_numpy(seg), "ZScoreNormalization", use_mask, [0.0, 0.0, 0.0, 0.0])
        assert torch.equal(out, torch.from_numpy(ref))
    props = {"mean": 3.0, "std": 1e-12, "percentile_00_5": -5.0, "percentile_99_5": 5.0}
    image = np.linspace(-9, 9, 60, dtype=np.float32).reshape(3, 4, 5)
    ref = _reference("CTNormalization", False, props, image, seg[:3, :4, :5])
    out = fn(torch.from_numpy(image), torch.from_numpy(seg[:3, :4, :5]), "CTNormalization", False, [3.0, 1e-12, -5.0, 5.0])
    assert torch.equal(out, torch.from_numpy(ref))


@pytest.mark.parametrize("fn", NORMALIZE, ids=IDS)
def test_zscore_empty_mask_leaves_image_unchanged(fn):
    image = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    seg = np.full(image.shape, -1, np.int8)
    ref = _reference("ZScoreNormalization", True, {}, image, seg)
    out = fn(torch.from_numpy(image), torch.from_numpy(seg), "ZScoreNormalization", True, [0.0, 1.0, 0.0, 1.0])
    assert torch.equal(out, torch.from_numpy(ref))


@pytest.mark.parametrize("fn", NORMALIZE, ids=IDS)
def test_rgb_out_of_range_raises_with_the_range(fn):
    image = torch.tensor([[-1.5, 3.0], [300.5, 4.0]])
    with pytest.raises(Exception) as info:
        fn(image, torch.zeros(2, 2, dtype=torch.int8), "RGBTo01Normalization", False, [0.0, 1.0, 0.0, 1.0])
    assert ("RGBTo01Normalization expects values in [0, 255] (uint8 RGB images), found values in [-1.5, 300.5]"
            in str(info.value))


@pytest.mark.parametrize("fn", NORMALIZE, ids=IDS)
def test_unknown_scheme_raises_naming_it(fn):
    with pytest.raises(Exception) as info:
        fn(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.int8), "FooNormalization", False, [0.0, 1.0, 0.0, 1.0])
    assert UNKNOWN in str(info.value)


def test_check_normalization_scheme():
    for name in NORMALIZATION_SCHEMES:
        check_normalization_scheme(name)
        assert hasattr(schemes, name)
    with pytest.raises(PipelineSettingsError) as info:
        check_normalization_scheme("FooNormalization")
    assert str(info.value) == UNKNOWN
