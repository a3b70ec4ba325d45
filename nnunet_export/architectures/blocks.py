"""TorchScript-scriptable twins of dynamic-network-architectures' building blocks.

Every class registers its submodules under the same attribute names and in the same order as
dynamic-network-architectures (dna) 0.4.4, so ``state_dict()`` keys, their order and their shapes
are identical, aliases included. The differences are only in ``forward`` (scriptable) and in
identity paths, which dna builds as ``lambda x: x`` and we build as parameter-free
``nn.Identity`` (no state-dict entry either way).

Constructors take already validated, normalised arguments (per-axis lists of ints, resolved torch
classes, kwargs dicts); validation of plans lives in :mod:`nnunet_export.architectures.build`.
"""
from typing import Any, Dict, List, Optional, Sequence, Type

from torch import Tensor, nn

__all__ = [
    "ConvDropoutNormReLU",
    "StackedConvBlocks",
    "BasicBlockD",
    "BottleneckD",
    "StackedResidualBlocks",
]

_AVG_POOL_BY_DIM = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}


def _avg_pool_for(conv_op: Type[nn.Module]) -> Type[nn.Module]:
    for dim, conv in ((1, nn.Conv1d), (2, nn.Conv2d), (3, nn.Conv3d)):
        if issubclass(conv_op, conv):
            return _AVG_POOL_BY_DIM[dim]
    raise TypeError(f"not a 1d/2d/3d convolution class: {conv_op!r}")


