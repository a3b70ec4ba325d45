"""numpy's float32 reductions and nnU-Net's normalization schemes, bit for bit against the real
thing (numpy itself, nnunetv2's normalizer classes), eager and scripted."""
import numpy as np
import pytest
import torch

from nnunet_export.pipeline.normalization import NORMALIZATION_SCHEMES, normalize_channel
from nnunet_export.pipeline.numpy_reductions import (numpy_float32_mean_std, numpy_float32_sum,
                                                      numpy_float32_sum_strided)

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


def test_the_scheme_names_are_nnunets_classes():
    for name in NORMALIZATION_SCHEMES:
        assert hasattr(schemes, name)


# Strided views: nnU-Net's preprocessor normalizes data[c] of a transposed, cropped (c, z, y, x)
# array, which numpy sums in memory order in buffered chunks.
SUM_STRIDED = [numpy_float32_sum_strided, torch.jit.script(numpy_float32_sum_strided)]
# (memory shape, transpose, crop) that sit on the chunking rule's edges: merged core just under
# and over 8192, inner run 4096/4097 (buffered vs. row by row), a two-row outer axis (cost tie),
# axes that merge after the crop, length-1 axes, one contiguous block.
TRICKY_VIEWS = [
    ((24, 40, 211), (0, 1, 2), (slice(None), slice(None), slice(5, 200))),
    ((24, 40, 211), (2, 0, 1), (slice(3, 210), slice(1, 23), slice(2, 39))),
    ((10, 41, 201), (0, 1, 2), (slice(None), slice(None), slice(1, 201))),
    ((3, 4, 4100), (0, 1, 2), (slice(None), slice(None), slice(0, 4096))),
    ((3, 4, 4100), (0, 1, 2), (slice(None), slice(None), slice(0, 4097))),
    ((5, 2, 300), (1, 0, 2), (slice(None), slice(None), slice(1, 300))),
    ((6, 30, 300), (0, 1, 2), (slice(1, 5), slice(2, 29), slice(None))),
    ((6, 30, 300), (2, 1, 0), (slice(7, 8), slice(None), slice(2, 6))),
    ((17, 33, 65), (0, 1, 2), (slice(2, 15), slice(None), slice(None))),
    ((5, 7, 9), (1, 2, 0), (slice(1, 6), slice(0, 9), slice(2, 4))),
    ((40, 128, 128), (2, 0, 1), (slice(10, 100), slice(3, 37), slice(None))),
]


def _views(seed, count):
    """Seeded (memory shape, transpose, crop) samples from 5x7x9 up to 40x160x160, then the tricky ones."""
    rng = np.random.default_rng(seed)
    views = []
    for _ in range(count):
        high = [41, 161, 161] if rng.random() < 0.5 else [12, 40, 40]
        shape = tuple(int(rng.integers(lo, hi)) for lo, hi in zip([5, 7, 9], high))
        perm = tuple(int(p) for p in rng.permutation(3))
        crop = []
        for axis in perm:
            start = int(rng.integers(0, shape[axis]))
            stop = int(rng.integers(start + 1, shape[axis] + 1))
            crop.append(slice(None) if rng.random() < 0.25 else slice(start, stop))
        views.append((shape, perm, tuple(crop)))
    return views + TRICKY_VIEWS


def _view_pair(rng, shape, perm, crop):
    base = _data(rng, int(np.prod(shape))).reshape(shape)
    view = base.transpose(perm)[crop]
    tensor = torch.from_numpy(base).permute(perm)[crop]
    assert tensor.stride() == tuple(s // 4 for s in view.strides)
    return view, tensor


@pytest.mark.parametrize("fn", SUM_STRIDED, ids=IDS)
def test_sum_strided_views_match_numpy(fn):
    rng = np.random.default_rng(3)
    for shape, perm, crop in _views(4, 120):
        view, tensor = _view_pair(rng, shape, perm, crop)
        assert torch.equal(fn(tensor), _bits(np.add.reduce(view, axis=None))), (shape, perm, crop)


@pytest.mark.parametrize("fn", MEAN_STD, ids=IDS)
def test_mean_std_strided_views_match_numpy(fn):
    rng = np.random.default_rng(5)
    for shape, perm, crop in _views(6, 120):
        view, tensor = _view_pair(rng, shape, perm, crop)
        mean, std = fn(tensor)
        assert torch.equal(mean, _bits(view.mean())) and torch.equal(std, _bits(view.std())), (shape, perm, crop)


def test_sum_strided_of_contiguous_and_empty_tensors():
    rng = np.random.default_rng(7)
    a = _data(rng, 5 * 70 * 90).reshape(5, 70, 90)
    assert torch.equal(numpy_float32_sum_strided(torch.from_numpy(a)), numpy_float32_sum(torch.from_numpy(a)))
    assert torch.equal(numpy_float32_sum_strided(torch.from_numpy(a)), _bits(np.add.reduce(a, axis=None)))
    empty = numpy_float32_sum_strided(torch.zeros(3, 0, 4).permute(2, 0, 1))
    assert torch.equal(empty, torch.zeros(())) and not bool(torch.signbit(empty))


def test_sum_strided_ct_sized_crop_matches_numpy():
    rng = np.random.default_rng(8)
    view, tensor = _view_pair(rng, (40, 512, 512), (0, 2, 1), (slice(3, 38), slice(40, 470), slice(17, 501)))
    assert torch.equal(numpy_float32_sum_strided(tensor), _bits(np.add.reduce(view, axis=None)))
    mean, std = numpy_float32_mean_std(tensor)
    assert torch.equal(mean, _bits(view.mean())) and torch.equal(std, _bits(view.std()))


@pytest.mark.parametrize("fn", NORMALIZE, ids=IDS)
@pytest.mark.parametrize("use_mask", [False, True])
def test_zscore_on_transposed_cropped_channel_matches_nnunet(fn, use_mask):
    """The preprocessor's own view: data[c] of data.transpose([0, *tf + 1]) cropped to a bbox."""
    rng = np.random.default_rng(9 + use_mask)
    for trial, (shape, transpose_forward, bbox) in enumerate([
            ((2, 24, 40, 211), (0, 1, 2), [[0, 24], [0, 40], [5, 200]]),
            ((2, 30, 50, 70), (2, 0, 1), [[3, 65], [1, 29], [4, 47]]),
            ((1, 60, 90, 80), (1, 2, 0), [[2, 88], [0, 80], [7, 51]]),
            ((3, 9, 17, 33), (0, 2, 1), [[1, 8], [2, 30], [0, 17]])]):
        data = (rng.standard_normal(shape) * rng.uniform(1, 500) + rng.uniform(-1000, 1000)).astype(np.float32)
        axes = [0, *[i + 1 for i in transpose_forward]]
        crop = (slice(None), *[slice(lo, hi) for lo, hi in bbox])
        view = data.copy().transpose(axes)[crop]
        seg = np.where(rng.random(view.shape[1:]) < 0.3, -1, 0).astype(np.int8)
        tensor = torch.from_numpy(data.copy()).permute(axes)[crop]
        normalizer = schemes.ZScoreNormalization(use_mask_for_norm=use_mask, intensityproperties={})
        for c in range(shape[0]):
            ref = normalizer.run(view[c], seg)
            out = fn(tensor[c], torch.from_numpy(seg), "ZScoreNormalization", use_mask, [0.0, 1.0, 0.0, 1.0])
            assert out.dtype == torch.float32 and torch.equal(out, torch.from_numpy(np.ascontiguousarray(ref))), (trial, c)
