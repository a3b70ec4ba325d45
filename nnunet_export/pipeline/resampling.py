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
from typing import List, Optional, Tuple

import torch

from .float16_rounding import float64_to_float16, stored_as
from .spline_resize import (plane_taps, resize_like_skimage, resize_slices_into, resize_slices_like_skimage,
                            slices_workspace)

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


def _nearest_index(old_size: int, new_size: int) -> torch.Tensor:
    """The source index of each output position of ``map_coordinates(order=0, mode='nearest')``
    along one axis with nnU-Net's coordinates ``scale * (k + 0.5) - 0.5``, ``scale = old / new``."""
    scale = float(old_size) / float(new_size)
    coords = scale * (torch.arange(new_size, dtype=torch.float64) + 0.5) - 0.5
    return torch.floor(coords + 0.5).clamp(0, old_size - 1).to(torch.int64)


def _nearest_along_first(values: torch.Tensor, new_size: int) -> torch.Tensor:
    """``map_coordinates(order=0, mode='nearest')`` along axis 0; the other axes' coordinates are
    exact integers (scale 1) and pass through."""
    return values.index_select(0, _nearest_index(values.shape[0], new_size))


def _slices_read(old_size: int, new_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(the source slices the nearest pass along the separate axis reads, ascending; for each
    output slice its position among them). Only those slices need the in-plane resize."""
    index = torch.arange(old_size, dtype=torch.int64) if old_size == new_size else _nearest_index(old_size, new_size)
    first = torch.ones(index.shape, dtype=torch.int64)
    first[1:] = (index[1:] != index[:-1]).to(torch.int64)
    return index[first == 1], torch.cumsum(first, 0) - 1


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
    slices = resize_slices_like_skimage(image.movedim(axis, 0).contiguous(), _in_plane(new_shape, axis), order)
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
    if axis >= 0 and order_z == 0:
        # Nearest along the separate axis only picks slices: resize just the slices it reads,
        # each stored in the data's dtype as it is computed.
        moved = data.movedim(axis + 1, 1)
        read, position = _slices_read(moved.shape[1], new_shape[axis])
        in_plane = _in_plane(new_shape, axis)
        taps = plane_taps([moved.shape[2], moved.shape[3]], in_plane, order, data.device)
        step = _slab(moved.shape[2] * moved.shape[3])
        work = slices_workspace([moved.shape[2], moved.shape[3]], in_plane, order, min(step, read.shape[0]), data.device)
        most = min(step, read.shape[0])
        source = torch.empty([most, moved.shape[2], moved.shape[3]], dtype=torch.float64)
        planes = torch.empty([most, in_plane[0], in_plane[1]], dtype=data.dtype)
        for c in range(data.shape[0]):
            into = result.select(0, c).movedim(axis, 0)
            for begin in range(0, read.shape[0], step):
                picked = read[begin:begin + step]
                slab = source.narrow(0, 0, picked.shape[0])
                slab.copy_(_read(moved[c], picked))
                resized = planes.narrow(0, 0, picked.shape[0])
                resize_slices_into(slab, taps, order, resized, False, work)
                _place(into, resized, position, begin)
        return result
    for c in range(data.shape[0]):
        result[c] = stored_as(_resample_channel(data[c], new_shape, axis, order, order_z), data.dtype)
    return result


def _read(slices: torch.Tensor, picked: torch.Tensor) -> torch.Tensor:
    """``slices[picked]`` (ascending indices): a view when they are consecutive."""
    first = int(picked[0])
    count = picked.shape[0]
    if int(picked[-1]) - first + 1 == count:
        return slices.narrow(0, first, count)
    return slices.index_select(0, picked)


def _place(into: torch.Tensor, resized: torch.Tensor, position: torch.Tensor, begin: int) -> None:
    """The output slices (along ``into``'s dim 0) whose read slice is one of ``resized``
    (read slices ``begin ..``): a contiguous run of outputs, since ``position`` ascends."""
    ours = torch.nonzero((position >= begin) & (position < begin + resized.shape[0])).view(-1)
    first = int(ours[0])
    count = ours.shape[0]
    into.narrow(0, first, count).copy_(resized.index_select(0, position.narrow(0, first, count) - begin))


def _in_plane(new_shape: List[int], axis: int) -> List[int]:
    sizes: List[int] = []
    for i in range(len(new_shape)):
        if i != axis:
            sizes.append(new_shape[i])
    return sizes


def _slab(plane_elements: int) -> int:
    """Slices converted to float64 at a time (for order 3 also the batch whose spline coefficients
    are computed together): about 4 M elements, at least 1. Long rows keep the per-op overhead of
    the prefilter's recursion small; the slab buffers are allocated once per call and reused
    (fresh allocations would fault in new pages slab after slab, see ``workspace``)."""
    return max(1, 4194304 // plane_elements)


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
    ``np.argmax`` over the resampled float16 logits (its values, as uint8, or int16 beyond 256
    channels), or, with ``regions_class_order``, a uint16 map where each region ``i`` in turn
    writes ``regions_class_order[i]`` where its logit passes ``sigmoid > 0.5``.

    Channels are resampled one at a time (with separate z and nearest along it, a slab of slices
    at a time), so no (channels, *new_shape) buffer exists. Ties keep the lowest channel and a nan
    wins as in numpy (first nan).

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
    # numpy's argmax is int64; the label map is kept in the smallest dtype that holds every class.
    label_dtype = torch.uint16 if not labels else (torch.uint8 if channels <= 256 else torch.int16)
    # Finite logits have a finite min and max (both propagate nan); one fast read of the logits.
    lowest, highest = torch.aminmax(logits)
    finite = bool(torch.isfinite(lowest)) and bool(torch.isfinite(highest))
    if not unchanged and axis >= 0 and order_z == 0 and finite:
        return _streamed_segmentation(logits, new_shape, axis, order, regions_class_order, label_dtype)
    segmentation = torch.zeros(new_shape, dtype=label_dtype)
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


def _streamed_segmentation(logits: torch.Tensor, new_shape: List[int], axis: int, order: int,
                           regions_class_order: List[int], label_dtype: torch.dtype) -> torch.Tensor:
    """The separate-z, nearest-along-z segmentation of finite logits, a slab of read slices at a
    time, every class of a slab before the next: each plane's float16 values come straight out of
    the resize, and the running argmax (or region rule) is plain arithmetic on float32, exact for
    float16 values: ``clamp(sign(v - best), 0, 1)`` is numpy's strict ``>`` (first maximum kept),
    and the label is the channel's index where that is 1 (the channels ascend)."""
    moved = logits.movedim(axis + 1, 1)
    read, position = _slices_read(moved.shape[1], new_shape[axis])
    in_plane = _in_plane(new_shape, axis)
    taps = plane_taps([moved.shape[2], moved.shape[3]], in_plane, order, logits.device)
    out_shape = [new_shape[axis], in_plane[0], in_plane[1]]
    segmentation = torch.empty(out_shape, dtype=label_dtype)
    step = _slab(moved.shape[2] * moved.shape[3])
    regions = len(regions_class_order) > 0
    work = slices_workspace([moved.shape[2], moved.shape[3]], in_plane, order, min(step, read.shape[0]), logits.device)
    # One set of slab buffers for the whole volume (reused memory, see _slab).
    most = min(step, read.shape[0])
    source = torch.empty([most, moved.shape[2], moved.shape[3]], dtype=torch.float64)
    values = torch.empty([most, in_plane[0], in_plane[1]], dtype=torch.float32)
    bests = torch.empty([most, in_plane[0], in_plane[1]], dtype=torch.float32)
    labels = torch.empty([most, in_plane[0], in_plane[1]], dtype=torch.float32)
    for begin in range(0, read.shape[0], step):
        picked = read[begin:begin + step]
        value = values.narrow(0, 0, picked.shape[0])
        best = bests.narrow(0, 0, picked.shape[0])
        label = labels.narrow(0, 0, picked.shape[0])
        label.zero_()
        slab = source.narrow(0, 0, picked.shape[0])
        for c in range(logits.shape[0]):
            slab.copy_(_read(moved[c], picked))
            resize_slices_into(slab, taps, order, value, True, work)
            if regions:
                # h >= 2**-23 is h > 2**-24 among float16 values: sigmoid(float(h)) > 0.5.
                passed = torch.sign(value - 5.9604644775390625e-08).clamp_(0.0, 1.0)
                label.add_((float(regions_class_order[c]) - label).mul_(passed))
            elif c == 0:
                best.copy_(value)
            else:
                better = torch.sign(value - best).clamp_(0.0, 1.0)
                torch.maximum(label, better.mul_(float(c)), out=label)
                torch.maximum(best, value, out=best)
        _place(segmentation, label, position, begin)
    return segmentation.movedim(0, axis)
