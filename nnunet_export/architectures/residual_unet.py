"""Scriptable twin of dna's ``ResidualEncoderUNet`` (nnU-Net's ResEnc M/L/XL presets)."""
from typing import Any, Dict, List, Optional, Sequence, Type

from torch import Tensor, nn

from .blocks import BasicBlockD, StackedConvBlocks, StackedResidualBlocks
from .decoder import UNetDecoder

__all__ = ["ResidualEncoder", "ResidualEncoderUNet"]


class ResidualEncoder(nn.Module):
    """Stem (one unstrided conv block) followed by StackedResidualBlocks per stage."""

    def __init__(
        self,
        input_channels: int,
        features_per_stage: Sequence[int],
        conv_op: Type[nn.Module],
        kernel_sizes: Sequence[Sequence[int]],
        strides: Sequence[Sequence[int]],
        n_blocks_per_stage: Sequence[int],
        conv_bias: bool,
        norm_op: Optional[Type[nn.Module]],
        norm_op_kwargs: Dict[str, Any],
        dropout_op: Optional[Type[nn.Module]],
        dropout_op_kwargs: Dict[str, Any],
        nonlin: Optional[Type[nn.Module]],
        nonlin_kwargs: Dict[str, Any],
        block: Type[nn.Module] = BasicBlockD,
        bottleneck_channels: Optional[Sequence[Optional[int]]] = None,
        stem_channels: Optional[int] = None,
    ) -> None:
        super().__init__()
        n_stages = len(features_per_stage)
        if bottleneck_channels is None:
            bottleneck_channels = [None] * n_stages
        layer_args = (conv_bias, norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs)
        if stem_channels is None:
            stem_channels = features_per_stage[0]
        ones = [1] * len(kernel_sizes[0])
        self.stem = StackedConvBlocks(1, conv_op, input_channels, stem_channels, kernel_sizes[0], ones, *layer_args)
        input_channels = stem_channels
        stages: List[nn.Module] = []
        for s in range(n_stages):
            stages.append(
                StackedResidualBlocks(
                    n_blocks_per_stage[s], conv_op, input_channels, features_per_stage[s], kernel_sizes[s],
                    strides[s], *layer_args, block=block, bottleneck_channels=bottleneck_channels[s],
                )
            )
            input_channels = features_per_stage[s]
        self.stages = nn.Sequential(*stages)
        self.output_channels = list(features_per_stage)

    def forward(self, x: Tensor) -> List[Tensor]:
        """Return the output of every stage (the skips), bottleneck last; the stem is not a skip."""
        x = self.stem(x)
        skips: List[Tensor] = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class ResidualEncoderUNet(nn.Module):
    """U-Net with a residual encoder and a plain decoder; state dict identical to dna's.

    Build it from plans with :func:`nnunet_export.architectures.build_network`. As in dna, the
    decoder never uses ``nonlin_first``.
    """

    def __init__(
        self,
        input_channels: int,
        features_per_stage: Sequence[int],
        conv_op: Type[nn.Module],
        kernel_sizes: Sequence[Sequence[int]],
        strides: Sequence[Sequence[int]],
        n_blocks_per_stage: Sequence[int],
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
        block: Type[nn.Module] = BasicBlockD,
        bottleneck_channels: Optional[Sequence[Optional[int]]] = None,
        stem_channels: Optional[int] = None,
    ) -> None:
        super().__init__()
        layer_args = (conv_bias, norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs)
        self.encoder = ResidualEncoder(
            input_channels, features_per_stage, conv_op, kernel_sizes, strides, n_blocks_per_stage,
            *layer_args, block=block, bottleneck_channels=bottleneck_channels, stem_channels=stem_channels,
        )
        self.decoder = UNetDecoder(
            self.encoder, features_per_stage, strides, kernel_sizes, num_classes, n_conv_per_stage_decoder,
            deep_supervision, conv_op, *layer_args, False,
        )

    def forward(self, x: Tensor):
        """Logits: a Tensor without deep supervision, else a list with full resolution first."""
        return self.decoder(self.encoder(x))
