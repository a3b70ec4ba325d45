"""nnunet_export.pipeline.resampling against nnU-Net's own resampling and export functions, bit for
bit (torch.equal), eager and scripted."""
import re
import types

import numpy as np
import pytest
import scipy.ndimage
import torch
from nnunetv2.preprocessing.resampling import default_resampling as nnunet_resampling
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from nnunet_export.pipeline import resampling
from nnunet_export.pipeline.float16_rounding import float16_values

PUBLIC = ["compute_new_shape", "separate_z_axis", "float64_to_float16", "resample_data", "resample_logits",
          "segmentation_from_logits", "_nearest_along_first", "_linear_along_first"]
_SCRIPTED = {}


@pytest.fixture(params=["eager", "scripted"])
def impl(request):
    if request.param == "eager":
        return types.SimpleNamespace(**{name: getattr(resampling, name) for name in PUBLIC}, error=ValueError)
    if not _SCRIPTED:
        _SCRIPTED.update({name: torch.jit.script(getattr(resampling, name)) for name in PUBLIC})
    return types.SimpleNamespace(**_SCRIPTED, error=torch.jit.Error)


# The planner's defaults: data order 3, probabilities order 1, order_z 0, force_separate_z None, threshold 3.
THRESHOLD = 3.0

# (shape, current spacing, new spacing, force_separate_z): each a different separate-z situation.
GEOMETRIES = {
    "isotropic_up": ((7, 9, 8), [1.0, 1.0, 1.0], [0.7, 0.6, 0.8], None),
    "isotropic_down": ((11, 13, 12), [1.0, 1.2, 0.9], [1.6, 1.5, 1.7], None),
    "sep_z_current_axis0": ((5, 14, 13), [4.0, 0.8, 0.9], [1.5, 1.0, 1.0], None),
    "sep_z_current_axis2_down": ((16, 15, 9), [0.6, 0.7, 3.5], [1.0, 1.0, 2.0], None),
    "sep_z_new_axis1": ((12, 10, 11), [1.0, 1.0, 1.0], [0.9, 3.2, 0.8], None),
    "tie_turns_off": ((6, 9, 10), [3.5, 3.5, 0.7], [1.0, 1.0, 1.0], None),
    "forced_axis1": ((9, 7, 10), [1.0, 2.0, 1.0], [0.8, 1.1, 0.9], True),
    "forced_off": ((6, 9, 10), [4.0, 0.8, 0.8], [1.0, 1.0, 1.0], False),
    "in_plane_only": ((6, 10, 11), [5.0, 1.0, 1.0], [5.0, 0.7, 0.8], None),
    "config_2d": ((5, 12, 11), [2.5, 0.9, 0.8], [2.5, 1.3, 1.1], None),
    "config_2d_joint": ((5, 12, 11), [1.2, 0.9, 0.8], [1.2, 1.3, 0.7], None),
}


def _geometry(name):
    shape, current, new, force = GEOMETRIES[name]
    return shape, current, new, force, [int(n) for n in nnunet_resampling.compute_new_shape(shape, current, new)]


def _reference(data: np.ndarray, new_shape, current, new, order, force):
    return nnunet_resampling.resample_data_or_seg_to_shape(data, new_shape, current, new, is_seg=False, order=order,
                                                           order_z=0, force_separate_z=force,
                                                           separate_z_anisotropy_threshold=THRESHOLD)


def test_compute_new_shape_matches_nnunet(impl):
    rng = np.random.default_rng(1)
    cases = [((5, 7, 9), [1.0, 1.0, 1.0], [2.0, 2.0, 2.0]),  # 2.5, 3.5, 4.5: half to even
             ((31, 512, 512), [2.5, 0.7, 0.7], [2.5, 0.79, 0.79])]
    for _ in range(300):
        cases.append((tuple(int(s) for s in rng.integers(1, 600, 3)), list(rng.uniform(0.2, 6.0, 3)),
                      list(rng.uniform(0.2, 6.0, 3))))
    for shape, old, new in cases:
        expected = [int(n) for n in nnunet_resampling.compute_new_shape(shape, old, new)]
        assert impl.compute_new_shape(list(shape), old, new) == expected
    assert impl.compute_new_shape([5, 7], [1.0, 1.0], [2.0, 2.0]) == [2, 4]
    with pytest.raises(impl.error, match=re.escape(
            "compute_new_shape: old_shape, old_spacing and new_spacing must have the same length, got 3, 2 and 3")):
        impl.compute_new_shape([1, 2, 3], [1.0, 1.0], [1.0, 1.0, 1.0])


