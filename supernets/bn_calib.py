"""Batch-norm recalibration: fresh running statistics for one subnet before it is evaluated."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["recalibrate_bn"]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor], max_images: int = 2000,
                   reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> int:
    """Replace every BN layer's running statistics by statistics of the data the subnet sees.

    The protocol of the Once-for-All reference: forward up to ``max_images`` images with the BN layers
    normalising by batch statistics; each BN then gets the batch-size-weighted mean of the per-batch means and
    of the per-batch *biased* variances. Works on static networks and on dynamic supernets (only the active
    channel slice of a dynamic BN is overwritten). Other layers (dropout) run in eval mode.

    ``reduce`` sums a tensor over the processes of a distributed job (e.g. ``DistContext.all_reduce_sum``):
    each process then forwards only its share of the images and every process ends with the same statistics.
    ``batches`` may yield tensors or ``(images, labels)`` pairs.

    Returns:
        The number of images used (over all processes with ``reduce``).
    """
    if max_images < 1:
        raise ValueError(f"recalibrate_bn got no images (max_images={max_images}); pass max_images >= 1")
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    sums: dict[_BatchNorm, list[torch.Tensor | int]] = {}
    hook = partial(_accumulate, sums)
    modes = {m: m.training for m in model.modules()}
    handles = [bn.register_forward_pre_hook(hook) for bn in bns]
    seen = 0
    try:
        model.eval()
        for bn in bns:
            bn.train()
        for x in batches:
            x = x[0] if isinstance(x, (tuple, list)) else x
            x = x[: max_images - seen]
            model(x)
            seen += x.shape[0]
            if seen >= max_images:  # stop before a lazy loader produces a batch that would not be used
                break
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.train(mode)
    if reduce is not None:
        seen = _reduce(bns, sums, reduce, seen)
    if seen == 0:
        raise ValueError("recalibrate_bn got no images; pass at least one non-empty batch")
    _write_stats(sums)
    return seen


def _accumulate(sums: dict[_BatchNorm, list[torch.Tensor | int]], m: _BatchNorm,
                inputs: tuple[torch.Tensor, ...]) -> None:
    """Forward pre-hook of a BN layer: add the batch-size-weighted mean and biased variance of its input."""
    x = inputs[0].detach().double()
    n = x.shape[0]
    mean = x.mean((0, 2, 3))
    var = x.var((0, 2, 3), unbiased=False)
    if m in sums:
        acc = sums[m]
        acc[0] = acc[0] + mean * n  # type: ignore[operator]
        acc[1] = acc[1] + var * n  # type: ignore[operator]
        acc[2] = int(acc[2]) + n
    else:
        sums[m] = [mean * n, var * n, n]


def _write_stats(sums: dict[_BatchNorm, list[torch.Tensor | int]]) -> None:
    """Set each BN's running statistics (its active channel slice) to the accumulated means."""
    for bn, (msum, vsum, n) in sums.items():
        c = msum.shape[0]  # type: ignore[union-attr]
        bn.running_mean[:c] = (msum / n).to(bn.running_mean.dtype)  # type: ignore[operator,index]
        bn.running_var[:c] = (vsum / n).to(bn.running_var.dtype)  # type: ignore[operator,index]


def _reduce(bns: list[_BatchNorm], sums: dict[_BatchNorm, list[torch.Tensor | int]],
            reduce: Callable[[torch.Tensor], torch.Tensor], seen: int) -> int:
    """Sum every BN's accumulators over processes, in place; returns the total image count.

    Every process reduces every BN in the same order (the collectives must match), also one it never ran (a
    process may have no batch): that one sends zeros of the layer's full width.
    """
    device = bns[0].running_mean.device if bns and bns[0].running_mean is not None else torch.device("cpu")
    total = int(reduce(torch.tensor([float(seen)], dtype=torch.float64, device=device)).item())
    for bn in bns:
        width = bn.running_mean.shape[0]  # type: ignore[union-attr]
        packed = torch.zeros(2 * width + 3, dtype=torch.float64, device=device)
        if bn in sums:
            msum, vsum, n = sums[bn]
            c = len(msum)  # type: ignore[arg-type]
            packed[:c], packed[width : width + c] = msum, vsum  # type: ignore[assignment]
            packed[-3:] = torch.tensor([float(n), float(c), 1.0])
        packed = reduce(packed)
        if packed[-1] > 0:  # some process ran this layer; its active width is the same on all of them
            c = int(round(float(packed[-2] / packed[-1])))
            sums[bn] = [packed[:c], packed[width : width + c], int(packed[-3].item())]
    return total
