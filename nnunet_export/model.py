"""The module load_complete returns: a complete network plus what describes it."""
from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Callable, Union

import torch

from ._core import ExportError
from .export_writer import DEFAULT_TOLERANCE, ExportReport, check_method, check_verify, export_module
from .metadata import build_metadata
from .model_config import ModelConfig
from .model_info import ModelInfo, attach_info, attached_info
from .pipeline import Pipeline, build_pipeline

# ModelInfo / attach_info / attached_info are re-exported: callers that hand out bare networks
# (the predictor patch) and exports find them beside the model class.
__all__ = ["ModelInfo", "NnUNetModel", "attach_info", "attached_info", "verification_inputs"]


class NnUNetModel(torch.nn.Module):
    """A trained nnU-Net network (one fold, or an ensemble of folds) with its weights loaded.

    ``forward(x)`` returns the full-resolution logits for ``x`` of shape
    ``(batch, input_channels, *patch)``. The network itself is ``self.network`` (its state-dict
    keys are dynamic-network-architectures'); ``self.info`` holds the metadata.
    """

    # The metadata is Python-only; TorchScript must not try to compile it.
    __jit_ignored_attributes__ = ["info"]

    def __init__(self, network: torch.nn.Module, info: ModelInfo):
        super().__init__()
        self.network = network
        self.info = info

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def to_torchscript(
        self,
        path: Union[str, os.PathLike],
        *,
        method: str = "auto",
        verify: Union[bool, str] = True,
        tolerance: float = DEFAULT_TOLERANCE,
        progress: Callable[[str], Any] | None = None,
    ) -> ExportReport:
        """Export to a verified TorchScript file at ``path``; see :func:`nnunet_export.to_torchscript`."""
        say = progress or _silent
        check_method(method)
        check_verify(verify)
        self.eval()
        chosen = self._torchscript_method(method, say)
        return export_module(
            self, Path(path), file_format="torchscript", method=chosen,
            metadata=build_metadata(self.info, self.network, method=chosen, file_format="torchscript"),
            inputs=verification_inputs(self.info.config, self._device(), full=verify == "full"),
            verify=bool(verify), tolerance=tolerance, say=say,
        )

    def to_exported_program(
        self,
        path: Union[str, os.PathLike],
        *,
        verify: Union[bool, str] = True,
        tolerance: float = DEFAULT_TOLERANCE,
        progress: Callable[[str], Any] | None = None,
    ) -> ExportReport:
        """Export to a verified ``torch.export`` ``.pt2`` file; see :func:`nnunet_export.to_exported_program`."""
        check_verify(verify)
        self.eval()
        # The program is exported for the patch size (static shapes): verify on that input.
        inputs = verification_inputs(self.info.config, self._device(), full=True)[:1]
        return export_module(
            self, Path(path), file_format="pt2", method="torch.export",
            metadata=build_metadata(self.info, self.network, method="torch.export", file_format="pt2"),
            inputs=inputs, verify=bool(verify), tolerance=tolerance, say=progress or _silent,
        )

    def pipeline(self, tile_step_size: float = 0.5, use_gaussian: bool = True, use_mirroring: bool = True,
                 mode: str = "exact") -> Pipeline:
        """nnU-Net's whole prediction, from the image to the segmentation, as one scriptable module.

        The pipeline shares this model's fold networks (no weight copies) and computes the
        Gaussian importance map for the patch size once. ``pipeline(image, spacing)`` gives
        ``nnUNetPredictor.predict_single_npy_array``'s segmentation; :meth:`Pipeline.preprocess`,
        :meth:`Pipeline.predict_logits` and :meth:`Pipeline.segmentation_from_logits` are its
        three steps. ``mode="exact"`` gives, on the CPU, nnU-Net's bits with the same settings;
        ``mode="fast"`` batches the mirror passes of the sliding window (last-bit differences in
        the logits, measured).

        Args:
            tile_step_size: as nnU-Net's ``-step_size``, in (0, 1].
            use_gaussian: weight tiles with the Gaussian, as nnU-Net does by default.
            use_mirroring: test-time mirroring along the axes the checkpoints allow.
            mode: ``"exact"`` or ``"fast"``.

        Raises:
            PipelineSettingsError: a step outside (0, 1], an unknown mode, or mirroring asked for
                a model trained without it.

        Example:
            >>> pipeline = model.pipeline()  # doctest: +SKIP
            >>> segmentation = pipeline(torch.from_numpy(image), properties["spacing"])  # doctest: +SKIP
            >>> logits = pipeline.predict_logits(torch.from_numpy(preprocessed))  # doctest: +SKIP
        """
        return build_pipeline(self.network, self.info, tile_step_size=tile_step_size, use_gaussian=use_gaussian,
                              use_mirroring=use_mirroring, mode=mode)

    def _device(self) -> torch.device:
        return next(iter(self.parameters()), torch.empty(0)).device

    def _torchscript_method(self, method: str, say: Callable[[str], Any]) -> str:
        if method == "script" and not self.info.scriptable:
            raise ExportError(f"method='script' is impossible: {self.info.not_scriptable_reason}")
        if method == "auto":
            if self.info.scriptable:
                return "script"
            say(f"tracing instead of scripting: {self.info.not_scriptable_reason}")
            return "trace"
        return method

    def _summary_rows(self) -> list[tuple[str, str]]:
        info = self.info
        cfg = info.config
        params, nbytes = info.parameter_summary(self.network)
        rows = [
            ("architecture", str(cfg.architecture["network_class_name"]).rsplit(".", 1)[-1]),
            ("configuration", f"{cfg.configuration} ({cfg.plans_name}, {cfg.dataset_name})"),
            ("trainer", info.trainer_name),
            ("folds", ", ".join(str(f) for f in info.folds) + f"  [{info.checkpoint_name}]"),
            ("parameters", f"{params:,} ({nbytes / 2**20:.1f} MiB)"),
            ("patch size", " x ".join(str(p) for p in cfg.patch_size)),
            ("channels", f"{cfg.num_input_channels} in, {cfg.num_output_channels} out"),
            ("labels", ", ".join(f"{k}={v}" for k, v in cfg.labels.items())),
            ("mirroring axes", str(info.mirroring_axes)),
            ("scriptable", "yes" if info.scriptable else f"no: {info.not_scriptable_reason}"),
        ]
        if info.weights_mapped:
            rows.append(("weights", "mapped from the checkpoint files (copy=False): never rewrite "
                                    "them in place while this model lives"))
        return rows

    def __repr__(self) -> str:
        rows = self._summary_rows()
        width = max(len(k) for k, _ in rows)
        body = "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
        return f"NnUNetModel(\n{body}\n)"

    def _repr_html_(self) -> str:
        cells = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>"
            f"{html.escape(v)}</td></tr>"
            for k, v in self._summary_rows()
        )
        return f"<table><caption>NnUNetModel</caption>{cells}</table>"