class ConvDropoutNormReLU(nn.Module):
    """conv -> [dropout] -> [norm] -> [nonlin] (norm and nonlin swapped when ``nonlin_first``).

    As in dna, each op is registered twice: under its own name (``conv``, ``dropout``, ``norm``,
    ``nonlin``) and as an element of ``all_modules``. Both names refer to the same module object,
    so the two state-dict keys are the same Parameter and ``torch.jit.save`` writes it once.
    """

    def __init__(
        self,
        conv_op: Type[nn.Module],
        input_channels: int,
        output_channels: int,
        kernel_size: Sequence[int],
        stride: Sequence[int],
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
        ops: List[nn.Module] = []
        self.conv = conv_op(
            input_channels,
            output_channels,
            list(kernel_size),
            list(stride),
            padding=[(k - 1) // 2 for k in kernel_size],
            dilation=1,
            bias=conv_bias,
        )
        ops.append(self.conv)
        if dropout_op is not None:
            self.dropout = dropout_op(**dropout_op_kwargs)
            ops.append(self.dropout)
        if norm_op is not None:
            self.norm = norm_op(output_channels, **norm_op_kwargs)
            ops.append(self.norm)
        if nonlin is not None:
            self.nonlin = nonlin(**nonlin_kwargs)
            ops.append(self.nonlin)
        # dna swaps the last two ops only when both norm and nonlin exist; the index of the norm
        # inside all_modules (a state-dict key) depends on it.
        if nonlin_first and norm_op is not None and nonlin is not None:
            ops[-1], ops[-2] = ops[-2], ops[-1]
        self.all_modules = nn.Sequential(*ops)

    def forward(self, x: Tensor) -> Tensor:
        return self.all_modules(x)


class StackedConvBlocks(nn.Module):
    """``num_convs`` ConvDropoutNormReLU in a row; only the first one is strided."""

    def __init__(
        self,
        num_convs: int,
        conv_op: Type[nn.Module],
        input_channels: int,
        output_channels: int,
        kernel_size: Sequence[int],
        initial_stride: Sequence[int],
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
        ones = [1] * len(kernel_size)
        self.convs = nn.Sequential(
            *[
                ConvDropoutNormReLU(
                    conv_op,
                    input_channels if i == 0 else output_channels,
                    output_channels,
                    kernel_size,
                    initial_stride if i == 0 else ones,
                    conv_bias,
                    norm_op,
                    norm_op_kwargs,
                    dropout_op,
                    dropout_op_kwargs,
                    nonlin,
                    nonlin_kwargs,
                    nonlin_first,
                )
                for i in range(num_convs)
            ]
        )
        self.output_channels = output_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.convs(x)


def _make_skip(
    conv_op: Type[nn.Module],
    input_channels: int,
    output_channels: int,
    stride: Sequence[int],
    norm_op: Optional[Type[nn.Module]],
    norm_op_kwargs: Dict[str, Any],
) -> nn.Module:
    """ResNet-D shortcut: [AvgPool(stride)] -> [1x1 conv (no bias) -> norm], else identity."""
    has_stride = any(s != 1 for s in stride)
    requires_projection = input_channels != output_channels
    if not (has_stride or requires_projection):
        # dna uses `lambda x: x`, which TorchScript cannot compile; Identity has no state either.
        return nn.Identity()
    ops: List[nn.Module] = []
    if has_stride:
        ops.append(_avg_pool_for(conv_op)(list(stride), list(stride)))
    if requires_projection:
        ones = [1] * len(stride)
        ops.append(
            ConvDropoutNormReLU(
                conv_op, input_channels, output_channels, ones, ones, False,
                norm_op, norm_op_kwargs, None, {}, None, {},
            )
        )
    return nn.Sequential(*ops)


class BasicBlockD(nn.Module):
    """Residual block (ResNet-D): two kxk convs, the second without nonlin; nonlin after the add."""

    def __init__(
        self,
        conv_op: Type[nn.Module],
        input_channels: int,
        output_channels: int,
        kernel_size: Sequence[int],
        stride: Sequence[int],
        conv_bias: bool,
        norm_op: Optional[Type[nn.Module]],
        norm_op_kwargs: Dict[str, Any],
        dropout_op: Optional[Type[nn.Module]],
        dropout_op_kwargs: Dict[str, Any],
        nonlin: Optional[Type[nn.Module]],
        nonlin_kwargs: Dict[str, Any],
    ) -> None:
        super().__init__()
        ones = [1] * len(kernel_size)
        self.conv1 = ConvDropoutNormReLU(
            conv_op, input_channels, output_channels, kernel_size, stride, conv_bias,
            norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs,
        )
        self.conv2 = ConvDropoutNormReLU(
            conv_op, output_channels, output_channels, kernel_size, ones, conv_bias,
            norm_op, norm_op_kwargs, None, {}, None, {},
        )
        self.nonlin2 = nonlin(**nonlin_kwargs) if nonlin is not None else nn.Identity()
        self.skip = _make_skip(conv_op, input_channels, output_channels, stride, norm_op, norm_op_kwargs)

    def forward(self, x: Tensor) -> Tensor:
        residual = self.skip(x)
        out = self.conv2(self.conv1(x))
        out += residual
        return self.nonlin2(out)


class BottleneckD(nn.Module):
    """Bottleneck residual block (ResNet-D): 1x1 -> kxk (strided, dropout) -> 1x1, add, nonlin."""

    def __init__(
        self,
        conv_op: Type[nn.Module],
        input_channels: int,
        bottleneck_channels: int,
        output_channels: int,
        kernel_size: Sequence[int],
        stride: Sequence[int],
        conv_bias: bool,
        norm_op: Optional[Type[nn.Module]],
        norm_op_kwargs: Dict[str, Any],
        dropout_op: Optional[Type[nn.Module]],
        dropout_op_kwargs: Dict[str, Any],
        nonlin: Optional[Type[nn.Module]],
        nonlin_kwargs: Dict[str, Any],
    ) -> None:
        super().__init__()
        ones = [1] * len(kernel_size)
        self.conv1 = ConvDropoutNormReLU(
            conv_op, input_channels, bottleneck_channels, ones, ones, conv_bias,
            norm_op, norm_op_kwargs, None, {}, nonlin, nonlin_kwargs,
        )
        self.conv2 = ConvDropoutNormReLU(
            conv_op, bottleneck_channels, bottleneck_channels, kernel_size, stride, conv_bias,
            norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs,
        )
        self.conv3 = ConvDropoutNormReLU(
            conv_op, bottleneck_channels, output_channels, ones, ones, conv_bias,
            norm_op, norm_op_kwargs, None, {}, None, {},
        )
        self.nonlin3 = nonlin(**nonlin_kwargs) if nonlin is not None else nn.Identity()
        self.skip = _make_skip(conv_op, input_channels, output_channels, stride, norm_op, norm_op_kwargs)

    def forward(self, x: Tensor) -> Tensor:
        residual = self.skip(x)
        out = self.conv3(self.conv2(self.conv1(x)))
        out += residual
        return self.nonlin3(out)


class StackedResidualBlocks(nn.Module):
    """``n_blocks`` residual blocks in ``self.blocks``; only the first one is strided."""

    def __init__(
        self,
        n_blocks: int,
        conv_op: Type[nn.Module],
        input_channels: int,
        output_channels: int,
        kernel_size: Sequence[int],
        initial_stride: Sequence[int],
        conv_bias: bool,
        norm_op: Optional[Type[nn.Module]],
        norm_op_kwargs: Dict[str, Any],
        dropout_op: Optional[Type[nn.Module]],
        dropout_op_kwargs: Dict[str, Any],
        nonlin: Optional[Type[nn.Module]],
        nonlin_kwargs: Dict[str, Any],
        block: Type[nn.Module] = BasicBlockD,
        bottleneck_channels: Optional[int] = None,
    ) -> None:
        super().__init__()
        ones = [1] * len(kernel_size)
        blocks: List[nn.Module] = []
        for n in range(n_blocks):
            in_ch = input_channels if n == 0 else output_channels
            stride = initial_stride if n == 0 else ones
            common = (conv_bias, norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs)
            if block is BottleneckD:
                if bottleneck_channels is None:
                    raise ValueError("BottleneckD needs bottleneck_channels")
                blocks.append(BottleneckD(conv_op, in_ch, bottleneck_channels, output_channels,
                                          kernel_size, stride, *common))
            else:
                blocks.append(BasicBlockD(conv_op, in_ch, output_channels, kernel_size, stride, *common))
        self.blocks = nn.Sequential(*blocks)
        self.output_channels = output_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)
