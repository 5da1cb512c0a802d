"""Shared models and exported files for the nasforge.export tests (small, so the suite stays fast)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from nasforge.export import export_onnx

INPUT_SHAPE = (3, 16, 16)


class SqueezeExcite(nn.Module):
    """SE-like block: global average pool, two 1x1 convs, hard-sigmoid gate, multiply."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels // 2, 1)
        self.expand = nn.Conv2d(channels // 2, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = x.mean((2, 3), keepdim=True)
        gate = nn.functional.hardsigmoid(self.expand(torch.relu(self.reduce(gate))))
        return x * gate


class SmallNet(nn.Module):
    """Conv+BN+Hardswish stem, depthwise conv block, SE, global pool, Linear head."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.Hardswish())
        self.depthwise = nn.Sequential(
            nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False), nn.BatchNorm2d(8), nn.Hardswish()
        )
        self.se = SqueezeExcite(8)
        self.head = nn.Linear(8, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.se(self.depthwise(self.stem(image)))
        return self.head(x.mean((2, 3)))


def _make_net(seed: int = 0) -> SmallNet:
    """A SmallNet with seeded weights and non-trivial BatchNorm statistics, left in train mode."""
    torch.manual_seed(seed)
    net = SmallNet()
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return net.train()


@pytest.fixture(scope="session")
def make_net() -> Callable[..., SmallNet]:
    """Factory for seeded SmallNets: ``make_net(seed=0)``."""
    return _make_net


@pytest.fixture(scope="session")
def input_shape() -> tuple[int, ...]:
    """Shape of one sample (no batch dim)."""
    return INPUT_SHAPE


@pytest.fixture
def example() -> torch.Tensor:
    """One input of shape (1, *INPUT_SHAPE)."""
    return torch.randn((1, *INPUT_SHAPE), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def static_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmallNet exported (torchscript, fast) with a fixed batch of 1."""
    path = tmp_path_factory.mktemp("static") / "net.onnx"
    export_onnx(_make_net(), torch.randn(1, *INPUT_SHAPE), path, exporter="torchscript")
    return path


@pytest.fixture(scope="module")
def dynamic_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmallNet exported (torchscript, fast) with a dynamic batch dim."""
    path = tmp_path_factory.mktemp("dynamic") / "net.onnx"
    export_onnx(_make_net(), torch.randn(1, *INPUT_SHAPE), path, exporter="torchscript", dynamic_batch=True)
    return path
