"""skimage's ``resize(image, shape, order, mode='edge', anti_aliasing=False)`` in float64 torch, bit for bit.

skimage 0.26 hands the image to ``scipy.ndimage.zoom(image, 1 / (in / out), order, mode='nearest',
grid_mode=True)`` for every order (0 included) and then clips the result to ``[image.min(),
image.max()]``. scipy 1.17's zoom computes, per output voxel:

* order 3 only: the image padded by 12 voxels with its edge values, then the cubic B-spline
  prefilter along axes 0, 1, 2 in turn (gain multiply, causal pass with the *reflect* init,
  anticausal pass), in float64;
* per axis ``zoom = in / out`` and the coordinate ``((k + 0.5) * zoom - 0.5) + pad``, its first tap
  ``floor(cc) - order // 2`` (order 0: ``floor(cc + 0.5)``), the taps' indices clamped to the axis,
  and the spline weights of ``cc - floor(cc)``;
* ``t = 0.0; t += ((c * w_axis0) * w_axis1) * w_axis2`` over the taps, last axis fastest.

Every step below is the same IEEE operation in the same order (separate multiplies and adds, no
fused ops), so the results equal scipy's bits. The taps are evaluated in stages (gather along
axis 0 and multiply by its weight once, then along axis 1, then the last axis), which shares work
without changing any product: gathering ``c * w`` is gathering ``c`` and multiplying by ``w``.

The output rows are evaluated in cache-sized blocks on the calling thread (every output voxel is
computed alone, so the bits do not depend on the blocking). No torch.jit.fork: an exported file
whose inter-op threads were started aborted at process exit in a fresh interpreter.

An equal shape is skimage's copy of the input (scipy's zoom returns early when every factor is 1).
Only the sign of an exact zero may differ from skimage where the clip meets ``-0.0`` against
``0.0`` (``clamp`` and ``np.clip`` agree on every other value); NaN inputs are not supported.
"""
from __future__ import annotations

import math
from typing import List, Tuple

import torch
from torch import Tensor

# TorchScript reads no module globals: the constants are literals, named once here.
#   12: the edge padding scipy's zoom adds before the spline prefilter (_prepad_for_spline_filter).
#   -0.267949192431122706472553658494127633: the cubic spline's pole as scipy writes it
#       (get_filter_poles); math.sqrt(3.0) - 2.0 is one ulp away.
#: Default number of float64 elements one intermediate may hold before the work is chunked (32 MiB).
CHUNK_ELEMENTS = 1 << 22
#   32768: the float64 elements of one tap block (256 KiB, stays in a core's cache; at torch's
#       grain size, so each op runs on its calling thread and never waits for a busy core).


def _tap_block() -> int:
    return 32768


def _spline_pad() -> int:
    return 12


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


def _prefilter_rows(c: Tensor) -> Tensor:
    """scipy's cubic spline prefilter (mode 'nearest', i.e. the reflect init of ``ni_splines.c``)
    along dim 0 of the float64 ``c``, in place: every line at once, each line seeing scipy's
    operations in scipy's order. Every call touches one slab ``c[i]`` (no whole-tensor
    temporaries), so a slab below torch's grain size runs on the calling thread. Returns ``c``."""
    z = -0.267949192431122706472553658494127633
    gain = (1.0 - z) * (1.0 - 1.0 / z)
    n = c.shape[0]
    z_n = math.pow(z, float(n))
    rows = c.unbind(0)
    for row in rows:
        row.mul_(gain)
    tmp = torch.empty_like(rows[0])
    # Causal init, accumulated in c[0] as scipy does: c[0] + z^n c[n-1], then for i = 1 .. n-1
    # z^i (c[i] + z^n c[n-1-i]); at i = n-1, c[n-1-i] is c[0], i.e. the running sum itself.
    # The powers stay Python floats: scripted torch.tensor(List[float]) and tensor[i] = float
    # round through float32.
    acc = rows[0] + rows[n - 1] * z_n
    z_i = z
    for i in range(1, n - 1):
        torch.mul(rows[n - 1 - i], z_n, out=tmp)
        tmp.add_(rows[i])
        tmp.mul_(z_i)
        acc.add_(tmp)
        z_i = z_i * z
    acc = acc + (rows[n - 1] + acc * z_n) * z_i
    rows[0].copy_(acc * (z / (1.0 - z_n * z_n)) + rows[0])
    for i in range(1, n):
        torch.mul(rows[i - 1], z, out=tmp)
        rows[i].add_(tmp)
    rows[n - 1].mul_(z / (z - 1.0))
    for i in range(n - 2, -1, -1):
        torch.sub(rows[i + 1], rows[i], out=tmp)
        torch.mul(tmp, z, out=rows[i])
    return c


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


