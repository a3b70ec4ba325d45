"""The Gaussian importance map of nnU-Net's sliding window, computed at build time exactly as
``nnunetv2.inference.sliding_window_prediction.compute_gaussian`` computes it, without scipy.

scipy's ``gaussian_filter`` of a unit delta with ``mode='constant'`` is, per voxel, the product of
the 1-D kernels' taps, multiplied axis by axis (each correlate1d pass meets exactly one non-zero
input, so no sum rounds). The 1-D kernel is scipy's ``_gaussian_kernel1d``: the same numpy calls,
so the same bits.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

#: compute_gaussian's arguments as nnUNetPredictor passes them.
SIGMA_SCALE = 1.0 / 8
VALUE_SCALING_FACTOR = 10
_TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter's default


def _kernel1d(sigma: float) -> np.ndarray:
    """scipy.ndimage._filters._gaussian_kernel1d(sigma, order=0, radius) for truncate=4."""
    radius = int(_TRUNCATE * float(sigma) + 0.5)
    sigma2 = sigma * sigma
    x = np.arange(-radius, radius + 1)
    phi_x = np.exp(-0.5 / sigma2 * x ** 2)
    return phi_x / phi_x.sum()


def compute_gaussian(patch_size: Sequence[int], dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """The importance map nnU-Net weights every tile's logits with (CPU tensor of ``dtype``)."""
    shape = [int(p) for p in patch_size]
    result = np.zeros(shape)
    centre = [p // 2 for p in shape]
    result[tuple(centre)] = 1.0
    for axis, (size, mid) in enumerate(zip(shape, centre)):
        kernel = _kernel1d(size * SIGMA_SCALE)
        radius = (len(kernel) - 1) // 2
        offsets = np.arange(size) - mid
        taps = np.where(np.abs(offsets) <= radius, kernel[np.clip(offsets + radius, 0, len(kernel) - 1)], 0.0)
        view = [1] * len(shape)
        view[axis] = size
        # The unit delta's line along this axis, times each tap: one multiplication per voxel.
        result = result.sum(axis=axis, keepdims=True) * taps.reshape(view)
    result /= np.max(result) / VALUE_SCALING_FACTOR
    gaussian = torch.from_numpy(result).to(dtype=dtype)
    # compute_gaussian: "cannot be 0, otherwise we may end up with nans"
    zero = gaussian == 0
    gaussian[zero] = torch.min(gaussian[~zero])
    return gaussian