def _silent(line: str) -> None:
    pass


def _stride_factor(config: ModelConfig) -> list[int]:
    """Product of the network's strides per axis: every input size must be a multiple of it."""
    patch = [int(p) for p in config.patch_size]
    strides = config.architecture["arch_kwargs"].get("strides") or [[1] * len(patch)]
    factor = [1] * len(patch)
    for stride in strides:
        stride = [stride] * len(patch) if isinstance(stride, int) else stride
        factor = [f * int(s) for f, s in zip(factor, stride)]
    return factor


def verification_inputs(config: ModelConfig, device: torch.device, full: bool = False) -> list[torch.Tensor]:
    """Deterministic inputs for checking an export against the eager module.

    By default one small input: twice the network's total stride per axis (two voxels at the
    bottleneck; at most the patch size), cheap even for five large folds. ``full``: one input of
    patch size and one of another stride-divisible size.
    """
    patch = [int(p) for p in config.patch_size]
    factor = _stride_factor(config)
    if full:
        # The smaller stride-divisible neighbour keeps verification cheap; grow when none exists.
        other = [p - f if p - f >= f else p + f for p, f in zip(patch, factor)]
        spatial = [patch, other]
    else:
        spatial = [[min(2 * f, p) for p, f in zip(patch, factor)]]
    generator = torch.Generator().manual_seed(20240601)
    shapes = [(1, config.num_input_channels, *s) for s in spatial]
    # float32 whatever the default dtype: the networks are float32, as nnU-Net feeds them.
    return [torch.randn(s, generator=generator, dtype=torch.float32).to(device) for s in shapes]
