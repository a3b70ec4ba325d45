"""skimage's ``resize(image, shape, order, mode='edge', anti_aliasing=False)`` in float64 torch, bit for bit.

skimage 0.26 hands the image to ``scipy.ndimage.zoom(image, 1 / (in / out), order, mode='nearest',
grid_mode=True)`` for every order (0 included) and then clips the result to ``[image.min(),
image.max()]``. scipy 1.17's zoom computes, per output voxel:

* order 3 only: the spline coefficients (``spline_prefilter``: edge padding by 12, the cubic
  B-spline prefilter along each axis in turn), in float64;
* per axis ``zoom = in / out`` and the coordinate ``((k + 0.5) * zoom - 0.5) + pad``, its first tap
  ``floor(cc) - order // 2`` (order 0: ``floor(cc + 0.5)``), the taps' indices clamped to the axis,
  and the spline weights of ``cc - floor(cc)``;
* ``t = 0.0; t += ((c * w_axis0) * w_axis1) * w_axis2`` over the taps, last axis fastest.

Every step below is the same IEEE operation in the same order (separate multiplies and adds, no
fused ops), so the results equal scipy's bits. The taps are evaluated in stages (gather along
axis 0 and multiply by its weight once, then along the next axis), which shares work without
changing any product: gathering ``c * w`` is gathering ``c`` and multiplying by ``w``.

A 2-D plane is evaluated in blocks of output rows. A block's stage (its rows of ``c * w_axis0``)
is transposed, so the gather along the last axis copies whole rows and the block's sums build up
transposed, in cache; the clipped block is stored in the output's dtype (numpy's single rounding
for float16) as it is written back. Every output voxel is computed alone, so the bits do not
depend on the blocking. Everything runs on the calling thread's ops (no torch.jit.fork: an
exported file whose inter-op threads were started aborted at process exit).

An equal shape is skimage's copy of the input (scipy's zoom returns early when every factor is 1).
Only the sign of an exact zero may differ from skimage where the clip meets ``-0.0`` against
``0.0`` (``clamp`` and ``np.clip`` agree on every other value). The 2-D slices path clips a slice
holding nan to its nanmin and nanmax, as skimage does; the 3-D path does not support nan.
"""
from __future__ import annotations

import math
from typing import List, Tuple

import torch
from torch import Tensor

from .float16_rounding import float16_values_into, float16_workspace, stored_as
from .spline_prefilter import slice_coefficients_into, slice_workspace, spline_pad, volume_coefficients
from .workspace import leading_view

# TorchScript reads no module globals: the constants are literals, named once here.
#: Default number of float64 elements one intermediate may hold before the work is chunked (32 MiB).
CHUNK_ELEMENTS = 1 << 22
#   32768: the float64 elements of one 3-D tap block (256 KiB, stays in a core's cache).
#   65536: the float64 elements of one 2-D plane block (512 KiB with its stage and gather).


def _tap_block() -> int:
    return 32768


def _plane_block() -> int:
    return 65536


def _check_order(order: int) -> None:
    if order != 0 and order != 1 and order != 3:
        raise ValueError(f"resize_like_skimage: order must be 0, 1 or 3, got {order}")


def _check_image(image: Tensor, rank: int, new_shape: List[int], what: str) -> None:
    if image.dim() != rank:
        raise ValueError(f"{what}: expected a {rank}-D float64 tensor, got {image.dim()}-D")
    if image.dtype != torch.float64:
        raise ValueError(f"{what}: expected a float64 tensor (nnU-Net resizes in float64; convert with .double())")
    expected = rank if what == "resize_like_skimage" else rank - 1
    if len(new_shape) != expected:
        raise ValueError(f"{what}: new_shape must have {expected} sizes, got {new_shape}")
    for size in new_shape:
        if size < 1:
            raise ValueError(f"{what}: new_shape sizes must be >= 1, got {new_shape}")
    if image.numel() == 0:
        raise ValueError(f"{what}: the image is empty (shape {list(image.shape)})")


