"""Dynamic convolution: elastic input/output channels and elastic kernel size."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DynamicConv2d"]


class DynamicConv2d(nn.Module):
    """A convolution whose active input channels, output channels and kernel size can shrink.

    Only the largest kernel is stored. A smaller kernel is the centre crop of the next larger one; with
    ``kernel_transform=True`` each crop is then multiplied by a learned ``(k*k, k*k)`` matrix shared across
    channels (identity at initialisation), and the chain runs largest -> smaller -> smallest, so the 3x3
    kernel is cut from the *transformed* 5x5 (the Once-for-All elastic kernel).

    Channels are always the leading slice (``weight[:out, :in]``), so smaller widths are prefixes.

    Args:
        in_channels: largest number of input channels.
        out_channels: largest number of output channels (must equal ``in_channels`` when ``depthwise``).
        kernel_sizes: allowed odd kernel sizes.
        stride: convolution stride (padding is always ``k // 2``).
        depthwise: one filter per channel (groups = channels).
        bias: whether the convolution has a bias.
        kernel_transform: learn the kernel transformation matrices.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_sizes: Sequence[int] = (1,),
        stride: int = 1,
        depthwise: bool = False,
        bias: bool = False,
        kernel_transform: bool = False,
    ) -> None:
        super().__init__()
        if depthwise and in_channels != out_channels:
            raise ValueError("a depthwise DynamicConv2d needs in_channels == out_channels")
        if any(k % 2 == 0 for k in kernel_sizes):
            raise ValueError(f"kernel sizes must be odd, got {tuple(kernel_sizes)}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_sizes = tuple(sorted(set(kernel_sizes)))
        self.stride, self.depthwise = stride, depthwise
        k = self.kernel_sizes[-1]
        self.weight = nn.Parameter(torch.empty(out_channels, 1 if depthwise else in_channels, k, k))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.kernel_transform = kernel_transform and len(self.kernel_sizes) > 1
        self.transforms = nn.ParameterDict()
        if self.kernel_transform:
            for small in self.kernel_sizes[:-1]:
                self.transforms[self._key(small)] = nn.Parameter(torch.eye(small * small))

    @staticmethod
    def _key(k: int) -> str:
        return f"to{k}x{k}"

    def kernel(self, kernel_size: int, in_channels: int, out_channels: int) -> torch.Tensor:
        """The active weight tensor ``[out, in (or 1), k, k]``."""
        if kernel_size not in self.kernel_sizes:
            raise ValueError(f"kernel size {kernel_size} is not one of {self.kernel_sizes}")
        w = self.weight[:out_channels] if self.depthwise else self.weight[:out_channels, :in_channels]
        for small in reversed(self.kernel_sizes[:-1]):
            if small < kernel_size:
                break
            w = _centre_crop(w, small)
            if self.kernel_transform:
                flat = w.reshape(w.shape[0], w.shape[1], small * small)
                w = F.linear(flat, self.transforms[self._key(small)]).reshape(w.shape)
        return w

    def forward(self, x: torch.Tensor, out_channels: int | None = None, kernel_size: int | None = None) -> torch.Tensor:
        in_c = x.shape[1]
        out_c = in_c if self.depthwise else (out_channels or self.out_channels)
        k = kernel_size or self.kernel_sizes[-1]
        w = self.kernel(k, in_c, out_c)
        b = self.bias[:out_c] if self.bias is not None else None
        return F.conv2d(x, w, b, self.stride, k // 2, 1, in_c if self.depthwise else 1)

    def to_static(self, in_channels: int, out_channels: int | None = None, kernel_size: int | None = None) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` holding a copy of the active weights."""
        out_c = in_channels if self.depthwise else (out_channels or self.out_channels)
        k = kernel_size or self.kernel_sizes[-1]
        conv = nn.Conv2d(
            in_channels, out_c, k, self.stride, k // 2, groups=in_channels if self.depthwise else 1,
            bias=self.bias is not None,
        )
        with torch.no_grad():
            conv.weight.copy_(self.kernel(k, in_channels, out_c))
            if self.bias is not None:
                conv.bias.copy_(self.bias[:out_c])
        return conv


def _centre_crop(w: torch.Tensor, k: int) -> torch.Tensor:
    start = (w.shape[-1] - k) // 2
    return w[..., start : start + k, start : start + k]