def _pad(image: Tensor, axes: List[int]) -> Tensor:
    """``np.pad(image, 12, mode='edge')`` over ``axes``: one row gather per axis."""
    padded = image
    for axis in axes:
        length = padded.shape[axis]
        index = torch.arange(-_spline_pad(), length + _spline_pad(), dtype=torch.int64, device=image.device)
        padded = torch.index_select(padded, axis, index.clamp(0, length - 1))
    return padded


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
        pad = _spline_pad()
        # Axis 0, then 1, then 2, each filtered as the leading dim of a contiguous copy.
        # Axis 0, then 1, then 2, each filtered as the leading dim of a contiguous copy; the
        # (p1, p0, p2) <-> (p2, p1, p0) moves are plain 2-D transposes (torch's fast blocked copy).
        p0, p1, p2 = image.shape[0] + 2 * pad, image.shape[1] + 2 * pad, image.shape[2] + 2 * pad
        coefficients = _prefilter_rows(_pad(image, [2, 1, 0]))
        coefficients = _prefilter_rows(coefficients.permute(1, 0, 2).contiguous())
        coefficients = _prefilter_rows(coefficients.view(p1 * p0, p2).t().contiguous().view(p2, p1, p0))
        coefficients = coefficients.view(p2, p1 * p0).t().contiguous().view(p1, p0, p2)
        coefficients = coefficients.permute(1, 0, 2).contiguous()
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


def resize_slices_like_skimage(
    slices: Tensor, new_shape: List[int], order: int, chunk_elements: int = 4194304
) -> Tensor:
    """Every ``slices[i]`` resized to ``new_shape`` as ``resize_like_skimage`` would, each clipped to
    its own min and max (nnU-Net's separate-z path), bit for bit; slices are processed in chunks.

    Args:
        slices: float64 tensor (n, a, b).
        new_shape: the in-plane output size [a', b'] (each >= 1).
        order: spline order, 0, 1 or 3.
        chunk_elements: as for ``resize_like_skimage``; slices are processed in batches.

    Returns:
        float64 tensor (n, a', b').

    Raises:
        ValueError: as ``resize_like_skimage``, for a tensor that is not 3-D or a shape that is not
            two sizes.
    """
    _check_order(order)
    _check_image(slices, 3, new_shape, "resize_slices_like_skimage")
    if list(slices.shape[1:]) == new_shape:
        return slices.clone()
    n = slices.shape[0]
    device = slices.device
    pad = _spline_pad() if order == 3 else 0
    index1, weight1 = _device_taps(slices.shape[1], new_shape[0], order, pad, device)
    index2, weight2 = _device_taps(slices.shape[2], new_shape[1], order, pad, device)
    p1 = slices.shape[1] + 2 * pad
    p2 = slices.shape[2] + 2 * pad
    batch = max(1, chunk_elements // max(p1 * p2, new_shape[0] * new_shape[1]))
    out = torch.empty([n, new_shape[0], new_shape[1]], dtype=torch.float64, device=device)
    for begin in range(0, n, batch):
        count = min(batch, n - begin)
        chunk = slices[begin:begin + count]
        # (a, b, B) is a plain 2-D transpose of the slices (torch's fast blocked copy).
        source = chunk.contiguous().view(count, -1).t().contiguous().view(slices.shape[1], slices.shape[2], count)
        if order == 3:
            # (p1, p2, B): filter axis p1; (p2, p1, B): filter axis p2 and gather from there.
            source = _prefilter_rows(_pad(source, [1, 0]))
        source = source.permute(1, 0, 2).contiguous()
        if order == 3:
            source = _prefilter_rows(source)
        low = chunk.amin(dim=[1, 2]).view(count, 1, 1)
        high = chunk.amax(dim=[1, 2]).view(count, 1, 1)
        rows = max(1, _tap_block() // (new_shape[1] * count))
        part = out.narrow(0, begin, count)
        taps = [index1, weight1, index2, weight2, low, high]
        _taps_slices(source, part, taps, 0, new_shape[0], rows)
    return out


def _taps_slices(source: Tensor, out: Tensor, taps: List[Tensor], first: int, end: int, rows: int) -> Tensor:
    """Output rows ``first .. end - 1`` of every slice in ``out`` (count, a', b') from the
    coefficients ``source`` (p2, p1, count), ``rows`` at a time, each slice clipped to
    ``[low, high]``; ``taps`` is [index1, weight1, index2, weight2, low, high]. Returns ``out``."""
    index1, weight1, index2, weight2, low, high = taps[0], taps[1], taps[2], taps[3], taps[4], taps[5]
    for row in range(first, end, rows):
        nrows = min(rows, end - row)
        t = torch.zeros([out.shape[2], nrows, out.shape[0]], dtype=torch.float64, device=out.device)
        _accumulate(t, source, index1[row:row + nrows], weight1[row:row + nrows], index2, weight2)
        out[:, row:row + nrows] = torch.clamp(t.permute(2, 1, 0), low, high)
    return out
