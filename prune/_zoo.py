"""Reference model definitions to prune: CIFAR ResNets and a MobileNetV2-style net, built from plain data.

A zoo model is rebuilt from its name and keyword arguments, so a pruned model can be saved as
``(name, kwargs, pruning history, tensors)`` and loaded without unpickling any class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from nasforge.errors import ConfigError
from nasforge.registry import Registry

__all__ = ["register_model", "list_models", "create_model", "BasicBlock", "CifarResNet", "MobileNetV2S"]

_MODELS: Registry[Callable[..., nn.Module]] = Registry("zoo model")


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """``@register_model(name)`` adds a factory ``f(num_classes=..., in_channels=..., **kw) -> nn.Module``."""
    return _MODELS.decorator(name)


def list_models() -> list[str]:
    """Names of the registered zoo models."""
    return _MODELS.names()


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build zoo model ``name`` (fresh weights) with ``kwargs`` (e.g. ``num_classes``, ``in_channels``).

    Raises:
        ConfigError: unknown name or an argument the factory does not take.
    """
    factory = _MODELS.get(name)
    try:
        return factory(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"zoo model {name!r}: {exc}; see help(nasforge.prune.create_model)") from None


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual add; a 1x1 conv-BN projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR ResNet of He et al. (2016): depth 6n+2, three stages of n basic blocks.

    Uses projection (conv 1x1 + BN) shortcuts where the shape changes, as most pruning papers do.
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3,
                 widths: tuple[int, int, int] | list[int] = (16, 32, 64)) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ConfigError(f"ResNet depth {depth} is not 6n+2 with n >= 1; use 8, 14, 20, 32, 44, 56, 110")
        if len(widths) != 3 or any(int(w) < 1 for w in widths):
            raise ConfigError(f"widths {widths!r} must be three positive channel counts, e.g. (16, 32, 64)")
        n = (depth - 2) // 6
        w = [int(v) for v in widths]
        self.conv1 = nn.Conv2d(in_channels, w[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w[0])
        blocks: list[nn.Module] = []
        cin = w[0]
        for stage, cout in enumerate(w):
            for i in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if stage > 0 and i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(torch.flatten(self.pool(x), 1))


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                   nn.ReLU6(), nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out


def _make_divisible(v: float, divisor: int = 8) -> int:
    return max(divisor, int(v + divisor / 2) // divisor * divisor)


class MobileNetV2S(nn.Module):
    """A MobileNetV2-style net for small images: inverted residuals with depthwise 3x3 convs, stride-1 stem.

    The stage table is MobileNetV2's with two of the five stride-2 stages turned into stride 1, so 32x32 inputs
    end at 4x4 (as in the usual CIFAR ports).
    """

    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0,
                 last_channels: int = 1280) -> None:
        super().__init__()
        if not 0.1 <= width_mult <= 4:
            raise ConfigError(f"width_mult {width_mult} is out of range; use a value in [0.1, 4], e.g. 0.5")
        cin = _make_divisible(32 * width_mult)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, cin, 3, 1, 1, bias=False), nn.BatchNorm2d(cin),
                                   nn.ReLU6()]
        for expand, c, n, s in self.SETTINGS:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                layers.append(_InvertedResidual(cin, cout, s if i == 0 else 1, expand))
                cin = cout
        last = _make_divisible(last_channels * max(1.0, width_mult))
        layers += [nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def _resnet(depth: int) -> Callable[..., nn.Module]:
    def factory(num_classes: int = 10, in_channels: int = 3, widths: tuple[int, int, int] | list[int] = (16, 32, 64)
                ) -> nn.Module:
        return CifarResNet(depth, num_classes, in_channels, widths)

    factory.__doc__ = f"CIFAR ResNet-{depth} (projection shortcuts)."
    return factory


for _depth in (8, 14, 20, 32, 44, 56, 110):
    register_model(f"resnet{_depth}")(_resnet(_depth))


@register_model("mobilenetv2")
def _mobilenetv2(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0,
                 last_channels: int = 1280) -> nn.Module:
    """MobileNetV2-style net for small images."""
    return MobileNetV2S(num_classes, in_channels, width_mult, last_channels)
