"""resize_like_skimage / resize_slices_like_skimage against skimage.transform.resize, bit for bit."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

skimage_transform = pytest.importorskip("skimage.transform")
ndimage = pytest.importorskip("scipy.ndimage")

from nnunet_export.pipeline import spline_prefilter, spline_resize  # noqa: E402
from nnunet_export.pipeline.spline_resize import resize_like_skimage, resize_slices_like_skimage  # noqa: E402

SCRIPTED = {
    "eager": (resize_like_skimage, resize_slices_like_skimage),
    "scripted": (torch.jit.script(resize_like_skimage), torch.jit.script(resize_slices_like_skimage)),
}

# (input shape, output shape): up, down, non-integer factors, size 1/2/3 axes in and out, equal axes.
CASES_2D = [
    ((7, 9), (13, 4)),
    ((10, 12), (7, 7)),
    ((16, 24), (17, 28)),
    ((1, 5), (3, 2)),
    ((2, 3), (1, 1)),
    ((3, 22), (4, 17)),
    ((5, 5), (5, 7)),
    ((22, 6), (2, 3)),
]
CASES_3D = [
    ((6, 4, 5), (3, 7, 5)),
    ((4, 4, 4), (5, 5, 5)),
    ((3, 1, 2), (2, 3, 1)),
    ((11, 12, 7), (3, 4, 9)),
    ((2, 3, 5), (13, 9, 7)),
    ((9, 8, 10), (9, 11, 10)),
]


def _reference(image: np.ndarray, shape, order: int) -> np.ndarray:
    return skimage_transform.resize(image, shape, order=order, mode="edge", anti_aliasing=False)


def _assert_bits(expected: np.ndarray, got: torch.Tensor) -> None:
    assert got.dtype == torch.float64
    assert torch.equal(torch.from_numpy(expected).view(torch.int64), got.view(torch.int64))


def _image(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape) * 100.0


@pytest.mark.parametrize("mode", sorted(SCRIPTED))
@pytest.mark.parametrize("order", [0, 1, 3])
@pytest.mark.parametrize("shapes", CASES_2D + CASES_3D, ids=lambda s: f"{s[0]}->{s[1]}")
def test_resize_is_bit_identical_to_skimage(mode, order, shapes):
    in_shape, out_shape = shapes
    image = _image(in_shape, sum(in_shape) + order)
    resize = SCRIPTED[mode][0]
    _assert_bits(_reference(image, out_shape, order), resize(torch.from_numpy(image), list(out_shape), order))


@pytest.mark.parametrize("mode", sorted(SCRIPTED))
@pytest.mark.parametrize("order", [0, 1, 3])
@pytest.mark.parametrize("shapes", CASES_2D, ids=lambda s: f"{s[0]}->{s[1]}")
def test_slices_are_each_resized_and_clipped_like_skimage(mode, order, shapes):
    in_shape, out_shape = shapes
    # Slices of very different ranges: each output is clipped to its own slice's min and max.
    slices = _image((4,) + in_shape, 7 + order) * np.array([1.0, 0.01, 50.0, 3.0]).reshape(4, 1, 1)
    expected = np.stack([_reference(s, out_shape, order) for s in slices])
    resize_slices = SCRIPTED[mode][1]
    _assert_bits(expected, resize_slices(torch.from_numpy(slices), list(out_shape), order))


@pytest.mark.parametrize("mode", sorted(SCRIPTED))
@pytest.mark.parametrize("order", [1, 3])
def test_chunked_work_gives_the_same_bits(mode, order):
    resize, resize_slices = SCRIPTED[mode]
    volume = _image((9, 13, 11), 3)
    expected = _reference(volume, (14, 6, 17), order)
    # A 1-element budget forces one output row (3-D) / one slice (slices) per chunk.
    _assert_bits(expected, resize(torch.from_numpy(volume), [14, 6, 17], order, 1))
    slices = _image((5, 13, 11), 4)
    expected_slices = np.stack([_reference(s, (6, 17), order) for s in slices])
    _assert_bits(expected_slices, resize_slices(torch.from_numpy(slices), [6, 17], order, 1))


@pytest.mark.parametrize("order", [0, 1, 3])
def test_many_tap_blocks_give_the_skimage_bits(order):
    # Outputs several tap blocks (32768 elements) long, eager and scripted: the blocking must not
    # change a bit.
    slices = _image((4, 64, 256), 11 + order)
    expected = np.stack([_reference(s, (100, 300), order) for s in slices])
    for mode in sorted(SCRIPTED):
        _assert_bits(expected, SCRIPTED[mode][1](torch.from_numpy(slices), [100, 300], order))
    volume = _image((10, 60, 60), 12 + order)
    expected = _reference(volume, (13, 70, 70), order)
    for mode in sorted(SCRIPTED):
        _assert_bits(expected, SCRIPTED[mode][0](torch.from_numpy(volume), [13, 70, 70], order))


@pytest.mark.parametrize("mode", sorted(SCRIPTED))
def test_equal_shape_is_a_copy_like_skimage(mode):
    resize, resize_slices = SCRIPTED[mode]
    image = torch.from_numpy(_image((5, 6, 7), 1))
    result = resize(image, [5, 6, 7], 3)
    _assert_bits(_reference(image.numpy(), (5, 6, 7), 3), result)
    assert result.data_ptr() != image.data_ptr()
    slices = torch.from_numpy(_image((3, 6, 7), 2))
    _assert_bits(slices.numpy(), resize_slices(slices, [6, 7], 1))


@pytest.mark.parametrize("n", [2, 3, 4, 25, 40])
def test_prefilter_matches_scipy_spline_filter1d(n):
    # scipy 1.17's reflect init reads c[0] after it started accumulating into it (visible at
    # small n); the prefilter reproduces that too.
    lines = np.random.default_rng(n).normal(size=(n, 3)) * 10.0
    expected = ndimage.spline_filter1d(lines, 3, axis=0, output=np.float64, mode="nearest")
    got = spline_prefilter.prefilter_rows(torch.from_numpy(lines.copy()))
    scripted = torch.jit.script(spline_prefilter.prefilter_rows)(torch.from_numpy(lines.copy()))
    _assert_bits(expected, got)
    _assert_bits(expected, scripted)


def _long_lines(n: int) -> np.ndarray:
    """Lines of length n (the init's shortcut applies past 65) that stress its proof: ordinary
    values, zeros with a later bump (a zero running sum), a line of zeros, a line of -0.0, zeros
    of alternating sign, values whose weighted start cancels, subnormals, huge values."""
    rng = np.random.default_rng(n)
    lines = rng.normal(size=(n, 9)) * 10.0
    lines[:, 1] = 0.0
    lines[n // 2:, 1] = 3.0
    lines[:, 2] = 0.0
    lines[:, 3] = -0.0
    lines[:, 4] = np.where(np.arange(n) % 2 == 0, 0.0, -0.0)
    z = -0.267949192431122706472553658494127633
    lines[:, 5] = 1e-3 * rng.normal(size=n)
    lines[0, 5], lines[1, 5] = 1.0, -1.0 / z  # c[0] + z * c[1] cancels
    lines[:, 6] = 5e-324 * rng.integers(-3, 4, size=n)
    lines[:, 7] = 1e300 * rng.normal(size=n)
    lines[:, 8] = rng.normal(size=n) * 1e-200
    return lines


@pytest.mark.parametrize("n", [66, 100, 131, 536])
def test_prefilter_init_shortcut_keeps_scipys_bits(n):
    lines = _long_lines(n)
    expected = ndimage.spline_filter1d(lines, 3, axis=0, output=np.float64, mode="nearest")
    largest = float(np.abs(lines).max())
    for prefilter in (spline_prefilter.prefilter_rows, torch.jit.script(spline_prefilter.prefilter_rows)):
        _assert_bits(expected, prefilter(torch.from_numpy(lines.copy())))
        _assert_bits(expected, prefilter(torch.from_numpy(lines.copy()), largest))
    # A strided view (the slices' middle axis) is filtered in place as well.
    planes = np.ascontiguousarray(np.stack([lines, lines[::-1].copy()]))
    expected_planes = ndimage.spline_filter1d(planes, 3, axis=1, output=np.float64, mode="nearest")
    got = torch.from_numpy(planes.copy())
    spline_prefilter.prefilter_rows(got.transpose(0, 1))
    _assert_bits(expected_planes, got)


def test_half_values_need_a_float16_range():
    taps = spline_resize.plane_taps([4, 4], [3, 3], 1, torch.device("cpu"))
    work = spline_resize.plane_workspace([4, 4], [3, 3], torch.device("cpu"))
    plane = torch.full([4, 4], 1e6, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"resize_plane: half_values needs a clip range within float16's finite "
                                         r"range, got \[1000000.0, 1000000.0\]"):
        spline_resize.resize_plane(plane, taps, plane.min(), plane.max(), torch.empty(3, 3), True, work)


def test_pole_is_scipys_literal_not_sqrt():
    assert math.sqrt(3.0) - 2.0 != -0.267949192431122706472553658494127633


@pytest.mark.parametrize("mode", sorted(SCRIPTED))
@pytest.mark.parametrize(
    "call, message",
    [
        (lambda f, g: f(torch.zeros(3, 3, dtype=torch.float64), [2, 2], 2),
         "resize_like_skimage: order must be 0, 1 or 3, got 2"),
        (lambda f, g: f(torch.zeros(3, dtype=torch.float64), [2], 1),
         "resize_like_skimage: expected a 2-D or 3-D float64 tensor, got 1-D"),
        (lambda f, g: f(torch.zeros(3, 3, dtype=torch.float32), [2, 2], 1),
         "resize_like_skimage: expected a float64 tensor (nnU-Net resizes in float64; convert with .double())"),
        (lambda f, g: f(torch.zeros(3, 3, dtype=torch.float64), [2, 2, 2], 1),
         "resize_like_skimage: new_shape must have 2 sizes, got [2, 2, 2]"),
        (lambda f, g: f(torch.zeros(3, 3, dtype=torch.float64), [0, 2], 1),
         "resize_like_skimage: new_shape sizes must be >= 1, got [0, 2]"),
        (lambda f, g: f(torch.zeros(0, 3, dtype=torch.float64), [2, 2], 1),
         "resize_like_skimage: the image is empty (shape [0, 3])"),
        (lambda f, g: g(torch.zeros(3, 3, dtype=torch.float64), [2, 2], 1),
         "resize_slices_like_skimage: expected a 3-D float64 tensor, got 2-D"),
        (lambda f, g: g(torch.zeros(2, 3, 3, dtype=torch.float64), [2, 2], 5),
         "resize_like_skimage: order must be 0, 1 or 3, got 5"),
        (lambda f, g: g(torch.zeros(2, 3, 3, dtype=torch.float64), [2, 2, 2], 1),
         "resize_slices_like_skimage: new_shape must have 2 sizes, got [2, 2, 2]"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(mode, call, message):
    resize, resize_slices = SCRIPTED[mode]
    error = ValueError if mode == "eager" else torch.jit.Error
    with pytest.raises(error) as info:
        call(resize, resize_slices)
    assert message in str(info.value)
    if mode == "eager":
        assert str(info.value) == message
