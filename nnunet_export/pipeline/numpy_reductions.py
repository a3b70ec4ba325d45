"""numpy's float32 sum, mean and std, bit for bit, as TorchScript-compatible torch code.

torch's own float32 reductions (and even a float64 accumulation) differ from numpy in the last
ulp, which moves nnU-Net's z-score normalization by an ulp. numpy sums a contiguous float32 run
pairwise: runs longer than 128 split at ``n2 = n//2 - (n//2) % 8``; a run of at most 128 is summed
with 8 lane accumulators combined as ``((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7))``, then the elements
past the last multiple of 8 are added one by one (runs shorter than 8: one by one from 0.0).
The tree is built and evaluated level by level (TorchScript has no recursion); all leaves of all
runs are summed at once with tensor ops.

A strided view (transposed, cropped) is not one run: numpy's iterator walks it in memory order,
merges the axes that are contiguous with each other, and hands the add loop chunks that its
buffering setup (``npyiter_find_buffering_setup``, buffersize 8192) picks; each chunk is summed
pairwise and added to the running total, which starts at +0.0 (see numpy_float32_sum_strided).
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor

# numpy's PW_BLOCKSIZE is 128 with 8 lanes, its default iterator buffersize (NPY_BUFSIZE) 8192;
# leaves are gathered 65536 at a time, which bounds the (leaves, 128) index temporary.
# TorchScript takes no module-level ints, so they are literals.


def _leaf_sums(padded: Tensor, starts: Tensor, lengths: Tensor) -> Tensor:
    """Sums of the runs ``padded[start:start + length]`` (length <= 128) in numpy's leaf order.

    ``padded`` ends with one -0.0, the identity of IEEE addition (x + -0.0 == x for every x,
    +0.0 included), which fills the lanes a run does not use."""
    pad = padded.numel() - 1
    lane_part = lengths - lengths % 8
    offsets = torch.arange(128, dtype=torch.int64, device=padded.device)
    index = starts.unsqueeze(1) + offsets.unsqueeze(0)
    index = torch.where(offsets.unsqueeze(0) < lane_part.unsqueeze(1), index, torch.full_like(index, pad))
    blocks = padded[index].view(-1, 16, 8)
    r = blocks[:, 0]
    for k in range(1, 16):
        r = r + blocks[:, k]
    total = ((r[:, 0] + r[:, 1]) + (r[:, 2] + r[:, 3])) + ((r[:, 4] + r[:, 5]) + (r[:, 6] + r[:, 7]))
    # A run shorter than 8 is summed one by one starting from +0.0.
    total = torch.where(lane_part == 0, torch.zeros_like(total), total)
    rest_offsets = torch.arange(7, dtype=torch.int64, device=padded.device)
    rest_index = (starts + lane_part).unsqueeze(1) + rest_offsets.unsqueeze(0)
    rest_valid = rest_offsets.unsqueeze(0) < (lengths - lane_part).unsqueeze(1)
    rest = padded[torch.where(rest_valid, rest_index, torch.full_like(rest_index, pad))]
    for k in range(7):
        total = total + rest[:, k]
    return total


def _pairwise_run_sums(padded: Tensor, run_starts: Tensor, length: int) -> Tensor:
    """numpy's pairwise sums of the runs ``padded[s:s + length]`` for each ``s`` in ``run_starts``.

    Every run has the same length, hence the same tree: it is built once (offsets from the run's
    start) and evaluated for all runs together. ``length`` >= 1; ``padded`` ends with -0.0."""
    device = run_starts.device
    runs = run_starts.numel()
    # Split the run level by level; level d holds its runs left to right.
    level_starts: List[Tensor] = [torch.zeros([1], dtype=torch.int64, device=device)]
    level_lengths: List[Tensor] = [torch.full([1], length, dtype=torch.int64, device=device)]
    while True:
        lengths = level_lengths[-1]
        split = lengths > 128
        if not bool(split.any()):
            break
        parent_lengths = lengths[split]
        parent_starts = level_starts[-1][split]
        half = parent_lengths // 2
        left = half - half % 8
        level_lengths.append(torch.stack([left, parent_lengths - left], 1).reshape(-1))
        level_starts.append(torch.stack([parent_starts, parent_starts + left], 1).reshape(-1))
    # Every leaf of every level of every run summed in one batch (chunked to bound memory).
    leaf_starts: List[Tensor] = []
    leaf_lengths: List[Tensor] = []
    counts: List[int] = []
    for depth in range(len(level_lengths)):
        leaf = level_lengths[depth] <= 128
        relative = level_starts[depth][leaf]
        leaf_starts.append((run_starts.unsqueeze(1) + relative.unsqueeze(0)).reshape(-1))
        leaf_lengths.append(level_lengths[depth][leaf].repeat(runs))
        counts.append(runs * relative.numel())
    all_starts = torch.cat(leaf_starts)
    all_lengths = torch.cat(leaf_lengths)
    pieces: List[Tensor] = []
    for first in range(0, all_starts.numel(), 65536):
        last = min(first + 65536, all_starts.numel())
        pieces.append(_leaf_sums(padded, all_starts[first:last], all_lengths[first:last]))
    leaf_values = [v.view(runs, -1) for v in torch.split(torch.cat(pieces), counts)]
    # Combine children up the levels: each split run is left + right.
    children = leaf_values[-1]
    for depth in range(len(level_lengths) - 2, -1, -1):
        split = level_lengths[depth] > 128
        values = torch.empty([runs, split.numel()], dtype=padded.dtype, device=device)
        values[:, split] = children[:, 0::2] + children[:, 1::2]
        values[:, ~split] = leaf_values[depth]
        children = values
    return children[:, 0]


def _padded(flat: Tensor) -> Tensor:
    return torch.cat([flat, torch.full([1], -0.0, dtype=flat.dtype, device=flat.device)])


def numpy_float32_sum(x: Tensor) -> Tensor:
    """``np.add.reduce(a.ravel())`` of a float32 array, bit for bit, as a 0-dim float32 tensor.

    Args:
        x: float32 tensor of any shape; summed in C (row-major) order as one pairwise run,
            whatever its strides (numpy_float32_sum_strided follows a strided view as numpy does).
    Returns:
        0-dim float32 tensor (+0.0 for an empty ``x``).
    Example:
        >>> float(numpy_float32_sum(torch.ones(1000)))
        1000.0
    """
    flat = x.reshape(-1)
    n = flat.numel()
    if n == 0:
        return torch.zeros((), dtype=x.dtype, device=x.device)
    starts = torch.zeros([1], dtype=torch.int64, device=x.device)
    # The reduction adds the tree's total to its identity, +0.0.
    return _pairwise_run_sums(_padded(flat), starts, n)[0] + 0.0


def _memory_order(x: Tensor) -> Tuple[List[int], List[int]]:
    """The axes of ``x`` outermost first as numpy's iterator orders them (decreasing stride, ties
    in axis order), and the sizes of the merged axes innermost first (size-1 axes dropped; an axis
    merges with the one inside it when its stride is that one's stride times its size)."""
    axes: List[int] = []
    for axis in range(x.dim() - 1, -1, -1):
        if x.size(axis) != 1:
            axes.append(axis)
    # Stable insertion sort, innermost (smallest stride) first.
    for i in range(1, len(axes)):
        j = i
        while j > 0 and x.stride(axes[j - 1]) > x.stride(axes[j]):
            inner = axes[j]
            axes[j] = axes[j - 1]
            axes[j - 1] = inner
            j -= 1
    sizes: List[int] = []
    last_stride = 0
    for axis in axes:
        if len(sizes) > 0 and last_stride * sizes[-1] == x.stride(axis):
            sizes[-1] = sizes[-1] * x.size(axis)
        else:
            sizes.append(x.size(axis))
            last_stride = x.stride(axis)
    order: List[int] = []
    for axis in range(x.dim()):
        if x.size(axis) == 1:
            order.append(axis)
    for i in range(len(axes) - 1, -1, -1):
        order.append(axes[i])
    return order, sizes


def _chunking(sizes: List[int]) -> Tuple[int, int, int]:
    """``(block, chunk, tail)`` of the add loop's calls over the merged memory ``sizes``.

    numpy's buffering setup for this one-input reduction: the input is unbuffered only while one
    stride covers it (the innermost merged axis), otherwise it is copied through the buffer; of
    the candidate outer axes it keeps the last one whose cost, ``(1 + buffered) / min(size up to
    and including that axis, 8192)``, is no worse (growing stops once the core reaches 8192). A
    buffered setup with core ``c`` and outer axis ``A`` fills ``(8192 // c) * c`` elements at a
    time and never crosses a block of ``c * A``. Returns the block length, the full chunk length
    and the last chunk's length of a block (0 if the chunks fill it)."""
    if len(sizes) <= 1:
        total = 1
        for s in sizes:
            total *= s
        return total, total, 0
    best_dim = 0
    best_cost = 1
    best_size = sizes[0]
    best_core = 1
    size = sizes[0]
    for dim in range(1, len(sizes)):
        if dim > 1 and size >= 8192:
            break
        core = size
        size = size * sizes[dim]
        # From the second axis on the input needs the buffer: cost 2, buffer capped at 8192.
        if 2 * best_size <= best_cost * min(size, 8192):
            best_dim = dim
            best_cost = 2
            best_size = size
            best_core = core
    if best_dim == 0:
        return sizes[0], sizes[0], 0
    outer = sizes[best_dim]
    rows = max(8192 // best_core, 1)
    if rows >= outer:
        return best_core * outer, best_core * outer, 0
    return best_core * outer, rows * best_core, (outer % rows) * best_core


def _strided_sum(flat: Tensor, sizes: List[int]) -> Tensor:
    """numpy's add.reduce of the view whose memory-order elements are ``flat`` (see
    numpy_float32_sum_strided), ``flat`` non-empty."""
    block, chunk, tail = _chunking(sizes)
    padded = _padded(flat)
    block_starts = torch.arange(0, flat.numel(), block, dtype=torch.int64, device=flat.device)
    chunk_offsets = torch.arange(0, block - tail, chunk, dtype=torch.int64, device=flat.device)
    starts = (block_starts.unsqueeze(1) + chunk_offsets.unsqueeze(0)).reshape(-1)
    sums = _pairwise_run_sums(padded, starts, chunk).view(block_starts.numel(), -1)
    if tail > 0:
        tails = _pairwise_run_sums(padded, block_starts + (block - tail), tail)
        sums = torch.cat([sums, tails.unsqueeze(1)], 1)
    # The chunk sums join the running total (from the identity +0.0) one by one, in order.
    values = sums.reshape(-1)
    total = torch.zeros((), dtype=flat.dtype, device=flat.device)
    for i in range(values.numel()):
        total = total + values[i]
    return total


def numpy_float32_sum_strided(x: Tensor) -> Tensor:
    """``np.add.reduce(a, axis=None)`` of the float32 numpy view ``a`` with ``x``'s layout, bit for bit.

    A torch view made by permute/narrow/slicing has the strides numpy's view made by
    transpose/slicing of the same memory has; numpy sums it in memory order, in chunks (see
    ``_chunking``). A contiguous ``x`` gives numpy_float32_sum's result.

    Args:
        x: float32 tensor with non-negative strides and no overlapping elements (any permutation
            and crop of a contiguous tensor).
    Returns:
        0-dim float32 tensor (+0.0 for an empty ``x``).
    Example:
        >>> base = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
        >>> float(numpy_float32_sum_strided(base.permute(2, 0, 1)[1:3]))
        144.0
    """
    if x.numel() == 0:
        return torch.zeros((), dtype=x.dtype, device=x.device)
    order, sizes = _memory_order(x)
    return _strided_sum(x.permute(order).reshape(-1), sizes)


def numpy_float32_mean_std(x: Tensor) -> Tuple[Tensor, Tensor]:
    """``(a.mean(), a.std())`` of the float32 numpy view ``a`` with ``x``'s layout (ddof 0), bit for bit.

    The mean's sum follows the view's layout (numpy_float32_sum_strided). numpy divides the
    float32 sums by the integer count in float64 and rounds back to float32. The deviations
    ``float32(a - mean)`` form a new array in the view's memory order ('K'), contiguous, so their
    squares are one pairwise run in that order. The square root is taken in float64 and rounded
    (correctly rounded, like numpy's sqrtf; torch's float32 sqrt is not). An empty ``x`` gives
    NaN for both, as numpy does.

    Args:
        x: float32 tensor, any layout numpy_float32_sum_strided accepts.
    Returns:
        ``(mean, std)``, 0-dim float32 tensors.
    Example:
        >>> mean, std = numpy_float32_mean_std(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        >>> float(mean), float(std)
        (2.5, 1.1180340051651)
    """
    n = x.numel()
    if n == 0:
        nan = torch.full((), float("nan"), dtype=x.dtype, device=x.device)
        return nan, nan
    order, sizes = _memory_order(x)
    flat = x.permute(order).reshape(-1)
    mean = (_strided_sum(flat, sizes).double() / n).to(x.dtype)
    deviation = flat - mean
    var = (numpy_float32_sum(deviation * deviation).double() / n).to(x.dtype)
    std = torch.sqrt(var.double()).to(x.dtype)
    return mean, std
