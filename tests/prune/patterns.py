"""Small models with the dependency patterns structured pruning must get right (or refuse)."""

from __future__ import annotations

import torch
from torch import nn


def _cbr(cin: int, cout: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


class _Stem(nn.Module):
    """A healthy prunable trunk in front of each pattern, so a target stays reachable when the pattern is skipped."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 24)
        self.mid = _cbr(24, 24)


class ConcatGrouped(_Stem):
    """Two branches concatenated into a grouped conv (Torch-Pruning mis-indexes the groups)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = _cbr(24, 8), _cbr(24, 8)
        self.g = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mid(self.stem(x))
        y = self.g(torch.cat([self.a(x), self.b(x)], 1))
        return self.fc(y.mean((2, 3)))


class ChunkAdd(_Stem):
    """A conv output chunked in two halves that are added back together."""

    def __init__(self) -> None:
        super().__init__()
        self.a = _cbr(24, 16)
        self.b = _cbr(8, 8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mid(self.stem(x))
        u, v = torch.chunk(self.a(x), 2, 1)
        return self.fc((self.b(u) + v).mean((2, 3)))


class HardSplit(_Stem):
    """``torch.split`` with hard-coded sizes: any pruning of the split tensor breaks the forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.a = _cbr(24, 16)
        self.b = _cbr(8, 8)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mid(self.stem(x))
        u, v = torch.split(self.a(x), [8, 8], 1)
        return self.fc(torch.cat([self.b(u), v], 1).mean((2, 3)))


class ConcatNet(_Stem):
    """A plain concat of two branches (supported: pruning maps each branch's channels into the concat)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = _cbr(24, 12), _cbr(24, 12)
        self.c = _cbr(24, 16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mid(self.stem(x))
        return self.fc(self.c(torch.cat([self.a(x), self.b(x)], 1)).mean((2, 3)))


class DepthwiseNet(_Stem):
    """Depthwise conv between two pointwise convs, with a residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(24, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU())
        self.dw = _cbr(48, 48, groups=48)
        self.project = nn.Sequential(nn.Conv2d(48, 24, 1, bias=False), nn.BatchNorm2d(24))
        self.fc = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mid(self.stem(x))
        x = x + self.project(self.dw(self.expand(x)))
        return self.fc(x.mean((2, 3)))


class TinyViT(nn.Module):
    """Patch embedding + one Transformer encoder layer (multi-head attention, LayerNorm, MLP) + classifier."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, 4)
        self.encoder = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True)
        self.fc = nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        return self.fc(self.encoder(tokens).mean(1))


SUPPORTED = {"concat": ConcatNet, "depthwise": DepthwiseNet}
UNSUPPORTED = {"concat-grouped": (ConcatGrouped, {"a.0", "b.0"}), "chunk-add": (ChunkAdd, {"a.0"}),
               "hard-split": (HardSplit, {"a.0"})}
