"""nnU-Net's tile placement, in TorchScript-compatible Python: the same float arithmetic as
``compute_steps_for_sliding_window`` and ``pad_nd_image`` (Python/TorchScript ``round`` and
``np.round`` are both half to even), so the steps are nnU-Net's in eager and scripted code."""
import math
from typing import List, Tuple


def compute_steps(image_size: List[int], tile_size: List[int], tile_step_size: float) -> List[List[int]]:
    """Start of every tile along each axis, as ``compute_steps_for_sliding_window`` gives them."""
    steps: List[List[int]] = []
    for dim in range(len(tile_size)):
        target = tile_size[dim] * tile_step_size
        num_steps = int(math.ceil((image_size[dim] - tile_size[dim]) / target)) + 1
        max_step_value = image_size[dim] - tile_size[dim]
        if num_steps == 1:
            # nnU-Net uses a huge step here; times 0 it is the one start at 0. (The constant itself
            # would not survive TorchScript's serialisation as a float.)
            steps.append([0])
            continue
        actual_step_size = max_step_value / (num_steps - 1)
        steps.append([int(round(actual_step_size * i)) for i in range(num_steps)])
    return steps


def padding_for(shape: List[int], patch_size: List[int]) -> Tuple[List[int], List[int]]:
    """(pad below, pad above) of the last ``len(patch_size)`` axes of ``shape``, as
    ``pad_nd_image(image, patch_size)`` pads them: up to the patch size, content centred, the
    odd voxel above."""
    below: List[int] = []
    above: List[int] = []
    offset = len(shape) - len(patch_size)
    for axis in range(len(patch_size)):
        difference = max(patch_size[axis], shape[offset + axis]) - shape[offset + axis]
        below.append(difference // 2)
        above.append(difference // 2 + difference % 2)
    return below, above


def tile_starts(padded: List[int], patch_size: List[int], tile_step_size: float,
                slice_by_slice: bool) -> List[List[int]]:
    """Every tile's start, in nnU-Net's order. ``padded`` is the spatial shape after padding;
    ``slice_by_slice`` (a 2-D configuration on 3-D data) puts the slice index first."""
    starts: List[List[int]] = []
    if slice_by_slice:
        steps = compute_steps(padded[1:], patch_size, tile_step_size)
        for d in range(padded[0]):
            for sx in steps[0]:
                for sy in steps[1]:
                    starts.append([d, sx, sy])
        return starts
    steps = compute_steps(padded, patch_size, tile_step_size)
    if len(steps) == 2:
        for sx in steps[0]:
            for sy in steps[1]:
                starts.append([sx, sy])
        return starts
    for sx in steps[0]:
        for sy in steps[1]:
            for sz in steps[2]:
                starts.append([sx, sy, sz])
    return starts


def mirror_combinations(mirroring_axes: List[int]) -> List[List[int]]:
    """Tile axes nnU-Net flips, in its order: every combination of one axis, then of two, ...
    (itertools.combinations order), offset by the batch and channel axes."""
    axes = [a + 2 for a in mirroring_axes]
    combos: List[List[int]] = [[]]
    result: List[List[int]] = []
    for _ in axes:
        # Extending each combination (in order) by every larger axis keeps lexicographic order.
        combos = [combo + [axis] for combo in combos for axis in axes if not combo or axis > combo[-1]]
        result.extend(combos)
    return result