def _axis_taps(in_len: int, out_len: int, order: int, pad: int) -> Tuple[Tensor, Tensor]:
    """Indices (into the padded axis) and weights, both (out_len, order + 1), as scipy's zoom
    computes them for one axis (``NI_ZoomShift`` and ``get_spline_interpolation_weights``)."""
    zoom = float(in_len) / float(out_len)
    cc = torch.arange(out_len, dtype=torch.float64)
    cc = cc + 0.5
    cc = cc * zoom
    cc = cc - 0.5
    cc = cc + float(pad)
    padded_len = in_len + 2 * pad
    if order == 0:
        start = torch.floor(cc + 0.5).to(torch.int64)
        index = start.clamp(0, padded_len - 1).view(out_len, 1)
        return index, torch.ones(out_len, 1, dtype=torch.float64)
    floor = torch.floor(cc)
    x = cc - floor
    start = floor.to(torch.int64) - order // 2
    offsets = torch.arange(order + 1, dtype=torch.int64)
    index = (start.view(out_len, 1) + offsets.view(1, order + 1)).clamp(0, padded_len - 1)
    if order == 1:
        w0 = 1.0 - x
        w1 = 1.0 - w0
        return index, torch.stack([w0, w1], dim=1)
    y = x
    z = 1.0 - x
    w1 = (((y * y) * (y - 2.0)) * 3.0 + 4.0) / 6.0
    w2 = (((z * z) * (z - 2.0)) * 3.0 + 4.0) / 6.0
    w0 = ((z * z) * z) / 6.0
    w3 = ((1.0 - w0) - w1) - w2
    return index, torch.stack([w0, w1, w2, w3], dim=1)


def _accumulate(
    t: Tensor, source: Tensor, index1: Tensor, weight1: Tensor, index2: Tensor, weight2: Tensor
) -> None:
    """``t += (source[i2, i1, :] * w1) * w2`` over the taps of axis 1 then axis 2 (axis 2
    fastest). ``source`` is (p2, p1, B), already multiplied by any earlier axis' weight; ``t`` is
    (o2, o1, B). Every gather copies whole rows, and the blocks are small enough to stay in cache."""
    o2 = index2.shape[0]
    gathered = torch.empty([o2, t.shape[1] * t.shape[2]], dtype=t.dtype, device=t.device)
    flat_t = t.view(o2, -1)
    for h1 in range(index1.shape[1]):
        stage = torch.index_select(source, 1, index1[:, h1])
        stage.mul_(weight1[:, h1].view(1, -1, 1))
        flat = stage.view(stage.shape[0], -1)
        for h2 in range(index2.shape[1]):
            torch.index_select(flat, 0, index2[:, h2], out=gathered)
            gathered.mul_(weight2[:, h2].view(-1, 1))
            flat_t.add_(gathered)


def _device_taps(in_len: int, out_len: int, order: int, pad: int, device: torch.device) -> Tuple[Tensor, Tensor]:
    index, weight = _axis_taps(in_len, out_len, order, pad)
    return index.to(device), weight.to(device)


