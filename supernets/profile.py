"""Count MACs and parameters on real modules (forward hooks), to hold the analytic counts to account."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["count_macs", "count_params"]


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of every convolution, ``nn.Linear`` and ``nn.MultiheadAttention`` (projections and
    both attention matmuls) for ONE input of ``input_shape`` (e.g. C, H, W).

    Measured from the real output shapes of a forward pass, so it checks the analytic formulas independently.
    A module that defines ``extra_macs(inputs, output) -> int`` (e.g. attention's matmuls) adds that count too.
    """
    total = 0

    def conv_hook(m: nn.modules.conv._ConvNd, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        total += out[0].numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)

    def attention_hook(m: nn.MultiheadAttention, inp: tuple[torch.Tensor, ...], out: object) -> None:
        nonlocal total
        seq = 1 if m.batch_first else 0
        lq, lk, e = inp[0].shape[seq], inp[1].shape[seq], m.embed_dim
        # q projection + k/v projections, q @ k^T and attn @ v, output projection
        total += lq * e * e + lk * e * (m.kdim + m.vdim) + 2 * lq * lk * e + lq * e * e

    def linear_hook(m: nn.Linear, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        total += out[0].numel() * m.in_features

    def extra_hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        total += int(m.extra_macs(inp, out))  # type: ignore[operator]

    handles = []
    for mod in model.modules():
        if isinstance(mod, nn.modules.conv._ConvNd):
            handles.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.MultiheadAttention):
            handles.append(mod.register_forward_hook(attention_hook))
        elif isinstance(mod, nn.Linear):
            handles.append(mod.register_forward_hook(linear_hook))
        if callable(getattr(mod, "extra_macs", None)):
            handles.append(mod.register_forward_hook(extra_hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(total)


def count_params(model: nn.Module) -> int:
    """Number of parameters (running statistics are buffers and not counted)."""
    return sum(p.numel() for p in model.parameters())
