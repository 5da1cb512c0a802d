"""Inverted-residual (MBConv) blocks: the static block that subnets are made of, and its elastic version."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nasforge.supernets.layers._utils import make_activation, make_divisible
from nasforge.supernets.layers.conv import DynamicConv2d
from nasforge.supernets.layers.norm import DynamicBatchNorm2d
from nasforge.supernets.layers.se import DynamicSqueezeExcite, SqueezeExcite

__all__ = ["MBConv", "DynamicMBConv", "mid_channels"]


def mid_channels(in_channels: int, expand_ratio: float, divisor: int = 8) -> int:
    """Width of the expanded (middle) layer: ``make_divisible(round(in * e), divisor)``."""
    return make_divisible(round(in_channels * expand_ratio), divisor)


class MBConv(nn.Module):
    """Static MBConv: [1x1 expand + BN + act] -> kxk depthwise + BN + act -> [SE] -> 1x1 project + BN (+ x)."""

    def __init__(
        self,
        expand: nn.Module | None,
        depthwise: nn.Module,
        se: nn.Module | None,
        project: nn.Module,
        residual: bool,
    ) -> None:
        super().__init__()
        self.expand = expand
        self.depthwise = depthwise
        self.se = se
        self.project = project
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.depthwise(y)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return x + y if self.residual else y


class DynamicMBConv(nn.Module):
    """MBConv with elastic kernel size and expand ratio (input and output widths are fixed).

    Args:
        in_channels / out_channels: block widths.
        kernel_sizes: elastic depthwise kernel sizes.
        expand_ratios: elastic expand ratios; ``(1,)`` means no expand convolution.
        stride: depthwise stride.
        act: activation name (``relu`` or ``hswish``).
        use_se: squeeze-excite after the depthwise convolution.
        residual: identity shortcut (requires stride 1 and equal widths).
        kernel_transform: learned elastic-kernel transformation matrices.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_sizes: Sequence[int],
        expand_ratios: Sequence[float],
        stride: int = 1,
        act: str = "relu",
        use_se: bool = False,
        residual: bool = False,
        kernel_transform: bool = True,
        divisor: int = 8,
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if residual and (stride != 1 or in_channels != out_channels):
            raise ValueError("a residual MBConv needs stride 1 and in_channels == out_channels")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_sizes = tuple(sorted(kernel_sizes))
        self.expand_ratios = tuple(sorted(expand_ratios))
        self.stride, self.act, self.use_se, self.residual, self.divisor = stride, act, use_se, residual, divisor
        max_mid = mid_channels(in_channels, self.expand_ratios[-1], divisor)
        self.has_expand = self.expand_ratios != (1,)
        if self.has_expand:
            self.expand_conv = DynamicConv2d(in_channels, max_mid)
            self.expand_bn = DynamicBatchNorm2d(max_mid, eps=bn_eps, momentum=bn_momentum)
        self.dw_conv = DynamicConv2d(
            max_mid, max_mid, self.kernel_sizes, stride, depthwise=True, kernel_transform=kernel_transform
        )
        self.dw_bn = DynamicBatchNorm2d(max_mid, eps=bn_eps, momentum=bn_momentum)
        self.se = DynamicSqueezeExcite(max_mid, divisor=divisor) if use_se else None
        self.project_conv = DynamicConv2d(max_mid, out_channels)
        self.project_bn = DynamicBatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)
        self.activation = make_activation(act)
        self.active_kernel = self.kernel_sizes[-1]
        self.active_expand = self.expand_ratios[-1]

    def active_mid(self) -> int:
        return mid_channels(self.in_channels, self.active_expand, self.divisor) if self.has_expand else self.in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mid = self.active_mid()
        y = x
        if self.has_expand:
            y = self.activation(self.expand_bn(self.expand_conv(y, out_channels=mid)))
        y = self.activation(self.dw_bn(self.dw_conv(y, kernel_size=self.active_kernel)))
        if self.se is not None:
            y = self.se(y)
        y = self.project_bn(self.project_conv(y, out_channels=self.out_channels))
        return x + y if self.residual else y

    def to_static(self) -> MBConv:
        """A static :class:`MBConv` with copies of the active weights (kernel and expand ratio)."""
        mid = self.active_mid()
        expand = None
        if self.has_expand:
            expand = nn.Sequential(
                self.expand_conv.to_static(self.in_channels, mid), self.expand_bn.to_static(mid), make_activation(self.act)
            )
        depthwise = nn.Sequential(
            self.dw_conv.to_static(mid, kernel_size=self.active_kernel), self.dw_bn.to_static(mid), make_activation(self.act)
        )
        se: SqueezeExcite | None = self.se.to_static(mid) if self.se is not None else None
        project = nn.Sequential(
            self.project_conv.to_static(mid, self.out_channels), self.project_bn.to_static(self.out_channels)
        )
        return MBConv(expand, depthwise, se, project, self.residual)
