"""Pipeline: nnU-Net's prediction from a preprocessed volume (sliding window, Gaussian weighting,
mirroring, fold ensemble) in one scriptable module.

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
from typing import Any, Callable, List, Optional, Union

import torch
from torch import Tensor, nn

from ..export_writer import ExportReport, check_verify, export_module
from ..metadata import build_metadata
from ..model_info import ModelInfo
from .errors import PipelineInputError, PipelineSettingsError
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

    def __init__(self, networks: List[nn.Module], gaussian: Tensor, patch_size: List[int],
                 mirror_axes: List[List[int]], tile_step_size: float, use_gaussian: bool, exact: bool,
                 num_input_channels: int, num_heads: int, slice_by_slice: bool, cascade: bool,
                 info: ModelInfo, settings: dict):
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

    def to_torchscript(self, path: Union[str, os.PathLike], *, verify: Union[bool, str] = True, tolerance: float = 0.0,
                       progress: Optional[Callable[[str], Any]] = None) -> ExportReport:
        """Script the pipeline and write it atomically with its metadata (settings included).

        ``verify`` reloads the file and compares it with this module (default tolerance 0: the
        same values) on a small volume, and every weight bit for bit. ``True``: the sliding window
        of fold 0 without mirror passes (``predict_logits_of``, the code ``predict_logits`` runs;
        one network pass per side however many folds); ``"full"``: ``predict_logits`` itself.

        Raises:
            PipelineSettingsError: a fold network is not scriptable (built by a trainer's code).
            OutputPathError, VerificationError: as for every export.
        """
        if not self.info.scriptable:
            raise PipelineSettingsError(kNotScriptableError.format(reason=self.info.not_scriptable_reason))
        metadata = build_metadata(self.info, self.networks, method="script", file_format="torchscript",
                                  pipeline=dict(self.settings))
        check_verify(verify)
        call = _predict_logits if verify == "full" else _fold_zero_without_mirroring
        return export_module(self, Path(path), file_format="torchscript", method="script", metadata=metadata,
                             inputs=self._verification_volumes(), verify=bool(verify), tolerance=tolerance,
                             say=progress or _silent, call=call)

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

    def forward(self, data: Tensor) -> Tensor:
        return self.predict_logits(data)

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


def _silent(line: str) -> None:
    pass


def _predict_logits(module, data: Tensor) -> Tensor:
    return module.predict_logits(data)


def _fold_zero_without_mirroring(module, data: Tensor) -> Tensor:
    return module.predict_logits_of(data, [0], False)
