"""nnU-Net's intensity normalization schemes, bit for bit, as TorchScript-compatible functions.

Each scheme reproduces ``normalizer.run(image, seg)`` of nnU-Net's class of the same name
(``default_normalization_schemes.py``) on a float32 image, contiguous or the strided view the
preprocessor hands over (``data[c]`` of the transposed, cropped array). The plans' statistics are
Python floats, which numpy (NEP 50) treats as weak scalars: each is rounded to float32 and the
operation is float32, so here they become float32 0-dim tensors before use. The z-score
statistics use numpy's float32 sums in numpy's order for the image's layout (numpy_reductions).
"""
from __future__ import annotations

from typing import List

import torch
from torch import Tensor

from .numpy_reductions import numpy_float32_mean_std

NORMALIZATION_SCHEMES: List[str] = [
    "CTNormalization",
    "ZScoreNormalization",
    "RescaleTo01Normalization",
    "RGBTo01Normalization",
    "NoNormalization",
]

# TorchScript reads no module-level strings and formats only positional fields, so the messages
# are built by the two functions below (eager and scripted code raise the same text).


def unknown_scheme_message(name: str) -> str:
    """The error text for a normalization scheme normalize_channel does not know."""
    return ("normalization scheme '" + name + "' is not one of nnU-Net's: CTNormalization, "
            "ZScoreNormalization, RescaleTo01Normalization, RGBTo01Normalization, NoNormalization")


def rgb_range_message(low: float, high: float) -> str:
    """The error text for RGBTo01Normalization given values outside [0, 255]."""
    return ("RGBTo01Normalization expects values in [0, 255] (uint8 RGB images), found values in ["
            + str(low) + ", " + str(high) + "]")


def _f32(value: float, like: Tensor) -> Tensor:
    """A plans float as numpy's weak scalar meets a float32 array: rounded to float32."""
    return torch.tensor(value, dtype=torch.float32, device=like.device)


def _f32_scalar(value: float) -> float:
    """The same float32 rounding as a Python float: a float32 tensor meets it as that float32
    value, on the fast scalar path (0-dim tensor operands take a slow broadcasting one)."""
    return float(torch.tensor(value, dtype=torch.float32))


def _divisor(std: float, eps: float) -> float:
    """Python's ``max(std, eps)``: ``std`` unless ``eps > std`` (so a NaN std stays NaN)."""
    if eps > std:
        return eps
    return std


def _zscore(image: Tensor, mask: Tensor, use_mask: bool) -> Tensor:
    eps = 1e-8
    if use_mask:
        values = image[mask]
        mean, std = numpy_float32_mean_std(values)
        out = image.clone()
        out[mask] = (values - mean) / _f32(_divisor(float(std), eps), image)
        return out
    mean, std = numpy_float32_mean_std(image)
    return (image - float(mean)).div_(_f32_scalar(_divisor(float(std), eps)))


def normalize_channel(image: Tensor, seg: Tensor, scheme: str, use_mask_for_norm: bool,
                      intensity: List[float]) -> Tensor:
    """One channel normalized as nnU-Net's ``scheme`` class does it (a new tensor).

    Args:
        image: float32 channel (*spatial): contiguous, or a view of a permuted and cropped
            tensor with the layout of nnU-Net's numpy view (``data[c]`` after ``transpose`` and
            the bbox crop). Pass the view itself: numpy's mean/std depend on the layout.
        seg: the crop's int8 map (*spatial), >= 0 inside the filled nonzero mask; read only by
            ZScoreNormalization with ``use_mask_for_norm`` (voxels outside the mask are kept).
        scheme: one of NORMALIZATION_SCHEMES.
        use_mask_for_norm: the plans' flag of this channel.
        intensity: ``[mean, std, percentile_00_5, percentile_99_5]`` of the plans'
            foreground_intensity_properties_per_channel (read by CTNormalization only).
    Returns:
        float32 tensor equal bit for bit to ``cls(use_mask_for_norm=..., intensityproperties=...)
        .run(image.numpy(), seg.numpy())``.
    Raises:
        RuntimeError (torch.jit.Error when scripted): an unknown scheme, or RGB values outside
        [0, 255].
    Note:
        numpy sums a strided view in memory order in buffered chunks, not pairwise over the whole
        run, and ZScoreNormalization without the mask takes its statistics over the view itself;
        numpy_float32_mean_std follows ``image``'s strides, so a torch view with the numpy view's
        layout gives the same bits. The masked statistics read ``image[mask]`` (C order, either way).
    Example:
        >>> normalize_channel(torch.tensor([0.0, 500.0]), torch.zeros(2, dtype=torch.int8),
        ...                   "CTNormalization", False, [100.0, 50.0, 0.0, 400.0]).tolist()
        [-2.0, 6.0]
    """
    if scheme == "CTNormalization":
        # One new array, then in place: the same float32 operations, without a fresh
        # volume-sized allocation (and its page faults) per step.
        clipped = torch.clamp(image, _f32_scalar(intensity[2]), _f32_scalar(intensity[3]))
        return clipped.sub_(_f32_scalar(intensity[0])).div_(_f32_scalar(_divisor(intensity[1], 1e-8)))
    if scheme == "ZScoreNormalization":
        return _zscore(image, seg >= 0, use_mask_for_norm)
    if scheme == "RescaleTo01Normalization":
        shifted = image - image.min()
        return shifted.div_(torch.clamp(shifted.max(), min=_f32(1e-8, image)))
    if scheme == "RGBTo01Normalization":
        low = float(image.min())
        high = float(image.max())
        if not (low >= 0.0 and high <= 255.0):
            raise RuntimeError(rgb_range_message(low, high))
        return image / _f32(255.0, image)
    if scheme == "NoNormalization":
        # A copy: the result must not alias the caller's image.
        return image.to(torch.float32).clone()
    raise RuntimeError(unknown_scheme_message(scheme))
