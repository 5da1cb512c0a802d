"""Elastic depth: a stack of blocks of which only the first ``active_depth`` run."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["ElasticDepth"]


class ElasticDepth(nn.Module):
    """Runs the first ``active_depth`` blocks; the trailing blocks are skipped (Once-for-All elastic depth)."""

    def __init__(self, blocks: Iterable[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.active_depth = len(self.blocks)

    @property
    def max_depth(self) -> int:
        return len(self.blocks)

    def set_depth(self, depth: int) -> None:
        if not 1 <= depth <= len(self.blocks):
            raise ValueError(f"depth {depth} is outside 1..{len(self.blocks)}")
        self.active_depth = depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks[: self.active_depth]:
            x = block(x)
        return x
