"""numpy's float32 sum, mean and std, bit for bit, as TorchScript-compatible torch code.

torch's own float32 reductions (and even a float64 accumulation) differ from numpy in the last
ulp, which moves nnU-Net's z-score normalization by an ulp. numpy sums a contiguous float32 run
pairwise: runs longer than 128 split at ``n2 = n//2 - (n//2) % 8``; a run of at most 128 is summed
with 8 lane accumulators combined as ``((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7))``, then the elements
past the last multiple of 8 are added one by one (runs shorter than 8: one by one from 0.0).
The tree is built and evaluated level by level (TorchScript has no recursion); all leaves are
summed at once with tensor ops.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor

# numpy's PW_BLOCKSIZE is 128 with 8 lanes; leaves are gathered 65536 at a time, which bounds the
# (leaves, 128) index temporary. TorchScript takes no module-level ints, so they are literals.


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


def numpy_float32_sum(x: Tensor) -> Tensor:
    """``np.add.reduce(a.ravel())`` of a float32 array, bit for bit, as a 0-dim float32 tensor.

    Args:
        x: float32 tensor of any shape; summed in C (row-major) order.
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
    padded = torch.cat([flat, torch.full([1], -0.0, dtype=x.dtype, device=x.device)])
    # Split the run level by level; level d holds its runs left to right.
    level_starts: List[Tensor] = [torch.zeros([1], dtype=torch.int64, device=x.device)]
    level_lengths: List[Tensor] = [torch.full([1], n, dtype=torch.int64, device=x.device)]
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
    # Every leaf of every level summed in one batch (chunked to bound memory).
    leaf_starts: List[Tensor] = []
    leaf_lengths: List[Tensor] = []
    counts: List[int] = []
    for depth in range(len(level_lengths)):
        leaf = level_lengths[depth] <= 128
        leaf_starts.append(level_starts[depth][leaf])
        leaf_lengths.append(level_lengths[depth][leaf])
        counts.append(int(leaf.sum()))
    all_starts = torch.cat(leaf_starts)
    all_lengths = torch.cat(leaf_lengths)
    pieces: List[Tensor] = []
    for first in range(0, all_starts.numel(), 65536):
        last = min(first + 65536, all_starts.numel())
        pieces.append(_leaf_sums(padded, all_starts[first:last], all_lengths[first:last]))
    leaf_values = torch.split(torch.cat(pieces), counts)
    # Combine children up the levels: each split run is left + right.
    children = leaf_values[-1]
    for depth in range(len(level_lengths) - 2, -1, -1):
        lengths = level_lengths[depth]
        split = lengths > 128
        values = torch.empty(lengths.shape, dtype=x.dtype, device=x.device)
        values[split] = children[0::2] + children[1::2]
        values[~split] = leaf_values[depth]
        children = values
    # The reduction adds the tree's total to its identity, +0.0.
    return children[0] + 0.0


def numpy_float32_mean_std(x: Tensor) -> Tuple[Tensor, Tensor]:
    """``(a.mean(), a.std())`` of a float32 array ``a`` (ddof 0), bit for bit, as 0-dim float32.

    numpy divides the float32 sums by the integer count in float64 and rounds back to float32;
    the deviations are ``float32(x - mean)`` squared in float32. The square root is taken in
    float64 and rounded (correctly rounded, like numpy's sqrtf; torch's float32 sqrt is not).
    An empty ``x`` gives NaN for both, as numpy does.

    Example:
        >>> mean, std = numpy_float32_mean_std(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        >>> float(mean), float(std)
        (2.5, 1.1180340051651)
    """
    flat = x.reshape(-1)
    n = flat.numel()
    mean = (numpy_float32_sum(flat).double() / n).to(x.dtype)
    deviation = flat - mean
    var = (numpy_float32_sum(deviation * deviation).double() / n).to(x.dtype)
    std = torch.sqrt(var.double()).to(x.dtype)
    return mean, std
