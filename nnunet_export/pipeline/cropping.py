"""nnU-Net's crop to the nonzero region and its inverse, as TorchScript-compatible functions.

``crop_to_nonzero`` reproduces ``nnunetv2.preprocessing.cropping.crop_to_nonzero(data, None)``:
the nonzero mask over all channels, hole-filled like ``scipy.ndimage.binary_fill_holes`` (face
connectivity), its half-open bounding box (the full extent when nothing is nonzero, as acvl_utils'
``get_bbox_from_mask``), the cropped data and the int8 map (0 inside the filled mask, -1 outside).

The hole fill labels the connected components of the background without visiting voxels one
by one: the background runs of the last axis (maximal background segments of its lines) are the
nodes, two runs in neighbouring lines are joined when they overlap, and the components of that
graph come from min-label hooking with pointer jumping (a few rounds, logarithmic in the graph's
size). Runs that touch the array border are joined to a border node; every other component is a
hole. Only a handful of passes touch the whole volume: finding the runs, and painting the holes.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor


def _runs(mask: Tensor, width: int) -> Tuple[Tensor, Tensor]:
    """Flat index of the first and of the last voxel of every background run along the last axis."""
    flat = mask.reshape(-1)
    total = flat.numel()
    # A run's first or last voxel: background with foreground (or the line's end) next to it.
    edge = torch.empty([total], dtype=torch.bool, device=mask.device)
    if total > 2:
        torch.logical_or(flat.narrow(0, 0, total - 2), flat.narrow(0, 2, total - 2), out=edge.narrow(0, 1, total - 2))
    lines = edge.view(-1, width)
    lines.select(1, 0).fill_(True)
    lines.select(1, width - 1).fill_(True)
    torch.gt(edge, flat, out=edge)
    at = torch.nonzero(edge).view(-1)
    column = torch.remainder(at, width)
    opens = (column == 0) | flat.index_select(0, (at - 1).clamp(min=0))
    closes = (column == width - 1) | flat.index_select(0, (at + 1).clamp(max=total - 1))
    return at[opens], at[closes]


def _components(labels: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """``labels`` (each node's root, ``labels[x] <= x``) merged over the edges ``u[i]``--``v[i]``.

    Each round hooks the larger root of every edge whose ends differ onto the smaller one, then
    jumps pointers until every node points at its root; edges inside one tree stay there and are
    dropped.
    """
    merging = True
    while merging:
        lu = labels.index_select(0, u)
        lv = labels.index_select(0, v)
        differ = torch.nonzero(lu != lv).view(-1)
        merging = differ.numel() > 0
        lu = lu.index_select(0, differ)
        lv = lv.index_select(0, differ)
        u = u.index_select(0, differ)
        v = v.index_select(0, differ)
        labels.scatter_reduce_(0, torch.maximum(lu, lv), torch.minimum(lu, lv), "amin")
        while True:
            jumped = labels.index_select(0, labels)
            if torch.equal(jumped, labels):
                break
            labels = jumped
    return labels


def fill_holes(mask: Tensor) -> Tensor:
    """``scipy.ndimage.binary_fill_holes(mask)`` (default structure: face connectivity), any rank.

    Background not connected to the array border through face neighbours becomes True. An axis
    of size 1 or 2 puts every voxel on the border, so nothing is filled (nnU-Net's 2-D quirk:
    a ``(1, X, Y)`` mask keeps its holes).

    Example:
        >>> ring = torch.ones(3, 3, dtype=torch.bool); ring[1, 1] = False
        >>> bool(fill_holes(ring)[1, 1])
        True
    """
    if mask.dim() == 0:
        return torch.ones_like(mask)  # as scipy: a lone voxel is never border background
    if mask.numel() == 0:
        return mask.clone()
    shape: List[int] = list(mask.shape)
    width = shape[-1]
    starts, ends = _runs(mask, width)
    runs = starts.numel()
    # Node 0 is the border, run r is node r + 1.
    border = (torch.remainder(starts, width) == 0) | (torch.remainder(ends, width) == width - 1)
    us: List[Tensor] = []
    vs: List[Tensor] = []
    stride = width
    for axis in range(len(shape) - 2, -1, -1):
        coord = torch.remainder(torch.div(starts, stride, rounding_mode="floor"), shape[axis])
        border |= (coord == 0) | (coord == shape[axis] - 1)
        # Two runs of neighbouring lines overlap from the later of their first voxels on: look
        # up the run holding each run's first voxel moved one line down, and one line up.
        for step in (-stride, stride):
            inner = torch.nonzero(coord != (0 if step < 0 else shape[axis] - 1)).view(-1)
            at = starts.index_select(0, inner) + step
            other = torch.searchsorted(starts, at, right=True) - 1
            touch = torch.nonzero((other >= 0) & (ends.index_select(0, other.clamp(min=0)) >= at)).view(-1)
            us.append(inner.index_select(0, touch) + 1)
            vs.append(other.index_select(0, touch) + 1)
        stride *= shape[axis]
    labels = torch.arange(runs + 1, dtype=torch.int64, device=mask.device)
    labels.narrow(0, 1, runs).masked_fill_(border, 0)
    if len(us) > 0:
        labels = _components(labels, torch.cat(us), torch.cat(vs))
    hole = torch.nonzero(labels.narrow(0, 1, runs) != 0).view(-1)
    filled = mask.clone(memory_format=torch.contiguous_format)
    if hole.numel() == 0:
        return filled
    # Paint the hole runs: +1 at each first voxel, -1 after each last voxel, a running sum.
    first = int(starts[hole[0]])
    span = int(ends[hole[-1]]) + 1 - first
    delta = torch.zeros([span + 1], dtype=torch.int8, device=mask.device)
    delta.index_fill_(0, starts.index_select(0, hole) - first, 1)
    delta.index_fill_(0, ends.index_select(0, hole) + 1 - first, -1)
    inside = torch.cumsum(delta.narrow(0, 0, span), 0, dtype=torch.int8)
    filled.view(-1).narrow(0, first, span).logical_or_(inside)
    return filled


def nonzero_mask(data: Tensor) -> Tensor:
    """nnU-Net's ``create_nonzero_mask``: any channel nonzero, holes filled.

    Args:
        data: (c, *spatial) tensor.
    Returns:
        bool tensor (*spatial).
    """
    return fill_holes((data != 0).any(0))


def bounding_box(mask: Tensor) -> List[List[int]]:
    """Half-open ``[[lo, hi], ...]`` per axis of the True voxels; the full extent when none is.

    Example:
        >>> m = torch.zeros(4, 5, dtype=torch.bool); m[1, 2] = True
        >>> bounding_box(m)
        [[1, 2], [2, 3]]
    """
    bbox: List[List[int]] = []
    if not bool(mask.any()):
        for axis in range(mask.dim()):
            bbox.append([0, mask.shape[axis]])
        return bbox
    for axis in range(mask.dim()):
        others: List[int] = []
        for other in range(mask.dim()):
            if other != axis:
                others.append(other)
        # A reduction over the other axes reads the mask in place (a moved, reshaped copy would
        # cost a volume-sized allocation per axis).
        occupied = torch.nonzero(mask.any(others) if len(others) > 0 else mask).view(-1)
        bbox.append([int(occupied[0]), int(occupied[-1]) + 1])
    return bbox


def _nonzero_bounding_box(data: Tensor) -> List[List[int]]:
    """``bounding_box`` of "any channel nonzero" for real-valued ``data`` (c, *spatial) without a
    mask: a voxel is nonzero where its max is above 0 or its min below 0 (``-0.0`` is zero, as
    for ``!= 0``). The max and min over the last axis (and the channels) are a volume read each;
    every projection comes from those two small maps but the last axis' own, which reduces over
    the others (read in place, no volume-sized temporary)."""
    high = torch.amax(data, dim=[0, data.dim() - 1])
    low = torch.amin(data, dim=[0, data.dim() - 1])
    rows = (high > 0.0) | (low < 0.0)
    last = data.dim() - 1
    leading: List[int] = []
    for axis in range(last):
        leading.append(axis)
    across = (torch.amax(data, dim=leading) > 0.0) | (torch.amin(data, dim=leading) < 0.0)
    if not bool(across.any()):
        bbox: List[List[int]] = []
        for axis in range(1, data.dim()):
            bbox.append([0, data.shape[axis]])
        return bbox
    bbox = bounding_box(rows)
    occupied = torch.nonzero(across).view(-1)
    bbox.append([int(occupied[0]), int(occupied[-1]) + 1])
    return bbox


def _crop(tensor: Tensor, bbox: List[List[int]], first_axis: int) -> Tensor:
    for axis in range(len(bbox)):
        tensor = tensor.narrow(first_axis + axis, bbox[axis][0], bbox[axis][1] - bbox[axis][0])
    return tensor


def crop_to_nonzero(data: Tensor, need_mask: bool) -> Tuple[Tensor, Tensor, List[List[int]]]:
    """nnU-Net's ``crop_to_nonzero(data, None)``: ``(cropped data, seg, bbox)``.

    Args:
        data: (c, *spatial) tensor.
        need_mask: whether the caller reads ``seg`` (ZScoreNormalization with use_mask_for_norm,
            the cascade's -1 trick). False skips the hole fill, which never moves the bbox, and
            returns an empty int8 ``seg`` of shape (0,).
    Returns:
        the cropped data (a view of ``data``), the int8 map (1, *cropped spatial) holding 0 inside
        the filled nonzero mask and -1 outside, and the half-open bbox of the spatial axes.
    """
    if not need_mask:
        bbox = _nonzero_bounding_box(data)
        return _crop(data, bbox, 1), torch.empty([0], dtype=torch.int8, device=data.device), bbox
    nonzero = (data[0] != 0) if data.shape[0] == 1 else (data != 0).any(0)
    bbox = bounding_box(nonzero)
    cropped = _crop(data, bbox, 1)
    inside = _crop(fill_holes(nonzero), bbox, 0)
    seg = torch.where(inside, torch.zeros([1], dtype=torch.int8, device=data.device),
                      torch.full([1], -1, dtype=torch.int8, device=data.device))
    return cropped, seg.unsqueeze(0), bbox


def insert_crop(crop: Tensor, full_shape: List[int], bbox: List[List[int]], fill: float) -> Tensor:
    """The crop placed back at ``bbox`` in a new tensor filled with ``fill`` elsewhere.

    nnU-Net's ``insert_crop_into_image`` into a ``fill``-valued array (``revert_cropping``).
    The bbox covers the last ``len(bbox)`` axes; leading axes (channels) of ``crop`` are kept.

    Args:
        crop: (*leading, *cropped spatial) tensor.
        full_shape: the spatial shape before cropping (``len(bbox)`` sizes).
        bbox: half-open ``[[lo, hi], ...]`` as crop_to_nonzero returned it.
        fill: the value outside the bbox.
    Raises:
        RuntimeError (torch.jit.Error when scripted): shapes that do not fit together.
    Example:
        >>> insert_crop(torch.ones(1, 2), [3, 4], [[1, 2], [1, 3]], 0.0).tolist()
        [[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    """
    lead = crop.dim() - len(bbox)
    if lead < 0 or len(full_shape) != len(bbox):
        raise RuntimeError("insert_crop: a crop of rank " + str(crop.dim()) + " cannot take a bbox of "
                           + str(len(bbox)) + " axes into a shape of " + str(len(full_shape)) + " axes")
    for axis in range(len(bbox)):
        lo = bbox[axis][0]
        hi = bbox[axis][1]
        if lo < 0 or hi > full_shape[axis] or hi - lo != crop.shape[lead + axis]:
            raise RuntimeError("insert_crop: bbox " + str(bbox) + " does not place a crop of shape "
                               + str(list(crop.shape)) + " inside the spatial shape " + str(full_shape))
    shape: List[int] = list(crop.shape[:lead])
    shape.extend(full_shape)
    out = torch.full(shape, fill, dtype=crop.dtype, device=crop.device)
    _crop(out, bbox, lead).copy_(crop)
    return out
