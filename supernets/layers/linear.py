"""Dynamic linear layer: elastic input and output features."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DynamicLinear"]


class DynamicLinear(nn.Module):
    """A linear layer using ``weight[:out, :in]`` where ``in`` is the input's last dimension."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor, out_features: int | None = None) -> torch.Tensor:
        out_f = out_features or self.out_features
        b = self.bias[:out_f] if self.bias is not None else None
        return F.linear(x, self.weight[:out_f, : x.shape[-1]], b)

    def to_static(self, in_features: int, out_features: int | None = None) -> nn.Linear:
        """A plain ``nn.Linear`` with a copy of the active weights."""
        out_f = out_features or self.out_features
        lin = nn.Linear(in_features, out_f, bias=self.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(self.weight[:out_f, :in_features])
            if self.bias is not None:
                lin.bias.copy_(self.bias[:out_f])
        return lin
