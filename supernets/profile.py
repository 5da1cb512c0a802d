"""Count MACs and parameters on real modules (forward hooks), to hold the analytic counts to account."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["count_macs", "count_params", "macs_by_module"]


def _conv_macs(m: nn.modules.conv._ConvNd, inp: torch.Tensor, out: torch.Tensor) -> int:
    """MACs of one sample: a convolution per OUTPUT element, a transposed one per INPUT element (each input pixel
    is multiplied into ``out_channels / groups`` kernels; counting output pixels would be stride**d too high)."""
    kernel = math.prod(m.kernel_size)
    if m.transposed:
        return inp[0].numel() * (m.out_channels // m.groups) * kernel
    return out[0].numel() * (m.in_channels // m.groups) * kernel


def _attention_macs(m: nn.MultiheadAttention, inp: tuple[torch.Tensor, ...]) -> int:
    seq = 1 if m.batch_first else 0
    lq, lk, e = inp[0].shape[seq], inp[1].shape[seq], m.embed_dim
    # q projection + k/v projections, q @ k^T and attn @ v, output projection
    return lq * e * e + lk * e * (m.kdim + m.vdim) + 2 * lq * lk * e + lq * e * e


def _own_macs(m: nn.Module, inp: tuple[torch.Tensor, ...], out: object) -> int:
    total = 0
    if isinstance(m, nn.modules.conv._ConvNd):
        total += _conv_macs(m, inp[0], out)  # type: ignore[arg-type]
    elif isinstance(m, nn.MultiheadAttention):
        total += _attention_macs(m, inp)
    elif isinstance(m, nn.Linear):
        total += out[0].numel() * m.in_features  # type: ignore[index]
    if callable(getattr(m, "extra_macs", None)):
        total += int(m.extra_macs(inp, out))  # type: ignore[operator]
    return total


def macs_by_module(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """Multiply-accumulates per module name (as :func:`count_macs` counts them) for ONE input of ``input_shape``.

    Only modules that do counted work appear; a module called twice counts twice.
    """
    counts: dict[str, int] = {}

    def hook(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], object], None]:
        def record(m: nn.Module, inp: tuple[torch.Tensor, ...], out: object) -> None:
            counts[name] = counts.get(name, 0) + _own_macs(m, inp, out)

        return record

    kinds = (nn.modules.conv._ConvNd, nn.MultiheadAttention, nn.Linear)
    handles = [mod.register_forward_hook(hook(name)) for name, mod in model.named_modules()
               if isinstance(mod, kinds) or callable(getattr(mod, "extra_macs", None))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return counts


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of every convolution (transposed ones per input pixel), ``nn.Linear`` and
    ``nn.MultiheadAttention`` (projections and both attention matmuls) for ONE input of ``input_shape`` (e.g.
    C, H, W).

    Measured from the real input and output shapes of a forward pass, so it checks the analytic formulas
    independently. A module that defines ``extra_macs(inputs, output) -> int`` (e.g. attention's matmuls) adds
    that count too.
    """
    return int(sum(macs_by_module(model, input_shape).values()))


def count_params(model: nn.Module) -> int:
    """Number of parameters (running statistics are buffers and not counted)."""
    return sum(p.numel() for p in model.parameters())
