"""Crop to the nonzero region and back, against nnunetv2's crop_to_nonzero / create_nonzero_mask,
acvl_utils' get_bbox_from_mask and scipy's binary_fill_holes, eager and scripted."""
import numpy as np
import pytest
import torch

from nnunet_export.pipeline.cropping import bounding_box, crop_to_nonzero, fill_holes, insert_crop, nonzero_mask

cropping = pytest.importorskip("nnunetv2.preprocessing.cropping.cropping")
from acvl_utils.cropping_and_padding.bounding_boxes import get_bbox_from_mask, insert_crop_into_image  # noqa: E402
from scipy.ndimage import binary_fill_holes  # noqa: E402

IDS = ["eager", "scripted"]
FILL = [fill_holes, torch.jit.script(fill_holes)]
MASK = [nonzero_mask, torch.jit.script(nonzero_mask)]
BBOX = [bounding_box, torch.jit.script(bounding_box)]
CROP = [crop_to_nonzero, torch.jit.script(crop_to_nonzero)]
INSERT = [insert_crop, torch.jit.script(insert_crop)]


def _blobs(rng, shape, density):
    """Random blobs with holes: a smoothed noise threshold, with cavities and tunnels."""
    noise = rng.random(shape)
    for axis in range(len(shape)):
        noise = (noise + np.roll(noise, 1, axis) + np.roll(noise, -1, axis)) / 3
    mask = noise > np.quantile(noise, 1 - density)
    mask &= rng.random(shape) > 0.05  # pinholes
    return mask


