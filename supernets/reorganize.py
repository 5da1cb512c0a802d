"""Channel re-organisation of an elastic MobileNetV3 (Once-for-All), run once at the start of each expand phase.

Elastic expand keeps the *first* ``mid`` middle channels of a block, so before smaller expand ratios are trained
the most important middle channels are moved to the front. The importance of a middle channel is the L1 norm of
the point-linear (project) weights that read it. At expand stage ``s > 0`` the widths trained in earlier phases
must keep their channels, so the sort happens within bands: the channels of the smallest already-trained width
stay a prefix, the next band follows, and so on; only the order inside a band changes. Afterwards the hidden
units of squeeze-excite are sorted by the L1 norm of the SE expand weights over each unit.

Every permutation is applied consistently to the producer and consumer of a channel, so the largest subnet
computes the same function before and after (smaller subnets change: that is the point).
"""

from __future__ import annotations

import torch
from torch import nn

from nasforge.supernets.layers import DynamicMBConv, mid_channels
from nasforge.supernets.mbv3 import ElasticMobileNetV3

__all__ = ["reorganize_channels", "reorganize_block", "middle_importance", "band_sort"]


def reorganize_channels(net: ElasticMobileNetV3, expand_stage: int = 0) -> None:
    """Sort the middle channels of every elastic block of ``net`` by importance, in place.

    Call it once at the start of each expand phase of progressive shrinking, with the phase index: stage 0
    is the first expand phase (largest two ratios, e.g. ``{4, 6}``: a plain sort), stage 1 the second
    (``{3, 4, 6}``: the channels kept by ratio 4 stay the first ones). Parameters keep their identity (an
    optimizer built before still points at them, but its momentum buffers are not permuted: build it after).
    Blocks without an expand convolution (the fixed first block) are left alone.

    Args:
        net: the supernet; the active architecture is not changed.
        expand_stage: index of the expand phase, ``0 <= expand_stage < len(expand_ratios)``.

    Raises:
        ValueError: ``expand_stage`` is outside that range.
    """
    n_ratios = len(net.config.expand_ratios)
    if not 0 <= expand_stage < n_ratios:
        raise ValueError(
            f"expand_stage {expand_stage} is out of range for expand ratios {net.config.expand_ratios}; "
            f"use 0..{n_ratios - 1} (0 = first expand phase)"
        )
    for unit in net.units:
        for block in unit.blocks:
            reorganize_block(block, expand_stage)


def middle_importance(block: DynamicMBConv) -> torch.Tensor:
    """L1 norm of the point-linear weights over each middle channel (float64, one value per middle channel).

    Summed in float64 so that the order does not depend on how the weights happen to be laid out in memory.
    """
    return block.project_conv.weight.detach().double().abs().sum(dim=(0, 2, 3))


def band_sort(importance: torch.Tensor, boundaries: list[int]) -> torch.Tensor:
    """Indices that sort ``importance`` in descending order within the bands cut at ``boundaries``.

    With boundaries ``[b1, b2]`` the bands are ``[0, b1)``, ``[b1, b2)`` and ``[b2, n)``; each index stays in
    its band, so every ``[0, b)`` keeps its set of channels. Ties keep their order (stable sort).
    """
    cuts = [0, *sorted(b for b in set(boundaries) if 0 < b < importance.numel()), importance.numel()]
    parts = []
    for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
        order = torch.sort(importance[lo:hi], descending=True, stable=True).indices
        parts.append(order + lo)
    return torch.cat(parts)


@torch.no_grad()
def reorganize_block(block: DynamicMBConv, expand_stage: int = 0) -> torch.Tensor | None:
    """Sort one block's middle channels (see :func:`reorganize_channels`) and then its SE hidden units.

    Returns:
        The permutation applied to the middle channels (new position ``i`` holds old channel ``perm[i]``), or
        ``None`` for a block without an expand convolution.
    """
    if not block.has_expand:
        return None
    ratios = sorted(block.expand_ratios, reverse=True)
    # widths trained in earlier phases (all but the full width): their channel sets must stay prefixes
    kept = [mid_channels(block.in_channels, e, block.divisor) for e in ratios[1 : expand_stage + 1]]
    perm = band_sort(middle_importance(block), kept)
    _permute(block.expand_conv.weight, 0, perm)
    if block.expand_conv.bias is not None:
        _permute(block.expand_conv.bias, 0, perm)
    _permute_bn(block.expand_bn, perm)
    _permute(block.dw_conv.weight, 0, perm)
    _permute_bn(block.dw_bn, perm)
    _permute(block.project_conv.weight, 1, perm)
    if block.se is not None:
        _permute(block.se.reduce.weight, 1, perm)
        _permute(block.se.expand.weight, 0, perm)
        _permute(block.se.expand.bias, 0, perm)
        _sort_se_hidden(block.se.reduce, block.se.expand)
    return perm


def _sort_se_hidden(reduce: nn.Conv2d, expand: nn.Conv2d) -> None:
    # The reference sorts all hidden units at once (no bands), whatever the expand stage.
    importance = expand.weight.detach().double().abs().sum(dim=(0, 2, 3))
    order = torch.sort(importance, descending=True, stable=True).indices
    _permute(expand.weight, 1, order)
    _permute(reduce.weight, 0, order)
    if reduce.bias is not None:
        _permute(reduce.bias, 0, order)


def _permute_bn(bn: nn.BatchNorm2d, perm: torch.Tensor) -> None:
    for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
        if t is not None:
            _permute(t, 0, perm)


def _permute(t: torch.Tensor, dim: int, perm: torch.Tensor) -> None:
    """Reorder ``t`` along ``dim`` in place (the tensor object, and so a Parameter's identity, is kept)."""
    t.copy_(t.index_select(dim, perm.to(t.device)))
