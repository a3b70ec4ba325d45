"""nnU-Net's export of predicted logits back to the input's geometry
(``convert_predicted_logits_to_segmentation_with_correct_shape``) as a scriptable module: the
logits resampled to the cropped shape (float64, stored fp16), argmax or the region rule, the crop
pasted into the shape before cropping, transpose_backward.

The segmentation path streams the classes: one channel's float64 resampling at a time with a
running argmax, never a ``(classes, volume)`` buffer. With probabilities the full fp16 and float32
arrays exist, as they are the result."""
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .cropping import insert_crop
from .errors import PipelineInputError
from .resampling import resample_logits, segmentation_from_logits


class PredictionExport(nn.Module):
    """One configuration's export; see the module docstring."""

    # Class-level annotations: TorchScript cannot infer the type of an empty list.
    transpose_forward: List[int]
    transpose_backward: List[int]
    target_spacing: List[float]
    regions_class_order: List[int]
    force_separate_z: Optional[bool]

    def __init__(self, transpose_forward: List[int], transpose_backward: List[int], target_spacing: List[float],
                 order: int, order_z: int, force_separate_z: Optional[bool], anisotropy_threshold: float,
                 num_heads: int, regions_class_order: List[int], wide_labels: bool):
        super().__init__()
        self.transpose_forward: List[int] = transpose_forward
        self.transpose_backward: List[int] = transpose_backward
        self.target_spacing: List[float] = target_spacing
        self.order: int = order
        self.order_z: int = order_z
        self.force_separate_z: Optional[bool] = force_separate_z
        self.anisotropy_threshold: float = anisotropy_threshold
        self.num_heads: int = num_heads
        # Empty for label models (softmax, argmax); the label of each region otherwise.
        self.regions_class_order: List[int] = regions_class_order
        # nnU-Net stores 255 or more foreground labels as uint16, fewer as uint8.
        self.wide_labels: bool = wide_labels

    def forward(self, logits: Tensor, properties: Dict[str, Tensor]) -> Tensor:
        return self.segmentation(logits, properties)

    def segmentation(self, logits: Tensor, properties: Dict[str, Tensor]) -> Tensor:
        """The segmentation nnU-Net writes for ``logits`` (fp16, as ``predict_logits`` returns)."""
        logits = self._checked(logits)
        shape, current, original = self._geometry(logits, properties)
        segmentation = segmentation_from_logits(logits, shape, current, original, self.order, self.order_z,
                                                self.force_separate_z, self.anisotropy_threshold,
                                                self.regions_class_order)
        return self._restored(segmentation, properties)

    def with_probabilities(self, logits: Tensor, properties: Dict[str, Tensor]) -> Tuple[Tensor, Tensor]:
        """(segmentation, probabilities) as nnU-Net returns them with ``return_probabilities``:
        the probabilities float32 ``(classes, *input shape)``, the segmentation computed from them."""
        logits = self._checked(logits)
        shape, current, original = self._geometry(logits, properties)
        resampled = resample_logits(logits, shape, current, original, self.order, self.order_z,
                                    self.force_separate_z, self.anisotropy_threshold)
        values = resampled.float()
        if len(self.regions_class_order) > 0:
            probabilities = torch.sigmoid(values)
            segmentation = torch.zeros(shape, dtype=torch.int16)
            for index, label in enumerate(self.regions_class_order):
                segmentation[probabilities[index] > 0.5] = label
        else:
            probabilities = torch.softmax(values, 0)
            segmentation = torch.argmax(probabilities, 0)
        full_shape, bbox = _crop_geometry(properties)
        full = insert_crop(probabilities, full_shape, bbox, 0.0)
        if len(self.regions_class_order) == 0:
            # Outside the crop a label model's probabilities say "background" (channel 0 is 1).
            full[0] = insert_crop(probabilities[0], full_shape, bbox, 1.0)
        full = full.permute([0] + [axis + 1 for axis in self.transpose_backward]).contiguous()
        return self._restored(segmentation, properties), full

    def _checked(self, logits: Tensor) -> Tensor:
        if logits.dim() != 4 or logits.shape[0] != self.num_heads:
            raise PipelineInputError(f"logits must be ({self.num_heads}, *spatial) as predict_logits returns them, "
                                     f"got shape {list(logits.shape)}")
        if logits.dtype != torch.float16:
            # nnU-Net resamples its fp16 logits and stores the result in fp16: argmax ties depend on it.
            raise PipelineInputError("logits must be float16, as predict_logits returns them")
        return logits

    def _geometry(self, logits: Tensor, properties: Dict[str, Tensor]) -> Tuple[List[int], List[float], List[float]]:
        """(shape after cropping, the logits' spacing, the cropped image's spacing), transposed."""
        for key in ["spacing", "shape_before_cropping", "bbox_used_for_cropping",
                    "shape_after_cropping_and_before_resampling"]:
            if key not in properties:
                raise PipelineInputError(f"properties lack '{key}': pass what preprocess returned")
        spacing: List[float] = properties["spacing"].to(torch.float64).tolist()
        original = [spacing[axis] for axis in self.transpose_forward]
        shape: List[int] = properties["shape_after_cropping_and_before_resampling"].tolist()
        current = self.target_spacing
        if len(current) < len(shape):
            current = [original[0]] + current
        return shape, current, original

    def _restored(self, segmentation: Tensor, properties: Dict[str, Tensor]) -> Tensor:
        """The cropped segmentation pasted into zeros of the shape before cropping, transposed back."""
        dtype = torch.uint16 if self.wide_labels else torch.uint8
        full_shape, bbox = _crop_geometry(properties)
        labels = segmentation.to(dtype)
        # A crop that is the whole image (no zero border) needs no paste: the labels are ours.
        covered = list(labels.shape) == full_shape
        for axis in range(len(bbox)):
            covered = covered and bbox[axis][0] == 0 and bbox[axis][1] == full_shape[axis]
        full = labels if covered else insert_crop(labels, full_shape, bbox, 0.0)
        return full.permute(self.transpose_backward).contiguous()


def _crop_geometry(properties: Dict[str, Tensor]) -> Tuple[List[int], List[List[int]]]:
    """(shape before cropping, bbox) of ``properties``."""
    full_shape: List[int] = properties["shape_before_cropping"].tolist()
    bbox: List[List[int]] = properties["bbox_used_for_cropping"].tolist()
    return full_shape, bbox


__all__ = ["PredictionExport"]
