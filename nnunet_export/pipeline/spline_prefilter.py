"""scipy 1.17's cubic B-spline prefilter as ``zoom(order=3, mode='nearest', grid_mode=True)`` runs
it, in float64 torch, bit for bit: the image padded by 12 voxels with its edge values
(``_prepad_for_spline_filter``), then per axis in turn a gain multiply, a causal pass started by
the *reflect* init of ``ni_splines.c`` and an anticausal pass.

The recursions are sequential along the filtered axis, so every operation here works on all the
lines at once, one position of the axis at a time, in scipy's order.

The causal init sums ``z**i * (c[i] + z**n * c[n-1-i])`` over the whole line. The pole's powers
fall below 2**-55 of any sum within a few dozen terms, so once the first ``_EXACT_TERMS`` terms are
added the rest are skipped wherever that provably leaves the sum unchanged (every later term below
a quarter of the sum's last place); the lines where it might not (a sum of exactly zero, say) get
every term, so the bits never depend on the shortcut.
"""
from __future__ import annotations

import math
from typing import List

import torch
from torch import Tensor

from .workspace import leading_view

# TorchScript reads no module globals: the constants are literals inside the functions.
#   12: the edge padding scipy's zoom adds before the spline prefilter.
#   -0.267949192431122706472553658494127633: the cubic spline's pole as scipy writes it
#       (get_filter_poles); math.sqrt(3.0) - 2.0 is one ulp away.
#   64: the init terms always added (_EXACT_TERMS); |z|**64 < 2**-121.


def spline_pad() -> int:
    return 12


def _exact_terms() -> int:
    return 64


def pad_edges(image: Tensor, axes: List[int]) -> Tensor:
    """``np.pad(image, 12, mode='edge')`` over ``axes``: one row gather per axis."""
    padded = image
    for axis in axes:
        length = padded.shape[axis]
        index = torch.arange(-spline_pad(), length + spline_pad(), dtype=torch.int64, device=image.device)
        padded = torch.index_select(padded, axis, index.clamp(0, length - 1))
    return padded


def _remaining_terms_unneeded(acc: Tensor, largest: float, z_k: float) -> Tensor:
    """Per line (``acc``'s elements): True where every init term from the ``z_k`` power on is
    provably too small to change ``acc``; ``largest`` bounds every ``|c|`` of every line (one
    bound for all: a whole-tensor reduction is fast in any layout, a per-line one is not).

    Each such term is ``z_i * (c[i] + z**n * c[n-1-i])`` with ``|z_i| <= |z_k|`` (the powers only
    shrink), so it is below ``|z_k| * largest * (1 + 2**-40)``. A term below ``|acc| * 2**-55``
    rounds away (under half the spacing on either side of ``acc``), and ``acc`` never moves. The
    check uses 2**-56 to cover its own rounding (and the gain's, with 2**-40). When every value
    is zero, a ``+0.0`` sum stays (adding zeros of either sign), a ``-0.0`` one may not.
    """
    bound = largest * (1.0 + 2.0 ** -40) * (abs(z_k) * 72057594037927936.0)  # 2**56
    if largest == 0.0:
        return (acc == 0.0) & ~torch.signbit(acc)
    # Comparisons with nan are false: then every line gets every term.
    return acc.abs() > bound


def prefilter_rows(c: Tensor, magnitude: float = -1.0) -> Tensor:
    """scipy's cubic spline prefilter (mode 'nearest', i.e. the reflect init of ``ni_splines.c``)
    along dim 0 of the float64 ``c``, in place: every line at once, each line seeing scipy's
    operations in scipy's order. Every call touches one slab ``c[i]`` (any strides: a view whose
    dim 0 is another tensor's middle axis works in place). ``magnitude``: the largest ``|c|``
    before the call if the caller knows it, else negative. Returns ``c``."""
    z = -0.267949192431122706472553658494127633
    gain = (1.0 - z) * (1.0 - 1.0 / z)
    n = c.shape[0]
    z_n = math.pow(z, float(n))
    rows = c.unbind(0)
    exact = min(n - 1, _exact_terms())
    # The gain multiply comes first in scipy; each value only needs it before its first use, so
    # the rows the init reads get it now and the middle rows inside the causal pass, while they
    # are in cache (one pass over the lines fewer).
    late_gain = n > 2 * exact + 2
    if late_gain:
        c.narrow(0, 0, exact).mul_(gain)
        c.narrow(0, n - exact - 1, exact + 1).mul_(gain)
    else:
        c.mul_(gain)
    tmp = torch.empty_like(rows[0])
    # 0-dim float64 factors: TorchScript runs torch.mul(x, python_float, out=t) as a fresh product
    # copied into t; with a tensor factor it writes t directly. torch.full keeps the double.
    z_t = torch.full([], z, dtype=c.dtype, device=c.device)
    z_n_t = torch.full([], z_n, dtype=c.dtype, device=c.device)
    # Causal init, accumulated in c[0] as scipy does: c[0] + z^n c[n-1], then for i = 1 .. n-1
    # z^i (c[i] + z^n c[n-1-i]); at i = n-1, c[n-1-i] is c[0], i.e. the running sum itself.
    # The powers stay Python floats: scripted torch.tensor(List[float]) and tensor[i] = float
    # round through float32.
    acc = rows[0] + rows[n - 1] * z_n
    powers: List[float] = [1.0]
    z_i = z
    for i in range(1, n):
        powers.append(z_i)
        z_i = z_i * z
    for i in range(1, exact):
        torch.mul(rows[n - 1 - i], z_n_t, out=tmp)
        tmp.add_(rows[i])
        tmp.mul_(powers[i])
        acc.add_(tmp)
    if exact < n - 1:
        flat_acc = acc.view(-1)
        # A bound on every gained |c|: the caller's bound before the gain, or the values now
        # (the rows still without the gain get it later, at most multiplying by it).
        if magnitude >= 0.0:
            largest = magnitude * gain
        else:
            largest = max(float(torch.amax(c)), -float(torch.amin(c)))
            if late_gain:
                largest = largest * gain
        needing = torch.nonzero(~_remaining_terms_unneeded(acc, largest, powers[exact]).reshape(-1)).view(-1)
        if needing.numel() > 0:
            sub = c.reshape(n, -1).index_select(1, needing)
            if late_gain:
                sub.narrow(0, exact, n - 2 * exact - 1).mul_(gain)
            sub_acc = flat_acc.index_select(0, needing)
            sub_tmp = torch.empty_like(sub_acc)
            for i in range(exact, n - 1):
                torch.mul(sub[n - 1 - i], z_n_t, out=sub_tmp)
                sub_tmp.add_(sub[i])
                sub_tmp.mul_(powers[i])
                sub_acc.add_(sub_tmp)
            flat_acc.index_copy_(0, needing, sub_acc)
    acc = acc + (rows[n - 1] + acc * z_n) * powers[n - 1]
    rows[0].copy_(acc * (z / (1.0 - z_n * z_n)) + rows[0])
    for i in range(1, n):
        if late_gain and i >= exact and i < n - exact - 1:
            rows[i].mul_(gain)
        torch.mul(rows[i - 1], z_t, out=tmp)
        rows[i].add_(tmp)
    rows[n - 1].mul_(z / (z - 1.0))
    for i in range(n - 2, -1, -1):
        torch.sub(rows[i + 1], rows[i], out=tmp)
        torch.mul(tmp, z_t, out=rows[i])
    return c


