"""nnU-Net's default resampling (``nnunetv2.preprocessing.resampling.default_resampling``) and its
logits export (``convert_predicted_logits_to_segmentation_with_correct_shape`` up to, not
including, the un-cropping), as TorchScript-compilable free functions that give the same bits on
the CPU.

nnU-Net resizes each channel in float64 (``data.astype(float)``) with skimage (``mode='edge'``,
no anti-aliasing, clipped) and stores the result into an array of the input's dtype: float32 for
image data, float16 for logits (numpy rounds float64 to float16 directly, torch's ``.half()``
would round twice). With separate z, every slice across the low-resolution axis is resized on its
own (and clipped to its own range), then ``map_coordinates(order=order_z, mode='nearest')``
gathers along that axis. An unchanged shape returns the input itself.

The segmentation is built channel by channel (one channel's float64 resize at a time): a running
argmax with a strict ``>`` in ascending channel order is numpy's first maximum, and the region
rule ``sigmoid(float(h)) > 0.5`` on a float16 logit ``h`` is exactly ``h >= 2**-23``.
"""
import math
from typing import List, Optional

import torch

from .spline_resize import resize_like_skimage, resize_slices_like_skimage

# Messages are f-strings at the raise: TorchScript cannot call methods of module-level strings.

def compute_new_shape(old_shape: List[int], old_spacing: List[float], new_spacing: List[float]) -> List[int]:
    """nnU-Net's ``compute_new_shape``: ``int(round(old_spacing / new_spacing * old_shape))`` per
    axis, in float64 with Python's half-to-even ``round``."""
    if len(old_spacing) != len(old_shape) or len(new_spacing) != len(old_shape):
        raise ValueError(f"compute_new_shape: old_shape, old_spacing and new_spacing must have the same length, "
                         f"got {len(old_shape)}, {len(old_spacing)} and {len(new_spacing)}")
    new_shape: List[int] = []
    for i in range(len(old_shape)):
        new_shape.append(int(round(old_spacing[i] / new_spacing[i] * float(old_shape[i]))))
    return new_shape


def _is_anisotropic(spacing: List[float], threshold: float) -> bool:
    return max(spacing) / min(spacing) > threshold


def _lowres_axis(spacing: List[float]) -> int:
    """get_lowres_axis: the single axis with ``max / s == 1``; -1 when two or three axes tie."""
    largest = max(spacing)
    axis = -1
    count = 0
    for i in range(len(spacing)):
        if largest / spacing[i] == 1.0:
            axis = i
            count += 1
    if count != 1:
        return -1
    return axis


def separate_z_axis(current_spacing: List[float], new_spacing: List[float],
                    force_separate_z: Optional[bool], threshold: float) -> int:
    """nnU-Net's ``determine_do_sep_z_and_axis``: the axis resized separately (order ``order_z``
    along it), or -1 for one joint resize.

    ``force_separate_z`` None decides by anisotropy (``max / min > threshold``), first of the
    current spacing, then of the new one; a forced or decided axis is dropped (-1) when two or three
    axes share the largest spacing.
    """
    if force_separate_z is not None:
        if force_separate_z:
            return _lowres_axis(current_spacing)
        return -1
    if _is_anisotropic(current_spacing, threshold):
        return _lowres_axis(current_spacing)
    if _is_anisotropic(new_spacing, threshold):
        return _lowres_axis(new_spacing)
    return -1


def float64_to_float16(values: torch.Tensor) -> torch.Tensor:
    """Round float64 to float16 once, to nearest even, as numpy's ``astype(float16)`` does
    (subnormals, overflow to inf, nan included).

    ``.half()`` on float64 rounds through float32, which can land on a float16 midpoint the float64
    value was not on. Rounding to float32 *to odd* (an inexact result keeps an odd last bit) cannot
    create such a midpoint, float32 having far more than two bits beyond float16's, so the second
    rounding is the correct one.
    """
    nearest = values.float()
    error = values - nearest.double()
    # The last significand bit: frexp's mantissa in [0.5, 1) times 2**24 is the integer significand.
    # inf and nan give garbage there, harmlessly: their neighbours round to the same float16.
    # float32 subnormals, whichever neighbour, become a float16 zero.
    mantissa, _ = torch.frexp(nearest)
    even = ((mantissa * 16777216.0).to(torch.int32) & 1) == 0
    # float32 keeps the error's sign even where its magnitude underflows (to a signed zero).
    toward = torch.nextafter(nearest, torch.copysign(torch.full_like(nearest, math.inf), error.float()))
    odd = torch.where((error != 0) & even, toward, nearest)
    return odd.half()


