"""nnU-Net's crop to the nonzero region and its inverse, as TorchScript-compatible functions.

``crop_to_nonzero`` reproduces ``nnunetv2.preprocessing.cropping.crop_to_nonzero(data, None)``:
the nonzero mask over all channels, hole-filled like ``scipy.ndimage.binary_fill_holes`` (face
connectivity), its half-open bounding box (the full extent when nothing is nonzero, as acvl_utils'
``get_bbox_from_mask``), the cropped data and the int8 map (0 inside the filled mask, -1 outside).

The hole fill is a flood fill of the background from the array border. Rather than growing one
voxel per iteration, each step floods whole background runs along one axis at a time: a run
(maximal background segment of a line) is reached as soon as one of its voxels is. Rounds over
all axes repeat until nothing changes; a round costs a few passes over the volume and body-like
volumes need only a handful of rounds.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor


def _flood_runs(reached: Tensor, background: Tensor, axis: int) -> Tensor:
    """``reached`` grown to every background run (along ``axis``) that holds a reached voxel."""
    bg = background.movedim(axis, -1)
    seen = reached.movedim(axis, -1)
    length = bg.shape[-1]
    lines = bg.numel() // length
    # Foreground voxels end runs: the running count of them numbers the runs of each line.
    run = torch.cumsum((~bg).to(torch.int32), -1).to(torch.int64)
    line_shape: List[int] = list(bg.shape[:-1])
    line_shape.append(1)
    line = torch.arange(lines, dtype=torch.int64, device=bg.device).view(line_shape)
    run_id = line * (length + 1) + run
    run_reached = torch.zeros([lines * (length + 1)], dtype=torch.bool, device=bg.device)
    run_reached[run_id[seen]] = True
    return (run_reached[run_id] & bg).movedim(-1, axis)


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
    background = ~mask
    border = torch.zeros_like(mask)
    for axis in range(mask.dim()):
        size = mask.shape[axis]
        border.narrow(axis, 0, 1).fill_(True)
        border.narrow(axis, size - 1, 1).fill_(True)
    reached = background & border
    count = int(reached.sum())
    while True:
        for axis in range(mask.dim()):
            reached = _flood_runs(reached, background, axis)
        new_count = int(reached.sum())
        if new_count == count:
            break
        count = new_count
    return ~reached


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
        occupied = torch.nonzero(mask.movedim(axis, 0).reshape(mask.shape[axis], -1).any(1)).view(-1)
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
    nonzero = (data != 0).any(0)
    bbox = bounding_box(nonzero)
    cropped = _crop(data, bbox, 1)
    if not need_mask:
        return cropped, torch.empty([0], dtype=torch.int8, device=data.device), bbox
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
