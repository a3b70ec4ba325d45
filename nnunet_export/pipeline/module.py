"""Pipeline: nnU-Net's whole prediction in one scriptable module: preprocessing
(preprocessing.py), the sliding window with Gaussian weighting, mirroring and the fold ensemble
(here), the export back to the image's geometry (export_prediction.py).

``mode="exact"`` issues, on the CPU, the same torch operations in the same order and dtypes as
``nnUNetPredictor.predict_logits_from_preprocessed_data``: fp16 accumulators, the tile logits
multiplied by the fp16 Gaussian in float32, every mirror pass added in nnU-Net's order and divided
by their count, each fold's map divided by its fp16 count map, the fold maps summed in fp16 in fold
order and truly divided by the fold count. The result has the same bits.

``mode="fast"`` keeps the semantics with speed first: the mirror passes of a tile run as one batch.
Batched convolutions round differently, so its logits differ from nnU-Net's in the last fp16
bits (measured, see tests/test_pipeline_parity.py). The accumulators stay fp16, as nnU-Net's: in
float32 the Gaussian's underflowing tails would move logits near the volume border by up to 0.5.
"""
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..export_writer import ExportReport, check_verify, export_module
from ..metadata import build_metadata
from ..model_info import ModelInfo
from .errors import PipelineInputError, PipelineSettingsError
from .export_prediction import PredictionExport
from .preprocessing import Preprocessing
from .sliding_window import padding_for, tile_starts

# Messages raised inside scripted code are f-strings at the raise: TorchScript cannot call
# methods of module-level string constants.
kNotScriptableError = "the pipeline cannot be scripted: {reason}"


