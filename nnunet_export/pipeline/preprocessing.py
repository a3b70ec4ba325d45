"""nnU-Net's preprocessing of one image (``DefaultPreprocessor.run_case_npy``) as a scriptable
module: transpose_forward, crop to the non-zero region, normalization per channel, resampling to
the configuration's spacing, in that order and with nnU-Net's dtypes, so the preprocessed data has
nnU-Net's bits on the CPU."""
import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .cropping import crop_to_nonzero
from .errors import PipelineInputError
from .normalization import normalize_channel
from .resampling import compute_new_shape, resample_data



class Preprocessing(nn.Module):
    """One configuration's preprocessing; ``run(image, spacing)`` returns ``(data, properties)``.

    ``properties`` holds what the export back to the input's geometry needs, as tensors (so the
    method works from TorchScript, C++ and Triton): ``spacing`` (float64, as given),
    ``shape_before_cropping`` and ``shape_after_cropping_and_before_resampling`` (int64, in the
    transposed axis order, as nnU-Net's), ``bbox_used_for_cropping`` (int64, ``(3, 2)``,
    half-open).
    """

    # Class-level annotations: TorchScript cannot infer the type of an empty list or of None.
    transpose_forward: List[int]
    target_spacing: List[float]
    schemes: List[str]
    use_mask_for_norm: List[bool]
    intensities: List[List[float]]
    force_separate_z: Optional[bool]

    def __init__(self, transpose_forward: List[int], target_spacing: List[float], num_channels: int,
                 schemes: List[str], use_mask_for_norm: List[bool], intensities: List[List[float]],
                 order: int, order_z: int, force_separate_z: Optional[bool], anisotropy_threshold: float):
        super().__init__()
        self.transpose_forward: List[int] = transpose_forward
        self.target_spacing: List[float] = target_spacing
        self.num_channels: int = num_channels
        self.schemes: List[str] = schemes
        self.use_mask_for_norm: List[bool] = use_mask_for_norm
        self.intensities: List[List[float]] = intensities
        self.order: int = order
        self.order_z: int = order_z
        self.force_separate_z: Optional[bool] = force_separate_z
        self.anisotropy_threshold: float = anisotropy_threshold
        # The filled non-zero mask only matters to z-score channels normalized inside it (nnU-Net
        # computes it always; without such a channel only its bounding box is used).
        self.needs_mask: bool = any(use and scheme == "ZScoreNormalization"
                                    for use, scheme in zip(use_mask_for_norm, schemes))

    def forward(self, image: Tensor, spacing: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        return self.run(image, spacing)

    def run(self, image: Tensor, spacing: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        spacing_values = checked_spacing(spacing)
        data = checked_image(image, self.num_channels)
        # run_case_npy: float32, transposed. Nothing below writes into ``data`` (cropping takes
        # views, every normalization returns a new tensor), so the caller's image needs no copy.
        data = data.to(torch.float32)
        data = data.permute([0] + [axis + 1 for axis in self.transpose_forward])
        original_spacing = [spacing_values[axis] for axis in self.transpose_forward]
        shape_before_cropping = list(data.shape[1:])
        data, seg, bbox = crop_to_nonzero(data, self.needs_mask)
        shape_after_cropping = list(data.shape[1:])
        target = self.target_spacing
        if len(target) < len(original_spacing):
            # 2-D configurations keep the slice axis' own spacing (its size stays unchanged).
            target = [original_spacing[0]] + target
        new_shape = compute_new_shape(shape_after_cropping, original_spacing, target)
        # nnU-Net normalizes the cropped (and transposed) view channel by channel; numpy's sums
        # over such a view follow its memory layout, which normalize_channel reproduces.
        mask = seg[0] if self.needs_mask else seg
        channels: List[Tensor] = []
        for channel in range(self.num_channels):
            channels.append(normalize_channel(data[channel], mask, self.schemes[channel],
                                              self.use_mask_for_norm[channel], self.intensities[channel]))
        data = channels[0].unsqueeze(0) if len(channels) == 1 else torch.stack(channels)
        data = resample_data(data, new_shape, original_spacing, target, self.order, self.order_z,
                             self.force_separate_z, self.anisotropy_threshold)
        properties: Dict[str, Tensor] = {
            "spacing": spacing.to(torch.float64).cpu(),
            "shape_before_cropping": torch.tensor(shape_before_cropping, dtype=torch.int64),
            "bbox_used_for_cropping": torch.tensor(bbox, dtype=torch.int64),
            "shape_after_cropping_and_before_resampling": torch.tensor(shape_after_cropping, dtype=torch.int64),
        }
        return data, properties


def checked_spacing(spacing: Tensor) -> List[float]:
    """``spacing`` (properties["spacing"] of nnU-Net's reader: z, y, x) as Python floats."""
    if spacing.dim() != 1 or spacing.shape[0] != 3:
        raise PipelineInputError(f"spacing must hold 3 values (one per image axis, as nnU-Net's reader gives them), "
                         f"got shape {list(spacing.shape)}")
    if spacing.dtype != torch.float64:
        # A float32 spacing would move compute_new_shape's rounding against nnU-Net's float64.
        raise PipelineInputError("spacing must be float64 (as nnU-Net's readers give it); a float32 spacing "
                         "changes the resampled shape nnU-Net computes")
    values: List[float] = spacing.tolist()
    for value in values:
        if not (value > 0.0 and value < float("inf")):
            raise PipelineInputError(f"spacing must be positive and finite, got {values}")
    return values


def checked_image(image: Tensor, num_channels: int) -> Tensor:
    if image.dim() != 4:
        raise PipelineInputError(f"image must have 4 dimensions (channels, z, y, x; a 2-D image as (channels, 1, y, x)), "
                         f"got {image.dim()}: shape {list(image.shape)}")
    if image.shape[0] != num_channels:
        raise PipelineInputError(f"image has {image.shape[0]} channels, this model takes {num_channels}")
    if image.numel() == 0:
        raise PipelineInputError(f"image has no voxels: shape {list(image.shape)}")
    if image.dtype == torch.bool or image.is_complex():
        raise PipelineInputError("image must hold real numbers (nnU-Net reads every image as float32)")
    values = image.to(torch.float32)
    # The min and max are finite exactly when every value is (both propagate nan): one read of
    # the image; the elementwise test runs only to count the bad values.
    if not (math.isfinite(float(values.amin())) and math.isfinite(float(values.amax()))):
        bad = int((~torch.isfinite(values)).sum())
        raise PipelineInputError(f"image holds {bad} non-finite values (NaN or inf); nnU-Net's normalization would "
                         "spread them over the whole channel")
    return image


__all__ = ["Preprocessing", "checked_image", "checked_spacing"]
