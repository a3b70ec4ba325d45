"""Scriptable twin of dna's ``UNetDecoder`` (shared by PlainConvUNet and ResidualEncoderUNet)."""
from typing import Any, Dict, List, Optional, Sequence, Type

import torch
from torch import Tensor, nn

from .blocks import StackedConvBlocks

__all__ = ["UNetDecoder", "deep_supervision_enabled"]

_TRANSPOSED_BY_CONV = {nn.Conv1d: nn.ConvTranspose1d, nn.Conv2d: nn.ConvTranspose2d, nn.Conv3d: nn.ConvTranspose3d}


class UNetDecoder(nn.Module):
    """Transposed conv up, concatenate the skip, conv stack, 1x1 segmentation head per stage.

    ``self.encoder`` is the encoder module itself (not a copy), registered as a submodule exactly
    as in dna: that is where the ``decoder.encoder.*`` state-dict aliases come from, and it costs
    no memory because the parameters are the same objects.

    ``deep_supervision`` is a plain attribute in eager mode (``prepare_for_inference`` turns it
    off, as nnU-Net's ``set_deep_supervision_enabled`` does) and a compile-time constant under
    TorchScript: ``torch.jit.script`` then emits only one branch of ``forward``, so a scripted
    network returns ``Tensor`` (full-resolution logits) with deep supervision off and
    ``List[Tensor]`` (full resolution first) with it on, exactly what dna returns in each mode.
    """

    deep_supervision: torch.jit.Final[bool]
    n_decoder_stages: torch.jit.Final[int]

    def __init__(
        self,
        encoder: nn.Module,
        output_channels_per_stage: Sequence[int],
        strides: Sequence[Sequence[int]],
        kernel_sizes: Sequence[Sequence[int]],
        num_classes: int,
        n_conv_per_stage: Sequence[int],
        deep_supervision: bool,
        conv_op: Type[nn.Module],
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
        # Registration order matters: dna assigns deep_supervision, encoder, num_classes, then the
        # three ModuleLists, so decoder.encoder.* keys come before decoder.stages.*.
        self.deep_supervision = deep_supervision
        self.encoder = encoder
        self.num_classes = num_classes
        n_stages_encoder = len(output_channels_per_stage)
        transpconv_op = _TRANSPOSED_BY_CONV[conv_op]
        stages: List[nn.Module] = []
        transpconvs: List[nn.Module] = []
        seg_layers: List[nn.Module] = []
        ones = [1] * len(kernel_sizes[0])
        for s in range(1, n_stages_encoder):
            features_below = output_channels_per_stage[-s]
            features_skip = output_channels_per_stage[-(s + 1)]
            stride = list(strides[-s])
            transpconvs.append(transpconv_op(features_below, features_skip, stride, stride, bias=conv_bias))
            stages.append(
                StackedConvBlocks(
                    n_conv_per_stage[s - 1], conv_op, 2 * features_skip, features_skip,
                    kernel_sizes[-(s + 1)], ones, conv_bias, norm_op, norm_op_kwargs,
                    dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs, nonlin_first,
                )
            )
            # Built for every stage even without deep supervision, as dna does, so that a
            # checkpoint trained with deep supervision loads strictly.
            seg_layers.append(conv_op(features_skip, num_classes, 1, 1, 0, bias=True))
        self.stages = nn.ModuleList(stages)
        self.transpconvs = nn.ModuleList(transpconvs)
        self.seg_layers = nn.ModuleList(seg_layers)
        self.n_decoder_stages = n_stages_encoder - 1

    def forward(self, skips: List[Tensor]):
        """Decode encoder skips (bottleneck last) into logits; see the class docstring for the type."""
        lres_input = skips[-1]
        seg_outputs: List[Tensor] = []
        # zip/enumerate over ModuleLists is unrolled by TorchScript; dna's self.stages[s] with a
        # loop variable is not compilable.
        for s, (transpconv, stage, seg_layer) in enumerate(zip(self.transpconvs, self.stages, self.seg_layers)):
            x = transpconv(lres_input)
            x = torch.cat((x, skips[-(s + 2)]), 1)
            x = stage(x)
            if self.deep_supervision:
                seg_outputs.append(seg_layer(x))
            elif s == self.n_decoder_stages - 1:
                seg_outputs.append(seg_layer(x))
            lres_input = x
        # Largest (full-resolution) prediction first, as dna returns it.
        seg_outputs.reverse()
        if self.deep_supervision:
            return seg_outputs
        else:
            return seg_outputs[0]


def deep_supervision_enabled(module: nn.Module) -> bool:
    """Whether any decoder inside ``module`` (eager or already scripted) returns all heads."""
    for m in module.modules():
        if isinstance(m, UNetDecoder) and m.deep_supervision:
            return True
        # a scripted decoder keeps the flag as a compiled-in constant, readable as an attribute
        if isinstance(m, torch.jit.ScriptModule) and getattr(m, "deep_supervision", False) is True:
            return True
    return False