def test_separate_z_axis_matches_nnunet(impl):
    spacings = [[1.0, 1.0, 1.0], [3.0, 1.0, 1.0], [3.0000001, 1.0, 1.0], [1.0, 5.0, 1.2], [0.7, 0.8, 4.0],
                [0.24, 1.25, 1.25], [4.0, 4.0, 1.0], [2.0, 2.0, 2.0], [1.0, 0.3, 1.0], [1.5, 1.5, 0.4],
                [0.1 + 0.2, 0.3, 0.05], [2.5, 0.7, 0.7], [0.7, 0.7, 2.1]]
    for current in spacings:
        for new in spacings:
            for force in (None, True, False):
                do_separate, axis = nnunet_resampling.determine_do_sep_z_and_axis(force, current, new, THRESHOLD)
                expected = int(axis) if do_separate else -1
                assert impl.separate_z_axis(current, new, force, THRESHOLD) == expected, (current, new, force)
    # A ratio of exactly the threshold is not anisotropic.
    assert impl.separate_z_axis([3.0, 1.0, 1.0], [1.0, 1.0, 1.0], None, 3.0) == -1
    assert impl.separate_z_axis([3.0, 1.0, 1.0], [1.0, 1.0, 1.0], None, 2.9) == 0


def _float16_boundaries() -> np.ndarray:
    """Every finite float16, the float64 midpoints between neighbours, one float64 ulp either side
    of each (where rounding through float32 goes wrong), the overflow edge, subnormals, specials."""
    halves = np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
    above = np.append(halves[1:], 65536.0)  # 65520 is the midpoint to "65536", where inf starts
    mids = (halves + above) / 2
    values = np.concatenate([halves, mids, np.nextafter(mids, 0), np.nextafter(mids, np.inf),
                             np.nextafter(mids, 0) - 1e-12 * mids, mids * (1 + 2.0 ** -30), mids * (1 - 2.0 ** -30),
                             [1e300, 7e4, 65519.999999, 65520.000001, 2.0 ** -25, 2.0 ** -26, 2.0 ** -25 * 1.0000001,
                              1e-50, 5e-324, 1e-40, np.inf, np.nan, 3.4028235e38, 3.5e38]])
    return np.concatenate([values, -values])


def test_float64_to_float16_rounds_as_numpy(impl):
    rng = np.random.default_rng(2)
    values = np.concatenate([_float16_boundaries(), rng.standard_normal(50000) * 300, rng.standard_normal(50000) * 1e-5])
    with np.errstate(over="ignore"):
        expected = torch.from_numpy(values.astype(np.float16))
    got = impl.float64_to_float16(torch.from_numpy(values))
    assert got.dtype == torch.float16
    nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(got), nan)
    assert torch.equal(got[~nan].view(torch.int16), expected[~nan].view(torch.int16))  # -0.0 kept too
    # The recipe matters: a plain .half() rounds twice and misses here.
    assert not torch.equal(torch.from_numpy(values).half()[~nan], expected[~nan])


@pytest.mark.parametrize("mode", ["eager", "scripted"])
def test_float16_values_is_the_arithmetic_rounding_of_in_range_values(mode):
    # The fast path the streamed export uses (float32 out, arithmetic only) on every boundary
    # case within float16's finite range, against numpy.
    rng = np.random.default_rng(12)
    values = np.concatenate([_float16_boundaries(), rng.standard_normal(50000) * 300, rng.standard_normal(50000) * 1e-5])
    values = values[np.isfinite(values) & (np.abs(values) <= 65504)]
    expected = torch.from_numpy(values.astype(np.float16)).float()
    convert = float16_values if mode == "eager" else torch.jit.script(float16_values)
    got = convert(torch.from_numpy(values))
    assert got.dtype == torch.float32
    assert torch.equal(got.view(torch.int32), expected.view(torch.int32))  # -0.0 kept too
    assert int((torch.from_numpy(values).half().float() != expected).sum()) > 1000  # the double rounding it avoids