class Pipeline(nn.Module):
    """Prediction from preprocessed data, as ``nnUNetPredictor`` does it; see the module docstring.

    Build it with :meth:`nnunet_export.NnUNetModel.pipeline`.
    """

    # Python-only description; TorchScript must not compile it.
    __jit_ignored_attributes__ = ["info", "settings"]
    # Class-level annotations: TorchScript cannot infer the type of an empty list.
    mirror_axes: List[List[int]]
    patch_size: List[int]

    def __init__(self, networks: List[nn.Module], gaussian: Tensor, patch_size: List[int],
                 mirror_axes: List[List[int]], tile_step_size: float, use_gaussian: bool, exact: bool,
                 num_input_channels: int, num_heads: int, slice_by_slice: bool, cascade: bool,
                 info: ModelInfo, settings: dict, preprocessing: Preprocessing, export: PredictionExport,
                 image_path_error: str):
        super().__init__()
        self.networks = nn.ModuleList(networks)
        self.register_buffer("gaussian", gaussian, persistent=True)
        self.patch_size: List[int] = patch_size
        self.mirror_axes: List[List[int]] = mirror_axes
        self.tile_step_size: float = tile_step_size
        self.use_gaussian: bool = use_gaussian
        self.exact: bool = exact
        self.num_input_channels: int = num_input_channels
        self.num_heads: int = num_heads
        self.slice_by_slice: bool = slice_by_slice
        self.cascade: bool = cascade
        self.info = info
        self.settings = settings
        self.preprocessing = preprocessing
        self.prediction_export = export
        # Why preprocess/forward cannot run for this model ("" when they can): the cascade, or plans
        # naming a resampling function or normalization the pipeline does not reproduce.
        self.image_path_error: str = image_path_error

    def to_torchscript(self, path: Union[str, os.PathLike], *, verify: Union[bool, str] = True, tolerance: float = 0.0,
                       progress: Optional[Callable[[str], Any]] = None) -> ExportReport:
        """Script the pipeline and write it atomically with its metadata (settings included).

        ``verify`` reloads the file and compares it with this module (default tolerance 0: the
        same values) on a small image (:meth:`example_inputs`), and every weight bit for bit:
        ``True``: :meth:`preprocess`, the sliding window of fold 0 without mirror passes
        (``predict_logits_of``, the code ``predict_logits`` runs; one network pass per side however
        many folds) and :meth:`segmentation_from_logits`; ``"full"``: the same with
        ``predict_logits`` itself. A model without the image path (a cascade stage) is checked on
        a small preprocessed volume instead.

        Raises:
            PipelineSettingsError: a fold network is not scriptable (built by a trainer's code).
            OutputPathError, VerificationError: as for every export.
        """
        if not self.info.scriptable:
            raise PipelineSettingsError(kNotScriptableError.format(reason=self.info.not_scriptable_reason))
        metadata = build_metadata(self.info, self.networks, method="script", file_format="torchscript",
                                  pipeline=dict(self.settings))
        check_verify(verify)
        if self.image_path_error != "":
            # No image path (cascade, plans the pipeline cannot reproduce): check predict_logits.
            inputs = self._verification_volumes()
            call = _predict_logits if verify == "full" else _fold_zero_without_mirroring
        else:
            image, spacing = self.example_inputs()
            inputs = [image]
            call = _ImagePathCheck(spacing, full=verify == "full")
        return export_module(self, Path(path), file_format="torchscript", method="script", metadata=metadata,
                             inputs=inputs, verify=bool(verify), tolerance=tolerance,
                             say=progress or _silent, call=call)

    @torch.jit.unused
    def example_inputs(self) -> Tuple[Tensor, Tensor]:
        """A small deterministic ``(image, spacing)`` for :meth:`forward`: raw values in [0, 255)
        (valid for every normalization scheme), at a spacing 10 % off the configuration's on two
        axes so that resampling runs both ways, of a size that fits one tile after resampling."""
        patch = self.patch_size
        target = [float(s) for s in self.preprocessing.target_spacing]
        if self.slice_by_slice:
            spatial = [2] + [max(2, p // 2 + 1) for p in patch]
            target = [1.0] + target
        else:
            spatial = [max(2, p // 2 + 1) for p in patch]
        spacing = [target[0], target[1] * 1.1, target[2] * 0.9]
        backward = self.prediction_export.transpose_backward
        generator = torch.Generator().manual_seed(20240602)
        image = torch.rand([self.preprocessing.num_channels] + [spatial[a] for a in backward],
                           generator=generator, dtype=torch.float32) * 255.0
        return (image.to(self.gaussian.device),
                torch.tensor([spacing[a] for a in backward], dtype=torch.float64))

    @torch.jit.unused
    def _verification_volumes(self) -> List[Tensor]:
        """One small deterministic volume: smaller than the patch on every axis, so one tile (two
        slices for a 2-D configuration) exercises padding, mirroring and every fold cheaply."""
        patch = self.patch_size
        spatial = ([2] if self.slice_by_slice else []) + [max(1, p // 2 + 1) for p in patch]
        generator = torch.Generator().manual_seed(20240601)
        device = self.gaussian.device
        volume = torch.randn([self.num_input_channels] + spatial, generator=generator, dtype=torch.float32)
        return [volume.to(device)]

    def forward(self, image: Tensor, spacing: Tensor) -> Tensor:
        """The segmentation nnU-Net's ``predict_single_npy_array`` returns for ``image``
        (channels, z, y, x; float32 as nnU-Net's reader gives it) with ``spacing``
        (``properties["spacing"]``: z, y, x, float64): uint8 (uint16 for 255 or more foreground
        labels) in the image's geometry."""
        if not torch.jit.is_scripting():
            spacing = _spacing_tensor(spacing)
        data, properties = self.preprocess(image, spacing)
        return self.segmentation_from_logits(self.predict_logits(data), properties)

    @torch.jit.export
    def predict_with_probabilities(self, image: Tensor, spacing: Tensor) -> Tuple[Tensor, Tensor]:
        """``(segmentation, probabilities)`` as ``predict_single_npy_array(...,
        save_or_return_probabilities=True)`` returns them: probabilities float32 (classes or
        regions, z, y, x), the segmentation computed from them."""
        if not torch.jit.is_scripting():
            spacing = _spacing_tensor(spacing)
        data, properties = self.preprocess(image, spacing)
        return self.probabilities_from_logits(self.predict_logits(data), properties)

    @torch.jit.export
    def preprocess(self, image: Tensor, spacing: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        """``(data, properties)``: ``data`` as ``DefaultPreprocessor.run_case_npy`` gives it (the
        input of :meth:`predict_logits`), ``properties`` what the export back needs."""
        if not torch.jit.is_scripting():
            spacing = _spacing_tensor(spacing)
        if self.image_path_error != "":
            raise PipelineSettingsError(self.image_path_error)
        return self.preprocessing.run(image, spacing)

    @torch.jit.export
    def segmentation_from_logits(self, logits: Tensor, properties: Dict[str, Tensor]) -> Tensor:
        """``convert_predicted_logits_to_segmentation_with_correct_shape(logits, ...)``."""
        if self.image_path_error != "":
            raise PipelineSettingsError(self.image_path_error)
        return self.prediction_export.segmentation(logits, properties)

    @torch.jit.export
    def probabilities_from_logits(self, logits: Tensor, properties: Dict[str, Tensor]) -> Tuple[Tensor, Tensor]:
        """The same with ``return_probabilities=True``: ``(segmentation, probabilities)``."""
        if self.image_path_error != "":
            raise PipelineSettingsError(self.image_path_error)
        return self.prediction_export.with_probabilities(logits, properties)

    @torch.jit.export
    def predict_logits(self, data: Tensor) -> Tensor:
        """Logits of the fold ensemble for preprocessed ``data`` (channels, *spatial), float32:
        fp16, same shape as ``nnUNetPredictor.predict_logits_from_preprocessed_data`` returns."""
        return self.predict_logits_of(data, list(range(len(self.networks))), True)

    @torch.jit.export
    def predict_logits_of(self, data: Tensor, folds: List[int], mirroring: bool) -> Tensor:
        """:meth:`predict_logits` with the folds at the positions ``folds`` (ascending) and, when
        ``mirroring`` is False, no mirror passes: the same code, for cheap checks of a file."""
        data = self._checked(data)
        mirror_axes: List[List[int]] = self.mirror_axes if mirroring else []
        spatial = list(data.shape[1:])
        below, above = padding_for(spatial, self.patch_size)
        pad: List[int] = []
        for axis in range(len(below) - 1, -1, -1):
            pad.append(below[axis])
            pad.append(above[axis])
        padded = data
        if sum(below) + sum(above) > 0:
            padded = torch.nn.functional.pad(data, pad, "constant", 0.0)
        padded_spatial = list(padded.shape[1:])
        starts = tile_starts(padded_spatial, self.patch_size, self.tile_step_size, self.slice_by_slice)
        # fp16 accumulators in both modes: nnU-Net's Gaussian tails underflow fp16 near the volume
        # border, and summing them in float32 instead moves those voxels' logits by up to ~0.5.
        accumulator = torch.float16
        counts = self._counts(padded_spatial, starts, accumulator)
        prediction: Optional[Tensor] = None
        fold = 0
        for position, network in enumerate(self.networks):
            # No `continue` here: TorchScript unrolls loops over a ModuleList.
            if position in folds:
                logits = torch.zeros([self.num_heads] + padded_spatial, dtype=accumulator, device=data.device)
                for start in starts:
                    tile = self._region(padded, start).unsqueeze(0).contiguous()
                    if self.exact:
                        tile_logits = network(tile)
                        for axes in mirror_axes:
                            tile_logits += torch.flip(network(torch.flip(tile, axes)), axes)
                        if len(mirror_axes) > 0:
                            tile_logits /= len(mirror_axes) + 1
                    else:
                        # All mirror passes of the tile as one batch (the batched convolutions round
                        # differently from nnU-Net's one-by-one passes: last-bit differences).
                        batch = [tile] + [torch.flip(tile, axes) for axes in mirror_axes]
                        outputs = network(torch.cat(batch, 0))
                        tile_logits = outputs[0:1].clone()
                        for index in range(len(mirror_axes)):
                            tile_logits += torch.flip(outputs[index + 1:index + 2], mirror_axes[index])
                        if len(mirror_axes) > 0:
                            tile_logits /= len(mirror_axes) + 1
                    tile_logits = tile_logits[0]
                    if self.use_gaussian:
                        tile_logits *= self.gaussian
                    region = self._region(logits, start)
                    region += tile_logits
                logits.div_(counts)
                if bool(torch.any(torch.isinf(logits))):
                    raise RuntimeError(f"fold {position}: the fp16 logits overflowed to inf (nnU-Net aborts here too): "
                                       "the model's logits exceed the fp16 range for this input")
                logits = self._unpadded(logits, below, spatial)
                if prediction is None:
                    prediction = logits
                else:
                    prediction += logits
                fold += 1
        if prediction is None:
            raise PipelineSettingsError(f"folds {folds} name none of the pipeline's {len(self.networks)} folds")
        if fold > 1:
            prediction /= fold
        return prediction.half()

    def _checked(self, data: Tensor) -> Tensor:
        """``data`` as float32, after the checks nnU-Net leaves to assertions deep inside."""
        if data.dim() != 4:
            axes = "slices, x, y" if self.slice_by_slice else "x, y, z"
            raise PipelineInputError(f"data must have 4 dimensions (channels, {axes}), got {data.dim()}: "
                                     f"shape {list(data.shape)}")
        if not data.is_floating_point():
            # TorchScript prints a dtype as its enum number: name the kind instead there.
            got = "a tensor of another dtype" if torch.jit.is_scripting() else str(data.dtype)
            raise PipelineInputError(f"data must be a floating-point tensor (preprocessed float32), got {got}")
        if data.shape[0] != self.num_input_channels:
            what = "image channels plus one per foreground label of the previous stage" if self.cascade \
                else "image channels"
            raise PipelineInputError(f"data has {data.shape[0]} channels, this model takes "
                                     f"{self.num_input_channels} ({what})")
        if data.numel() == 0:
            raise PipelineInputError(f"data has no voxels: shape {list(data.shape)}")
        if bool(torch.all(torch.isnan(data))):
            raise PipelineInputError("data holds only NaN values: nothing to predict")
        return data.to(torch.float32)

    def _region(self, volume: Tensor, start: List[int]) -> Tensor:
        """The tile at ``start`` of ``volume`` (leading channel axis kept), a view."""
        if self.slice_by_slice:
            volume = volume.select(1, start[0])
            start = start[1:]
        for axis in range(len(self.patch_size)):
            volume = volume.narrow(axis + 1, start[axis], self.patch_size[axis])
        return volume

    def _counts(self, padded: List[int], starts: List[List[int]], dtype: torch.dtype) -> Tensor:
        # nnU-Net's n_predictions: the Gaussian (or 1) added per tile, in tile order, in `dtype`.
        counts = torch.zeros(padded, dtype=dtype, device=self.gaussian.device)
        weight = self.gaussian.to(dtype)
        for start in starts:
            region = self._region(counts.unsqueeze(0), start)[0]
            if self.use_gaussian:
                region += weight
            else:
                region += 1
        return counts

    def _unpadded(self, logits: Tensor, below: List[int], shape: List[int]) -> Tensor:
        offset = len(shape) - len(below)
        for axis in range(len(below)):
            logits = logits.narrow(offset + axis + 1, below[axis], shape[offset + axis])
        return logits


@torch.jit.unused
def _spacing_tensor(spacing: Any) -> Tensor:
    """Eager calls may pass the spacing as nnU-Net's properties hold it (a list or tuple of floats)."""
    if isinstance(spacing, Tensor):
        return spacing
    return torch.tensor([float(value) for value in spacing], dtype=torch.float64)


def _silent(line: str) -> None:
    pass


class _ImagePathCheck:
    """Verification call for the image path: preprocessing, the sliding window (fold 0 without
    mirror passes; ``full``: :meth:`Pipeline.predict_logits`) and the export back, their three
    results in one tensor so that the file is compared with the module on each."""

    def __init__(self, spacing: Tensor, full: bool):
        self.spacing = spacing
        self.full = full

    def __call__(self, module, image: Tensor) -> Tensor:
        data, properties = module.preprocess(image, self.spacing)
        logits = module.predict_logits(data) if self.full else module.predict_logits_of(data, [0], False)
        segmentation = module.segmentation_from_logits(logits, properties)
        return torch.cat([data.flatten(), logits.float().flatten(), segmentation.float().flatten()])


def _predict_logits(module, data: Tensor) -> Tensor:
    return module.predict_logits(data)


def _fold_zero_without_mirroring(module, data: Tensor) -> Tensor:
    return module.predict_logits_of(data, [0], False)