def resize_like_skimage(image: Tensor, new_shape: List[int], order: int, chunk_elements: int = 4194304) -> Tensor:
    """``skimage.transform.resize(image, new_shape, order=order, mode='edge', anti_aliasing=False)``
    for a float64 2-D or 3-D tensor, bit for bit (see the module docstring).

    Args:
        image: float64 tensor, 2-D or 3-D, no channel axis.
        new_shape: the output size per axis (one per image axis, each >= 1).
        order: spline order, 0, 1 or 3.
        chunk_elements: the most float64 elements one intermediate holds (``CHUNK_ELEMENTS``);
            the output rows are processed in chunks to stay below it.

    Returns:
        float64 tensor of ``new_shape``, clipped to ``[image.min(), image.max()]``.

    Raises:
        ValueError: an order other than 0, 1, 3, a rank other than 2 or 3, a dtype other than
            float64, a shape of the wrong length or with sizes < 1, an empty image.

    Example:
        >>> resize_like_skimage(torch.arange(12.0, dtype=torch.float64).view(3, 4), [5, 2], 1).shape
        torch.Size([5, 2])
    """
    _check_order(order)
    if image.dim() != 2 and image.dim() != 3:
        raise ValueError(f"resize_like_skimage: expected a 2-D or 3-D float64 tensor, got {image.dim()}-D")
    _check_image(image, image.dim(), new_shape, "resize_like_skimage")
    if list(image.shape) == new_shape:
        return image.clone()
    if image.dim() == 2:
        return resize_slices_like_skimage(image.unsqueeze(0), new_shape, order, chunk_elements)[0]
    device = image.device
    pad = 0
    coefficients = image.contiguous()
    if order == 3:
        pad = spline_pad()
        coefficients = volume_coefficients(image)
    index0, weight0 = _device_taps(image.shape[0], new_shape[0], order, pad, device)
    index1, weight1 = _device_taps(image.shape[1], new_shape[1], order, pad, device)
    index2, weight2 = _device_taps(image.shape[2], new_shape[2], order, pad, device)
    out = torch.empty(new_shape, dtype=torch.float64, device=device)
    plane = max(coefficients.shape[1] * coefficients.shape[2], new_shape[1] * new_shape[2])
    rows = max(1, min(_tap_block(), chunk_elements) // plane)
    taps = [index0, weight0, index1, weight1, index2, weight2]
    _taps_3d(coefficients, out, taps, 0, new_shape[0], rows)
    return torch.clamp(out, image.min(), image.max())


def _taps_3d(coefficients: Tensor, out: Tensor, taps: List[Tensor], first: int, end: int, rows: int) -> Tensor:
    """Output rows ``first .. end - 1`` of the 3-D resize into ``out``, ``rows`` at a time;
    ``taps`` holds each axis' indices and weights. Returns ``out``."""
    index0, weight0, index1, weight1, index2, weight2 = taps[0], taps[1], taps[2], taps[3], taps[4], taps[5]
    for begin in range(first, end, rows):
        count = min(rows, end - begin)
        t = torch.zeros([out.shape[2], out.shape[1], count], dtype=torch.float64, device=out.device)
        for h0 in range(index0.shape[1]):
            source = torch.index_select(coefficients, 0, index0[begin:begin + count, h0])
            source.mul_(weight0[begin:begin + count, h0].view(-1, 1, 1))
            _accumulate(t, source.permute(2, 1, 0).contiguous(), index1, weight1, index2, weight2)
        out[begin:begin + count] = t.permute(2, 1, 0)
    return out




def plane_taps(in_shape: List[int], out_shape: List[int], order: int, device: torch.device) -> List[Tensor]:
    """The taps of a 2-D resize from ``in_shape`` to ``out_shape`` for :func:`resize_plane`: per
    axis the indices (order + 1, out) into the (padded, for order 3) plane and the weights, the
    last axis' weights shaped (order + 1, out, 1) to scale gathered rows."""
    pad = spline_pad() if order == 3 else 0
    index0, weight0 = _device_taps(in_shape[0], out_shape[0], order, pad, device)
    index1, weight1 = _device_taps(in_shape[1], out_shape[1], order, pad, device)
    return [index0.t().contiguous(), weight0.t().contiguous(), index1.t().contiguous(),
            weight1.t().contiguous().unsqueeze(2)]


def _block_rows(out_width: int, in_width: int) -> int:
    return max(1, _plane_block() // max(out_width, in_width))


def _plane_buffers() -> int:
    """How many buffers :func:`plane_workspace` makes: four for the taps, then float16_workspace's
    eight (anything after them belongs to the caller)."""
    return 12


def plane_workspace(coefficient_shape: List[int], out_shape: List[int], device: torch.device) -> List[Tensor]:
    """Flat buffers :func:`resize_plane` reuses block after block and plane after plane, for
    (padded) planes of ``coefficient_shape`` resized to ``out_shape`` (see ``workspace``)."""
    width = coefficient_shape[1]
    rows = _block_rows(out_shape[1], width)
    block = out_shape[1] * rows
    work = [torch.empty([block], dtype=torch.float64, device=device),
            torch.empty([block], dtype=torch.float64, device=device),
            torch.empty([width * rows], dtype=torch.float64, device=device),
            torch.empty([width * rows], dtype=torch.float64, device=device)]
    work.extend(float16_workspace(block, device))
    return work


def resize_plane(coefficients: Tensor, taps: List[Tensor], low: Tensor, high: Tensor, out: Tensor,
                 half_values: bool, work: List[Tensor], finite: bool = True) -> Tensor:
    """One 2-D resize into ``out`` (o0, o1, any float dtype): ``coefficients`` is the float64 plane
    (contiguous; for order 3 its spline coefficients, see ``spline_prefilter``), ``taps`` from
    :func:`plane_taps`, every value clipped to ``[low, high]`` (0-dim tensors: the input plane's
    min and max) and stored as numpy stores float64 into ``out``'s dtype. ``half_values``: store
    the float16 rounding instead, into a float32 ``out`` (``[low, high]`` must lie within
    float16's finite range). ``work``: :func:`plane_workspace`. ``finite``: every value of the
    plane is finite (False: nan or inf present, the general float16 rounding is used). Returns
    ``out``."""
    index0, weight0, index1, weight1 = taps[0], taps[1], taps[2], taps[3]
    o0, o1 = out.shape[0], out.shape[1]
    width = coefficients.shape[1]
    rows = _block_rows(o1, width)
    # Python-float bounds: clamp with tensor bounds takes a slow broadcasting path.
    lowest = float(low)
    highest = float(high)
    # Clipped to a finite range inside float16's: the fast exact float16 rounding applies.
    in_range = finite and math.isfinite(lowest) and math.isfinite(highest) and max(abs(lowest), abs(highest)) <= 65504.0
    if half_values and not in_range:
        raise ValueError("resize_plane: half_values needs a clip range within float16's finite range, "
                         f"got [{lowest}, {highest}]")
    rounding = half_values or (out.dtype == torch.float16 and in_range)
    for begin in range(0, o0, rows):
        count = min(rows, o0 - begin)
        t = leading_view(work[0], [o1, count])
        gathered = leading_view(work[1], [o1, count])
        across = leading_view(work[2], [width, count])
        stage = leading_view(work[3], [count, width])
        t.zero_()
        for h0 in range(index0.shape[0]):
            # Rows gathered whole (fast), then transposed so the next gather copies rows too.
            torch.index_select(coefficients, 0, index0[h0, begin:begin + count], out=stage)
            stage.mul_(weight0[h0, begin:begin + count].view(-1, 1))
            across.copy_(stage.t())
            for h1 in range(index1.shape[0]):
                torch.index_select(across, 0, index1[h1], out=gathered)
                gathered.mul_(weight1[h1])
                t.add_(gathered)
        t.clamp_(lowest, highest)
        target = out.narrow(0, begin, count)
        if rounding:
            target.copy_(float16_values_into(t, work[4:]).t())
        else:
            target.copy_(stored_as(t, out.dtype).t())
    return out


def resize_slices_like_skimage(
    slices: Tensor, new_shape: List[int], order: int, chunk_elements: int = 2097152,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Every ``slices[i]`` resized to ``new_shape`` as ``resize_like_skimage`` would, each clipped to
    its own min and max (nnU-Net's separate-z path), bit for bit, stored in ``dtype`` as numpy
    stores the float64 result into an array of that dtype (float16: one rounding).

    Args:
        slices: float64 tensor (n, a, b).
        new_shape: the in-plane output size [a', b'] (each >= 1).
        order: spline order, 0, 1 or 3.
        chunk_elements: the spline coefficients (order 3) are computed for batches of slices
            below it (2 M: each batch's temporaries stay below glibc's 32 MiB mmap ceiling, so
            they reuse heap memory instead of faulting in fresh pages).
        dtype: the output's dtype (float64, float32 or float16).

    Returns:
        tensor (n, a', b') of ``dtype``.

    Raises:
        ValueError: as ``resize_like_skimage``, for a tensor that is not 3-D or a shape that is not
            two sizes.
    """
    _check_order(order)
    _check_image(slices, 3, new_shape, "resize_slices_like_skimage")
    if list(slices.shape[1:]) == new_shape:
        return stored_as(slices, dtype) if dtype != torch.float64 else slices.clone()
    n = slices.shape[0]
    device = slices.device
    taps = plane_taps([slices.shape[1], slices.shape[2]], new_shape, order, device)
    out = torch.empty([n, new_shape[0], new_shape[1]], dtype=dtype, device=device)
    batch = n
    if order == 3:
        batch = max(1, chunk_elements // ((slices.shape[1] + 2 * spline_pad()) * (slices.shape[2] + 2 * spline_pad())))
    work = slices_workspace([slices.shape[1], slices.shape[2]], new_shape, order, min(batch, n), device)
    for begin in range(0, n, batch):
        count = min(batch, n - begin)
        resize_slices_into(slices.narrow(0, begin, count), taps, order, out.narrow(0, begin, count), False, work)
    return out


def resize_slices_into(slices: Tensor, taps: List[Tensor], order: int, out: Tensor, half_values: bool,
                       work: List[Tensor]) -> Tensor:
    """Every float64 ``slices[i]`` (B, a, b) resized into ``out[i]`` with ``taps`` from
    :func:`plane_taps` and ``work`` from :func:`slices_workspace`, clipped to its own min and
    max, stored as :func:`resize_plane` stores (``half_values``: float16 values into a float32
    ``out``). Returns ``out``."""
    chunk = slices.contiguous()
    low = chunk.amin(dim=[1, 2])
    high = chunk.amax(dim=[1, 2])
    # amin / amax propagate nan: a plane is finite exactly when both are.
    finite = torch.isfinite(low) & torch.isfinite(high)
    if bool(torch.isnan(low).any()):
        # skimage clips to nanmin / nanmax when the slice holds nan (nan itself where all are).
        low = torch.where(torch.isnan(chunk), float("inf"), chunk).amin(dim=[1, 2])
        high = torch.where(torch.isnan(chunk), float("-inf"), chunk).amax(dim=[1, 2])
        empty = torch.isinf(low) & torch.isinf(high) & (low > high)
        low = torch.where(empty, float("nan"), low)
        high = torch.where(empty, float("nan"), high)
    coefficients = chunk
    if order == 3:
        magnitude = max(float(high.max()), -float(low.min()))
        coefficients = slice_coefficients_into(chunk, work[_plane_buffers():], magnitude)
    for s in range(chunk.shape[0]):
        resize_plane(coefficients[s], taps, low[s], high[s], out[s], half_values, work, bool(finite[s]))
    return out


def slices_workspace(in_plane: List[int], out_plane: List[int], order: int, batch: int,
                     device: torch.device) -> List[Tensor]:
    """Buffers for :func:`resize_slices_into` on up to ``batch`` slices of ``in_plane``: the
    plane workspace, and for order 3 the spline coefficients' buffers."""
    if order != 3:
        return plane_workspace(in_plane, out_plane, device)
    work = plane_workspace([in_plane[0] + 2 * spline_pad(), in_plane[1] + 2 * spline_pad()], out_plane, device)
    work.extend(slice_workspace(batch, in_plane[0], in_plane[1], device))
    return work
