"""Tile placement and mirroring order against nnU-Net's own functions, eager and scripted; the
Gaussian against compute_gaussian, bit for bit."""
import itertools
import random

import pytest
import torch
from acvl_utils.cropping_and_padding.padding import pad_nd_image
from nnunetv2.inference.sliding_window_prediction import compute_gaussian as nnunet_gaussian
from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

from nnunet_export.pipeline.gaussian import compute_gaussian
from nnunet_export.pipeline.sliding_window import compute_steps, mirror_combinations, padding_for

scripted_steps = torch.jit.script(compute_steps)


def _cases(count=300, seed=3):
    rng = random.Random(seed)
    cases = [((109, 64, 64), (64, 64, 64), 0.5), ((110, 64, 64), (64, 64, 64), 0.5), ((64,), (64,), 0.5)]
    for _ in range(count):
        dims = rng.choice([2, 3])
        patch = [rng.randint(1, 96) for _ in range(dims)]
        size = [p + rng.randint(0, 300) for p in patch]
        cases.append((tuple(size), tuple(patch), rng.choice([0.1, 0.25, 0.3, 0.5, 0.7, 0.75, 0.9, 1.0])))
    return cases


@pytest.mark.parametrize("size, patch, step", _cases())
def test_steps_are_nnunets(size, patch, step):
    expected = compute_steps_for_sliding_window(size, patch, step)
    assert compute_steps(list(size), list(patch), step) == expected
    assert scripted_steps(list(size), list(patch), step) == expected


@pytest.mark.parametrize("shape, patch", [((1, 5, 7, 9), (10, 20, 20)), ((2, 10, 21, 19), (10, 20, 20)),
                                          ((1, 3, 47, 50), (48, 48)), ((1, 12, 40, 41), (10, 20, 20))])
def test_padding_is_pad_nd_images(shape, patch):
    data = torch.arange(torch.Size(shape).numel(), dtype=torch.float32).reshape(shape)
    padded, slicer = pad_nd_image(data, patch, "constant", {"value": 0}, True, None)
    below, above = padding_for(list(shape[1:]), list(patch))
    offset = len(shape) - len(patch)
    assert [s.start or 0 for s in slicer[offset:]] == below
    assert [padded.shape[offset + i] - shape[offset + i] - below[i] for i in range(len(patch))] == above


@pytest.mark.parametrize("axes", [(0, 1, 2), (0, 1), (1, 2), (0,), (2,), (0, 2)])
def test_mirror_order_is_itertools_combinations(axes):
    shifted = [a + 2 for a in axes]
    expected = [list(c) for i in range(len(shifted)) for c in itertools.combinations(shifted, i + 1)]
    assert mirror_combinations(list(axes)) == expected


@pytest.mark.parametrize("patch", [(10, 20, 20), (48, 48), (10, 20, 16), (7, 9, 11), (80, 160, 160), (512, 512)])
def test_gaussian_is_compute_gaussians(patch):
    expected = nnunet_gaussian(patch, sigma_scale=1.0 / 8, value_scaling_factor=10, device=torch.device("cpu"))
    got = compute_gaussian(patch)
    assert got.dtype == expected.dtype == torch.float16
    assert torch.equal(got.view(torch.int16), expected.view(torch.int16))