@pytest.mark.parametrize("order_z", [0, 1])
def test_separate_axis_pass_matches_map_coordinates(impl, order_z):
    along = impl._nearest_along_first if order_z == 0 else impl._linear_along_first
    rng = np.random.default_rng(3)
    for old in range(1, 26):
        values = rng.standard_normal((old, 3, 2))
        if old > 5:  # scipy's zero-weight taps turn a neighbour's inf into nan
            values[2, 1, 1], values[4, 0, 0], values[5, 2, 1], values[3, 2, 0] = np.inf, np.nan, -np.inf, np.inf
        for new in range(1, 41):
            grid = np.mgrid[:new, :3, :2].astype(float)
            grid[0] = float(old) / new * (grid[0] + 0.5) - 0.5
            expected = torch.from_numpy(scipy.ndimage.map_coordinates(values, grid, order=order_z, mode="nearest"))
            got = along(torch.from_numpy(values), new)
            assert torch.equal(torch.isnan(got), torch.isnan(expected)), (old, new)
            assert torch.equal(got.nan_to_num(), expected.nan_to_num()), (old, new)


@pytest.mark.parametrize("geometry", ["sep_z_current_axis0", "sep_z_current_axis2_down", "forced_axis1"])
def test_resample_data_order_z_1_matches_nnunet(impl, geometry):
    shape, current, new, force, new_shape = _geometry(geometry)
    data = np.random.default_rng(7).standard_normal((1, *shape)).astype(np.float32)
    expected = nnunet_resampling.resample_data_or_seg_to_shape(data, new_shape, current, new, is_seg=False, order=3,
                                                               order_z=1, force_separate_z=force,
                                                               separate_z_anisotropy_threshold=THRESHOLD)
    got = impl.resample_data(torch.from_numpy(data), new_shape, current, new, 3, 1, force, THRESHOLD)
    assert torch.equal(got, torch.from_numpy(expected))


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_resample_data_matches_nnunet(impl, geometry):
    shape, current, new, force, new_shape = _geometry(geometry)
    data = np.random.default_rng(4).standard_normal((2, *shape)).astype(np.float32)
    data[1] *= 40  # the channels differ in range: each is clipped to its own
    expected = _reference(data, new_shape, current, new, 3, force)
    got = impl.resample_data(torch.from_numpy(data), new_shape, current, new, 3, 0, force, THRESHOLD)
    assert got.dtype == torch.float32
    assert torch.equal(got, torch.from_numpy(expected))


def test_resample_data_returns_an_unchanged_shape_as_is(impl):
    data = torch.randn(2, 4, 5, 6)
    assert impl.resample_data(data, [4, 5, 6], [3.0, 1.0, 1.0], [1.0, 1.0, 1.0], 3, 0, None, THRESHOLD) is data
    logits = torch.randn(2, 4, 5, 6).half()
    assert impl.resample_logits(logits, [4, 5, 6], [1.0, 1.0, 1.0], [2.0, 1.0, 1.0], 1, 0, None, THRESHOLD) is logits


