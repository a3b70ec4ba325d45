"""Scriptable twin of dna's ``PlainConvUNet`` (the default nnU-Net architecture)."""
from typing import Any, Dict, List, Optional, Sequence, Type

from torch import Tensor, nn

from .blocks import StackedConvBlocks
from .decoder import UNetDecoder

__all__ = ["PlainConvEncoder", "PlainConvUNet"]


class PlainConvEncoder(nn.Module):
    """Stages of StackedConvBlocks, each wrapped in an nn.Sequential as dna does (``stages.{s}.0``)."""

    def __init__(
        self,
        input_channels: int,
        features_per_stage: Sequence[int],
        conv_op: Type[nn.Module],
        kernel_sizes: Sequence[Sequence[int]],
        strides: Sequence[Sequence[int]],
        n_conv_per_stage: Sequence[int],
        conv_bias: bool,
        norm_op: Optional[Type[nn.Module]],
        norm_op_kwargs: Dict[str, Any],
        dropout_op: Optional[Type[nn.Module]],
        dropout_op_kwargs: Dict[str, Any],
        nonlin: Optional[Type[nn.Module]],
        nonlin_kwargs: Dict[str, Any],
        nonlin_first: bool = False,
    ) -> None:
        super().__init__()
        stages: List[nn.Module] = []
        for s in range(len(features_per_stage)):
            stages.append(
                nn.Sequential(
                    StackedConvBlocks(
                        n_conv_per_stage[s], conv_op, input_channels, features_per_stage[s],
                        kernel_sizes[s], strides[s], conv_bias, norm_op, norm_op_kwargs,
                        dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs, nonlin_first,
                    )
                )
            )
            input_channels = features_per_stage[s]
        self.stages = nn.Sequential(*stages)
        self.output_channels = list(features_per_stage)

    def forward(self, x: Tensor) -> List[Tensor]:
        """Return the output of every stage (the skips), bottleneck last."""
        skips: List[Tensor] = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class PlainConvUNet(nn.Module):
    """U-Net with plain conv stages; state dict identical to dna's ``PlainConvUNet``.

    Build it from plans with :func:`nnunet_export.architectures.build_network`; the constructor
    takes already normalised arguments (per-stage lists, per-axis kernel sizes and strides).
    """

    def __init__(
        self,
        input_channels: int,
        features_per_stage: Sequence[int],
        conv_op: Type[nn.Module],
        kernel_sizes: Sequence[Sequence[int]],
        strides: Sequence[Sequence[int]],
        n_conv_per_stage: Sequence[int],
        num_classes: int,
        n_conv_per_stage_decoder: Sequence[int],
        conv_bias: bool,
        norm_op: Optional[Type[nn.Module]],
        norm_op_kwargs: Dict[str, Any],
        dropout_op: Optional[Type[nn.Module]],
        dropout_op_kwargs: Dict[str, Any],
        nonlin: Optional[Type[nn.Module]],
        nonlin_kwargs: Dict[str, Any],
        deep_supervision: bool = False,
        nonlin_first: bool = False,
    ) -> None:
        super().__init__()
        layer_args = (conv_bias, norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs)
        self.encoder = PlainConvEncoder(
            input_channels, features_per_stage, conv_op, kernel_sizes, strides, n_conv_per_stage,
            *layer_args, nonlin_first,
        )
        self.decoder = UNetDecoder(
            self.encoder, features_per_stage, strides, kernel_sizes, num_classes, n_conv_per_stage_decoder,
            deep_supervision, conv_op, *layer_args, nonlin_first,
        )

    def forward(self, x: Tensor):
        """Logits: a Tensor without deep supervision, else a list with full resolution first."""
        return self.decoder(self.encoder(x))