def _store(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """What assigning float64 ``values`` into a numpy array of ``dtype`` stores."""
    if dtype == torch.float16:
        return float64_to_float16(values)
    return values.to(dtype)


def _nearest_along_first(values: torch.Tensor, new_size: int) -> torch.Tensor:
    """``map_coordinates(order=0, mode='nearest')`` along axis 0 with nnU-Net's coordinates
    ``scale * (k + 0.5) - 0.5``, ``scale = old / new``; the other axes' coordinates are exact
    integers (scale 1) and pass through."""
    old_size = values.shape[0]
    scale = float(old_size) / float(new_size)
    coords = scale * (torch.arange(new_size, dtype=torch.float64) + 0.5) - 0.5
    index = torch.floor(coords + 0.5).clamp(0, old_size - 1).to(torch.int64)
    return values.index_select(0, index)


def _shifted_up(values: torch.Tensor, dim: int) -> torch.Tensor:
    """``values`` at index ``i + 1`` along ``dim``, the last index repeated (scipy's clamped tap)."""
    last = values.shape[dim] - 1
    return torch.cat([values.narrow(dim, 1, last), values.narrow(dim, last, 1)], dim)


def _linear_along_first(values: torch.Tensor, new_size: int) -> torch.Tensor:
    """``map_coordinates(order=1, mode='nearest')`` along axis 0 with nnU-Net's coordinates: the
    coordinate is not clamped, its two taps are (weights ``1 - x`` and ``1 - (1 - x)``), summed from
    0.0 in tap order. scipy's in-plane taps have weight 0 (integer coordinates): they add a signed
    zero, or nan where a neighbour is not finite."""
    old_size = values.shape[0]
    scale = float(old_size) / float(new_size)
    coords = scale * (torch.arange(new_size, dtype=torch.float64) + 0.5) - 0.5
    start = torch.floor(coords)
    w0 = 1.0 - (coords - start)
    w1 = 1.0 - w0
    first = start.clamp(0, old_size - 1).to(torch.int64)
    second = (start + 1.0).clamp(0, old_size - 1).to(torch.int64)
    line = [new_size, 1, 1]
    result = (values.index_select(0, first) * w0.view(line) + 0.0) + values.index_select(0, second) * w1.view(line)
    across = _shifted_up(values, 1)
    zero_taps = (across + _shifted_up(values, 2) + _shifted_up(across, 2)) * 0.0
    return (result + zero_taps.index_select(0, first)) + zero_taps.index_select(0, second)


def _along_first(values: torch.Tensor, new_size: int, order_z: int) -> torch.Tensor:
    if order_z == 0:
        return _nearest_along_first(values, new_size)
    return _linear_along_first(values, new_size)


def _resample_channel(channel: torch.Tensor, new_shape: List[int], axis: int, order: int,
                      order_z: int) -> torch.Tensor:
    """One channel (x, y, z) of any float dtype, resized in float64 as nnU-Net does; float64 out."""
    image = channel.to(torch.float64)
    if axis < 0:
        return resize_like_skimage(image, new_shape, order)
    in_plane: List[int] = []
    for i in range(len(new_shape)):
        if i != axis:
            in_plane.append(new_shape[i])
    slices = resize_slices_like_skimage(image.movedim(axis, 0).contiguous(), in_plane, order)
    if slices.shape[0] != new_shape[axis]:
        slices = _along_first(slices, new_shape[axis], order_z)
    return slices.movedim(0, axis)


def _dtype_name(data: torch.Tensor) -> str:
    # TorchScript prints a dtype as its enum number: name the kind instead there.
    return "another dtype" if torch.jit.is_scripting() else str(data.dtype)


def _check(caller: str, data: torch.Tensor, new_shape: List[int], order_z: int) -> None:
    if data.dim() != 4:
        raise ValueError(f"{caller}: the tensor must be (channels, x, y, z) (4 dimensions), got {data.dim()} dimensions")
    if len(new_shape) != 3:
        raise ValueError(f"{caller}: new_shape must have 3 entries (x, y, z), got {len(new_shape)}")
    if order_z != 0 and order_z != 1:
        raise ValueError(f"{caller}: order_z must be 0 (nnU-Net's default: nearest along the separate axis) or 1, "
                         f"got {order_z}")


def _unchanged(data: torch.Tensor, new_shape: List[int]) -> bool:
    return list(data.shape[1:]) == new_shape


def resample_data(data: torch.Tensor, new_shape: List[int], current_spacing: List[float],
                  new_spacing: List[float], order: int, order_z: int,
                  force_separate_z: Optional[bool], threshold: float) -> torch.Tensor:
    """``resample_data_or_seg_to_shape(data, new_shape, current_spacing, new_spacing,
    is_seg=False, order, order_z, force_separate_z, threshold)``, bit for bit.

    Args:
        data: (channels, x, y, z), float16, float32 or float64.
        new_shape: the 3 spatial sizes wanted.
    Returns:
        ``data`` itself when the shape is unchanged, else a new tensor of ``data``'s dtype.
    Raises:
        ValueError (torch.jit.Error when scripted): wrong rank, dtype or ``order_z`` (0 or 1).
    """
    _check("resample_data", data, new_shape, order_z)
    if data.dtype != torch.float16 and data.dtype != torch.float32 and data.dtype != torch.float64:
        raise ValueError(f"resample_data: data must be float16, float32 or float64, got {_dtype_name(data)}")
    if _unchanged(data, new_shape):
        return data
    axis = separate_z_axis(current_spacing, new_spacing, force_separate_z, threshold)
    shape: List[int] = [data.shape[0]]
    shape.extend(new_shape)
    result = torch.empty(shape, dtype=data.dtype)
    for c in range(data.shape[0]):
        result[c] = _store(_resample_channel(data[c], new_shape, axis, order, order_z), data.dtype)
    return result


def resample_logits(logits: torch.Tensor, new_shape: List[int], current_spacing: List[float],
                    new_spacing: List[float], order: int, order_z: int,
                    force_separate_z: Optional[bool], threshold: float) -> torch.Tensor:
    """nnU-Net's ``resampling_fn_probabilities`` on float16 logits (channels, x, y, z): float16
    out, each value rounded once from float64; the logits themselves when the shape is unchanged."""
    caller = "resample_logits"
    if logits.dtype != torch.float16:
        raise ValueError(f"{caller}: logits must be float16 (nnU-Net's logits), got {_dtype_name(logits)}")
    return resample_data(logits, new_shape, current_spacing, new_spacing, order, order_z,
                         force_separate_z, threshold)


def segmentation_from_logits(logits: torch.Tensor, new_shape: List[int], current_spacing: List[float],
                             new_spacing: List[float], order: int, order_z: int,
                             force_separate_z: Optional[bool], threshold: float,
                             regions_class_order: List[int]) -> torch.Tensor:
    """The segmentation nnU-Net's export computes from float16 logits before un-cropping:
    ``np.argmax`` over the resampled float16 logits (int64), or, with ``regions_class_order``, a
    uint16 map where each region ``i`` in turn writes ``regions_class_order[i]`` where its logit
    passes ``sigmoid > 0.5``.

    Channels are resampled one at a time, so no (channels, *new_shape) buffer exists. Ties keep the
    lowest channel and a nan wins as in numpy (first nan).

    Raises:
        ValueError (torch.jit.Error when scripted): as :func:`resample_logits`, or a
        ``regions_class_order`` whose length is not the channel count.
    """
    caller = "segmentation_from_logits"
    if logits.dtype != torch.float16:
        raise ValueError(f"{caller}: logits must be float16 (nnU-Net's logits), got {_dtype_name(logits)}")
    _check(caller, logits, new_shape, order_z)
    channels = logits.shape[0]
    if len(regions_class_order) != 0 and len(regions_class_order) != channels:
        raise ValueError(f"segmentation_from_logits: regions_class_order has {len(regions_class_order)} entries "
                         f"but the logits have {channels} channels")
    unchanged = _unchanged(logits, new_shape)
    axis = separate_z_axis(current_spacing, new_spacing, force_separate_z, threshold)
    labels = len(regions_class_order) == 0
    segmentation = torch.zeros(new_shape, dtype=torch.int64 if labels else torch.uint16)
    best = torch.empty([0], dtype=torch.float16)
    for c in range(channels):
        if unchanged:
            value = logits[c]
        else:
            value = float64_to_float16(_resample_channel(logits[c], new_shape, axis, order, order_z))
        if not labels:
            # sigmoid(float(h)) > 0.5 on the CPU for exactly these float16 h (2**-24 fails it).
            region = torch.full([1], regions_class_order[c], dtype=torch.uint16)  # uint16 has no masked_fill
            segmentation = torch.where(value >= 2.0 ** -23, region, segmentation)
        elif c == 0:
            best = value.clone()
        else:
            better = (value > best) | (torch.isnan(value) & ~torch.isnan(best))
            best = torch.where(better, value, best)
            segmentation.masked_fill_(better, c)
    return segmentation