def _edge_padded_planes(slices: Tensor, padded: Tensor) -> Tensor:
    """``np.pad(slice, 12, mode='edge')`` of every (a, b) slice into ``padded``: the bulk is one
    copy of whole rows, the borders broadcast copies of the edge columns and then of the edge
    rows. Returns ``padded``."""
    pad = spline_pad()
    count, a, b = slices.shape[0], slices.shape[1], slices.shape[2]
    middle = padded.narrow(1, pad, a)
    middle.narrow(2, pad, b).copy_(slices)
    middle.narrow(2, 0, pad).copy_(slices.narrow(2, 0, 1).expand(count, a, pad))
    middle.narrow(2, pad + b, pad).copy_(slices.narrow(2, b - 1, 1).expand(count, a, pad))
    padded.narrow(1, 0, pad).copy_(padded.narrow(1, pad, 1).expand(count, pad, b + 2 * pad))
    padded.narrow(1, pad + a, pad).copy_(padded.narrow(1, pad + a - 1, 1).expand(count, pad, b + 2 * pad))
    return padded


def slice_workspace(count: int, a: int, b: int, device: torch.device) -> List[Tensor]:
    """Buffers for :func:`slice_coefficients_into` on up to ``count`` slices of (a, b)."""
    elements = count * (a + 2 * spline_pad()) * (b + 2 * spline_pad())
    return [torch.empty([elements], dtype=torch.float64, device=device),
            torch.empty([elements], dtype=torch.float64, device=device)]


def slice_coefficients_into(slices: Tensor, work: List[Tensor], magnitude: float) -> Tensor:
    """The spline coefficients of every slice of the float64 ``slices`` (B, a, b), padded and
    filtered along a then b as scipy does for each 2-D slice: (B, a + 24, b + 24), a view into
    ``work`` (:func:`slice_workspace`). ``magnitude``: the largest ``|value|`` of ``slices``
    if known (saves a read in the init's shortcut check), else negative.

    Each axis is filtered as the middle axis of (B, ., .) planes, so each step of the recursion is
    one op over all the slices' lines (rows of contiguous memory). Axis b needs the planes
    transposed, there and back (copies into kept buffers)."""
    count, a, b = slices.shape[0], slices.shape[1], slices.shape[2]
    p1, p2 = a + 2 * spline_pad(), b + 2 * spline_pad()
    padded = _edge_padded_planes(slices, leading_view(work[0], [count, p1, p2]))
    prefilter_rows(padded.transpose(0, 1), magnitude)
    across = leading_view(work[1], [count, p2, p1])
    across.copy_(padded.transpose(1, 2))
    prefilter_rows(across.transpose(0, 1), -1.0)
    padded.copy_(across.transpose(1, 2))
    return padded


def volume_coefficients(image: Tensor) -> Tensor:
    """The spline coefficients of the float64 3-D ``image``: padded, filtered along axes 0, 1, 2
    in turn, (d0 + 24, d1 + 24, d2 + 24), contiguous. Each axis is filtered as the leading dim of
    a contiguous copy; the (p1, p0, p2) <-> (p2, p1, p0) moves are plain 2-D transposes."""
    pad = spline_pad()
    p0, p1, p2 = image.shape[0] + 2 * pad, image.shape[1] + 2 * pad, image.shape[2] + 2 * pad
    coefficients = prefilter_rows(pad_edges(image, [2, 1, 0]))
    coefficients = prefilter_rows(coefficients.permute(1, 0, 2).contiguous())
    coefficients = prefilter_rows(coefficients.view(p1 * p0, p2).t().contiguous().view(p2, p1, p0))
    coefficients = coefficients.view(p2, p1 * p0).t().contiguous().view(p1, p0, p2)
    return coefficients.permute(1, 0, 2).contiguous()


__all__ = ["pad_edges", "prefilter_rows", "slice_coefficients_into", "slice_workspace",
           "spline_pad", "volume_coefficients"]
