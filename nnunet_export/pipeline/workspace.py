"""Reusable buffers for the blocked resampling loops.

A volume is resampled in many blocks and slabs. Allocating each block's temporaries afresh makes
the allocator hand back memory whose pages fault in again on first touch, which on the CPU costs
as much as the arithmetic; the loops instead keep flat buffers and view their leading elements.
"""
from typing import List

from torch import Tensor


def leading_view(buffer: Tensor, shape: List[int]) -> Tensor:
    """The first elements of the flat ``buffer`` as a contiguous tensor of ``shape``."""
    count = 1
    for size in shape:
        count *= size
    return buffer.narrow(0, 0, count).view(shape)


__all__ = ["leading_view"]