def _logits(channels, shape, seed, ties):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((channels, *shape)) * 4
    if ties:  # a coarse grid: resampled float16 values often tie across channels
        logits = np.round(logits / 2)
        logits[-1, : shape[0] // 2] = logits[1, : shape[0] // 2]  # equal channels resample to equal values
    return logits.astype(np.float16)


@pytest.mark.parametrize("geometry", ["isotropic_down", "sep_z_current_axis0", "sep_z_new_axis1", "tie_turns_off",
                                      "config_2d"])
def test_resample_logits_matches_nnunet(impl, geometry):
    shape, current, new, force, new_shape = _geometry(geometry)
    logits = _logits(3, shape, 5, ties=False)
    expected = _reference(logits, new_shape, current, new, 1, force)
    got = impl.resample_logits(torch.from_numpy(logits), new_shape, current, new, 1, 0, force, THRESHOLD)
    assert expected.dtype == np.float16 and got.dtype == torch.float16
    assert torch.equal(got, torch.from_numpy(expected))


def _nnunet_segmentation(logits, new_shape, current, new, force, regions_class_order):
    """What convert_predicted_logits_to_segmentation_with_correct_shape segments before un-cropping."""
    if regions_class_order:
        labels = {"background": 0, "a": [1, 2, 3], "b": [2, 3], "c": 3}
    else:
        labels = {"background": 0, **{f"l{i}": i for i in range(1, logits.shape[0])}}
    manager = LabelManager(labels, regions_class_order or None)
    resampled = _reference(logits, new_shape, current, new, 1, force)
    return manager.convert_logits_to_segmentation(resampled)


@pytest.mark.parametrize("regions", [False, True], ids=["labels", "regions"])
@pytest.mark.parametrize("geometry", ["isotropic_up", "sep_z_current_axis2_down", "sep_z_new_axis1", "config_2d",
                                      "unchanged"])
def test_segmentation_from_logits_matches_nnunet(impl, geometry, regions):
    if geometry == "unchanged":
        shape, current, new, force = (6, 7, 8), [3.0, 1.0, 1.0], [1.0, 1.0, 1.0], None
        new_shape = list(shape)
    else:
        shape, current, new, force, new_shape = _geometry(geometry)
    order = [1, 2, 3] if regions else []
    logits = _logits(3 if regions else 4, shape, 6, ties=True)
    expected = _nnunet_segmentation(logits, new_shape, current, new, force, order)
    got = impl.segmentation_from_logits(torch.from_numpy(logits), new_shape, current, new, 1, 0, force, THRESHOLD,
                                        order)
    assert got.dtype == (torch.uint16 if regions else torch.uint8)
    assert str(expected.dtype) == ("uint16" if regions else "int64")
    assert torch.equal(got, torch.from_numpy(expected.astype(np.int64)).to(got.dtype))
    if not regions:  # the case really has ties for the first-maximum rule to decide
        resampled = _reference(logits, new_shape, current, new, 1, force)
        assert (np.sort(resampled, axis=0)[-1] == np.sort(resampled, axis=0)[-2]).sum() > 10


@pytest.mark.parametrize("regions", [False, True], ids=["labels", "regions"])
@pytest.mark.parametrize("spacings", [([3.0, 1.0, 1.0], [2.0, 1.3, 1.2]), ([2.0, 1.0, 1.0], [3.2, 0.9, 1.1])],
                         ids=["z_repeats_slices", "z_skips_slices"])
def test_streamed_segmentation_over_several_slabs_matches_nnunet(impl, spacings, regions):
    # 500 x 480 planes: the separate-z export streams 17 read slices per slab, so these run
    # over two slabs; nearest along z repeats read slices in one case and skips slices in the other.
    current, new = spacings
    shape = (21, 500, 480)
    new_shape = [int(n) for n in nnunet_resampling.compute_new_shape(shape, current, new)]
    order = [1, 2, 3] if regions else []
    logits = _logits(3, shape, 8, ties=True)
    expected = _nnunet_segmentation(logits, new_shape, current, new, None, order)
    got = impl.segmentation_from_logits(torch.from_numpy(logits), new_shape, current, new, 1, 0, None, THRESHOLD,
                                        order)
    assert torch.equal(got, torch.from_numpy(expected.astype(np.int64)).to(got.dtype))


def test_non_finite_logits_take_the_exact_path_with_numpys_first_nan(impl):
    # A separate-z geometry (the streamed path) with nan and inf among the logits: they go to the
    # general rounding and numpy's argmax rule (first nan wins).
    shape, current, new, force, new_shape = _geometry("sep_z_current_axis0")
    logits = _logits(3, shape, 9, ties=False)
    logits[1, 2, 3:6, 4:7] = np.nan
    logits[2, 0, 1, 1] = np.inf
    logits[0, 4, 5, 5] = -np.inf
    expected = _nnunet_segmentation(logits, new_shape, current, new, force, [])
    got = impl.segmentation_from_logits(torch.from_numpy(logits), new_shape, current, new, 1, 0, force, THRESHOLD, [])
    assert torch.equal(got, torch.from_numpy(expected.astype(np.int64)).to(got.dtype))
    # The resampled float16 logits too (skimage clips a slice holding nan to its nanmin / nanmax).
    resampled = _reference(logits, new_shape, current, new, 1, force)
    got_logits = impl.resample_logits(torch.from_numpy(logits), new_shape, current, new, 1, 0, force, THRESHOLD)
    nan = torch.from_numpy(np.isnan(resampled))
    assert nan.any() and torch.equal(torch.isnan(got_logits), nan)
    assert torch.equal(got_logits[~nan].view(torch.int16), torch.from_numpy(resampled)[~nan].view(torch.int16))


def test_segmentation_from_logits_region_threshold_and_nan(impl):
    # Every float16 value once: the region rule is sigmoid(float(h)) > 0.5 exactly.
    every = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.float16).reshape(1, 16, 64, 64)
    got = impl.segmentation_from_logits(every, [16, 64, 64], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], 1, 0, None,
                                        THRESHOLD, [7])
    assert torch.equal(got, torch.where(torch.sigmoid(every[0].float()) > 0.5, 7, 0).to(torch.uint16))
    # A nan wins the argmax as numpy's first nan does.
    logits = np.array([[1.0, np.nan, 2.0, np.nan], [np.nan, 3.0, 1.0, np.nan], [5.0, 4.0, 0.0, 1.0]],
                      dtype=np.float16).reshape(3, 1, 1, 4)
    got = impl.segmentation_from_logits(torch.from_numpy(logits), [1, 1, 4], [1.0] * 3, [1.0] * 3, 1, 0, None,
                                        THRESHOLD, [])
    assert got.flatten().tolist() == np.argmax(logits, 0).flatten().tolist() == [1, 0, 0, 0]


