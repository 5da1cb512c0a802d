"""Squeeze-and-excite, static and dynamic (elastic channel count)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nasforge.supernets.layers._utils import make_divisible

__all__ = ["SqueezeExcite", "DynamicSqueezeExcite", "se_hidden"]


def se_hidden(channels: int, reduction: int = 4, divisor: int = 8) -> int:
    """Hidden width of the SE bottleneck for ``channels`` input channels."""
    return make_divisible(channels // reduction, divisor)


class SqueezeExcite(nn.Module):
    """``x * hardsigmoid(expand(relu(reduce(mean_hw(x)))))`` with 1x1 convolutions (with bias)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, hidden, 1, bias=True)
        self.expand = nn.Conv2d(hidden, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean((2, 3), keepdim=True)
        return x * F.hardsigmoid(self.expand(F.relu(self.reduce(y))))


class DynamicSqueezeExcite(nn.Module):
    """SE whose channel count follows the input and whose hidden width follows :func:`se_hidden`."""

    def __init__(self, channels: int, reduction: int = 4, divisor: int = 8) -> None:
        super().__init__()
        self.reduction, self.divisor = reduction, divisor
        hidden = se_hidden(channels, reduction, divisor)
        self.reduce = nn.Conv2d(channels, hidden, 1, bias=True)
        self.expand = nn.Conv2d(hidden, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        h = se_hidden(c, self.reduction, self.divisor)
        y = x.mean((2, 3), keepdim=True)
        y = F.relu(F.conv2d(y, self.reduce.weight[:h, :c], self.reduce.bias[:h]))
        y = F.conv2d(y, self.expand.weight[:c, :h], self.expand.bias[:c])
        return x * F.hardsigmoid(y)

    def to_static(self, channels: int) -> SqueezeExcite:
        """A :class:`SqueezeExcite` holding a copy of the active weights."""
        h = se_hidden(channels, self.reduction, self.divisor)
        se = SqueezeExcite(channels, h)
        with torch.no_grad():
            se.reduce.weight.copy_(self.reduce.weight[:h, :channels])
            se.reduce.bias.copy_(self.reduce.bias[:h])
            se.expand.weight.copy_(self.expand.weight[:channels, :h])
            se.expand.bias.copy_(self.expand.bias[:channels])
        return se