def _shell(shape, tunnel):
    mask = np.zeros(shape, bool)
    sl = tuple(slice(1, s - 1) for s in shape)
    mask[sl] = True
    inner = tuple(slice(2, s - 2) for s in shape)
    mask[inner] = False  # one big cavity
    if tunnel:
        mask[(slice(0, 3),) + tuple(s // 2 for s in shape[1:])] = False  # a tunnel to the border
    return mask


def _masks():
    rng = np.random.default_rng(0)
    out = [_shell((7, 8, 9), False), _shell((7, 8, 9), True), _shell((6, 7), False), _shell((1, 8, 9), False),
           np.zeros((5, 6, 7), bool), np.ones((5, 6, 7), bool), np.zeros((3, 1, 4), bool)]
    for trial in range(30):
        shape = tuple(int(s) for s in rng.integers(3, 25, 3 if trial % 4 else 2))
        out.append(_blobs(rng, shape, rng.uniform(0.3, 0.9)))
    return out


@pytest.mark.parametrize("fn", FILL, ids=IDS)
def test_fill_holes_matches_scipy(fn):
    filled_any = False
    for mask in _masks():
        ref = binary_fill_holes(mask)
        filled_any |= bool((ref & ~mask).any())
        assert np.array_equal(fn(torch.from_numpy(mask)).numpy(), ref), mask.shape
    assert filled_any


def _spiral(size, open_to_border):
    """Square rings of background joined by one gap per wall, alternating sides: a corridor that
    winds from the border to the centre, so reaching its end takes about size / 2 merges."""
    mask = np.ones((size, size), bool)
    index = np.arange(size)
    depth = np.minimum.outer(np.minimum(index, size - 1 - index), np.minimum(index, size - 1 - index))
    mask[(depth % 2 == 1) & (depth < size // 2)] = False
    for wall in range(2, size // 2, 2):
        mask[wall if wall % 4 == 0 else size - 1 - wall, size // 2] = False
    if open_to_border:
        mask[0, 3] = False
    return mask


def _body(shape, tunnel_to_border, rng):
    """A CT-like body: an elliptic cylinder in air with two lungs, a trachea-like tunnel along the
    first axis joined to them (open to the border or not) and 2 % pinholes."""
    z, y, x = shape
    zz, yy, xx = np.ogrid[:z, :y, :x]
    mask = np.broadcast_to(((yy - y / 2) / (0.42 * y)) ** 2 + ((xx - x / 2) / (0.45 * x)) ** 2 < 1, shape).copy()
    mask[:2] = mask[-2:] = False
    for side in (-1, 1):
        mask &= (((zz - z / 2) / (0.35 * z)) ** 2 + ((yy - y / 2) / (0.25 * y)) ** 2
                 + ((xx - x / 2 - side * 0.2 * x) / (0.14 * x)) ** 2) >= 1
    tube = (np.abs(yy - y // 2) < 2) & (np.abs(xx - x // 2) < 2)
    mask &= ~(tube & (zz <= z // 2) & (zz >= (0 if tunnel_to_border else 4)))
    mask &= ~((np.abs(zz - z // 2) < 2) & (np.abs(yy - y // 2) < 2) & (np.abs(xx - x // 2) < 0.3 * x))
    return mask & (rng.random(shape) >= 0.02)


def _hard_masks():
    rng = np.random.default_rng(4)
    out = [_spiral(41, False), _spiral(41, True), _spiral(40, False)]
    helix = np.ones((5, 41, 41), bool)
    helix[1:4] = _spiral(41, False)
    out.append(helix)
    helix = helix.copy()
    helix[2, 0, 3] = False  # the corridor's outer end opened in one slice
    out.append(helix)
    out += [_body((24, 48, 40), True, rng), _body((24, 48, 40), False, rng)]
    out += [_blobs(rng, (40, 50, 60), 0.6), _blobs(rng, (9, 10, 11, 12), 0.7), _blobs(rng, (300,), 0.6),
            rng.random((30, 40, 50)) < 0.7, rng.random((200, 300)) < 0.6]
    return out


@pytest.mark.parametrize("fn", FILL, ids=IDS)
def test_fill_holes_matches_scipy_on_mazes_bodies_and_large_masks(fn):
    for mask in _hard_masks():
        ref = binary_fill_holes(mask)
        assert np.array_equal(fn(torch.from_numpy(mask)).numpy(), ref), mask.shape
    assert bool((binary_fill_holes(_spiral(41, False)) != _spiral(41, False)).any())
    assert np.array_equal(binary_fill_holes(_spiral(41, True)), _spiral(41, True))


@pytest.mark.parametrize("fn", FILL, ids=IDS)
def test_fill_holes_small_ranks_and_strided_input(fn):
    assert fn(torch.tensor([True, False, False, True, False])).tolist() == [True, True, True, True, False]
    assert fn(torch.tensor(False)).tolist() is True
    assert fn(torch.zeros(0, 3, dtype=torch.bool)).shape == (0, 3)
    mask = _shell((7, 8, 9), False)
    out = fn(torch.from_numpy(mask).permute(2, 0, 1))
    assert np.array_equal(out.numpy(), binary_fill_holes(mask.transpose(2, 0, 1)))


@pytest.mark.parametrize("fn", MASK, ids=IDS)
def test_nonzero_mask_matches_create_nonzero_mask(fn):
    rng = np.random.default_rng(1)
    for mask in _masks():
        data = np.stack([np.where(mask & (rng.random(mask.shape) < p), rng.standard_normal(mask.shape), 0)
                         for p in (0.5, 0.7)]).astype(np.float32)
        ref = cropping.create_nonzero_mask(data)
        assert np.array_equal(fn(torch.from_numpy(data)).numpy(), ref), mask.shape


@pytest.mark.parametrize("fn", BBOX, ids=IDS)
def test_bounding_box_matches_acvl(fn):
    for mask in _masks():
        if mask.ndim == 3:
            assert fn(torch.from_numpy(mask)) == [list(map(int, b)) for b in get_bbox_from_mask(mask)]
    assert fn(torch.zeros(4, 5, dtype=torch.bool)) == [[0, 4], [0, 5]]


@pytest.mark.parametrize("fn", CROP, ids=IDS)
def test_crop_to_nonzero_matches_nnunet(fn):
    rng = np.random.default_rng(2)
    for index, mask in enumerate(m for m in _masks() if m.ndim == 3):
        channels = 1 + index % 3
        data = (np.where(mask, rng.standard_normal(mask.shape) + 3, 0)[None] * np.ones((channels, 1, 1, 1))).astype(np.float32)
        ref_data, ref_seg, ref_bbox = cropping.crop_to_nonzero(data.copy(), None)
        out_data, out_seg, out_bbox = fn(torch.from_numpy(data), True)
        assert out_bbox == [list(map(int, b)) for b in ref_bbox]
        assert torch.equal(out_data, torch.from_numpy(np.ascontiguousarray(ref_data)))
        assert out_seg.dtype == torch.int8 and torch.equal(out_seg, torch.from_numpy(ref_seg))
        fast_data, fast_seg, fast_bbox = fn(torch.from_numpy(data), False)
        assert fast_bbox == out_bbox and torch.equal(fast_data, out_data) and fast_seg.shape == (0,)


@pytest.mark.parametrize("fn", CROP, ids=IDS)
def test_crop_2d_quirk_keeps_holes(fn):
    data = _shell((1, 8, 9), False)[None].astype(np.float32)
    ref_data, ref_seg, _ = cropping.crop_to_nonzero(data.copy(), None)
    _, out_seg, _ = fn(torch.from_numpy(data), True)
    assert torch.equal(out_seg, torch.from_numpy(ref_seg)) and bool((out_seg == -1).any())


@pytest.mark.parametrize("fn", INSERT, ids=IDS)
def test_insert_crop_matches_acvl(fn):
    rng = np.random.default_rng(3)
    for fill in (0.0, 1.0, -1.0):
        crop = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
        bbox = [[1, 4], [0, 4], [2, 7]]
        ref = insert_crop_into_image(np.full((2, 6, 4, 9), fill, np.float32), crop, bbox)
        assert torch.equal(fn(torch.from_numpy(crop), [6, 4, 9], bbox, fill), torch.from_numpy(ref))
    seg = torch.arange(12, dtype=torch.uint8).view(3, 4)
    assert torch.equal(fn(seg, [5, 4], [[2, 5], [0, 4]], 0.0)[2:], seg)


@pytest.mark.parametrize("fn", INSERT, ids=IDS)
def test_insert_crop_rejects_a_misfit(fn):
    with pytest.raises(Exception) as info:
        fn(torch.zeros(3, 4), [5, 4], [[2, 4], [0, 4]], 0.0)
    assert "insert_crop: bbox [[2, 4], [0, 4]] does not place a crop of shape [3, 4] inside the spatial shape [5, 4]" in str(info.value)