def test_clear_errors(impl):
    logits = torch.zeros(2, 3, 3, 3, dtype=torch.float16)
    spacing = [1.0, 1.0, 1.0]
    name = "another dtype" if impl.error is torch.jit.Error else "torch.float32"
    cases = [
        (lambda: impl.resample_data(torch.zeros(3, 3, 3), [2, 2, 2], spacing, spacing, 3, 0, None, THRESHOLD),
         "resample_data: the tensor must be (channels, x, y, z) (4 dimensions), got 3 dimensions"),
        (lambda: impl.resample_data(logits, [2, 2], spacing, spacing, 3, 0, None, THRESHOLD),
         "resample_data: new_shape must have 3 entries (x, y, z), got 2"),
        (lambda: impl.resample_data(logits, [2, 2, 2], spacing, spacing, 3, 3, None, THRESHOLD),
         "resample_data: order_z must be 0 (nnU-Net's default: nearest along the separate axis) or 1, got 3"),
        (lambda: impl.resample_data(logits.to(torch.int32), [2, 2, 2], spacing, spacing, 3, 0, None, THRESHOLD),
         "resample_data: data must be float16, float32 or float64, got "
         + ("another dtype" if impl.error is torch.jit.Error else "torch.int32")),
        (lambda: impl.resample_logits(logits.float(), [2, 2, 2], spacing, spacing, 1, 0, None, THRESHOLD),
         f"resample_logits: logits must be float16 (nnU-Net's logits), got {name}"),
        (lambda: impl.segmentation_from_logits(logits.float(), [2, 2, 2], spacing, spacing, 1, 0, None, THRESHOLD, []),
         f"segmentation_from_logits: logits must be float16 (nnU-Net's logits), got {name}"),
        (lambda: impl.segmentation_from_logits(logits, [2, 2, 2], spacing, spacing, 1, 0, None, THRESHOLD, [1, 2, 3]),
         "segmentation_from_logits: regions_class_order has 3 entries but the logits have 2 channels"),
    ]
    for call, message in cases:
        with pytest.raises(impl.error, match=re.escape(message)):
            call()
