"""Count MACs and parameters on real modules (forward hooks), to hold the analytic counts to account."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["count_macs", "count_params"]


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of every ``nn.Conv2d`` and ``nn.Linear`` for ONE input of ``input_shape`` (C, H, W).

    Measured from the real output shapes of a forward pass, so it checks the analytic formulas independently.
    A module that defines ``extra_macs(inputs, output) -> int`` (e.g. attention's matmuls) adds that count too.
    """
    total = 0

    def conv_hook(m: nn.Conv2d, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out[0].numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        total += out[0].numel() * m.in_features

    def extra_hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        total += int(m.extra_macs(inp, out))  # type: ignore[operator]

    handles = []
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            handles.append(mod.register_forward_hook(conv_hook))
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
