"""Evaluate subnets the way they will be deployed: extract, recalibrate BN, then measure on held-out data."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nasforge.supernets.arch import Architecture
from nasforge.supernets.base import Supernet
from nasforge.supernets.bn_calib import recalibrate_bn

__all__ = ["resize", "accuracy", "calibrated_subnet", "evaluate_arch"]


def resize(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Bilinearly resize a batch ``[N, C, H, W]`` to ``resolution`` x ``resolution`` (no-op if equal)."""
    if x.shape[-1] == resolution and x.shape[-2] == resolution:
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)


def _batches(x: torch.Tensor, batch_size: int, resolution: int) -> Iterator[torch.Tensor]:
    for i in range(0, x.shape[0], batch_size):
        yield resize(x[i : i + batch_size], resolution)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, resolution: int, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on images ``x`` resized to ``resolution``."""
    was = model.training
    model.eval()
    correct = 0
    for i, xb in enumerate(_batches(x, batch_size, resolution)):
        correct += int((model(xb).argmax(1) == y[i * batch_size : (i + 1) * batch_size]).sum())
    model.train(was)
    return correct / max(1, len(y))


def calibrated_subnet(
    net: Supernet, arch: Architecture | Mapping[str, Any], calib_x: torch.Tensor, max_images: int = 2000,
    batch_size: int = 200,
) -> nn.Module:
    """The static subnet ``arch`` with BN statistics recalibrated on ``calib_x`` (eval mode)."""
    arch = net.space.canonical(arch)
    sub = net.extract(arch)
    r = net.resolution(arch)
    recalibrate_bn(sub, _batches(calib_x[:max_images], batch_size, r), max_images=max_images)
    return sub.eval()


def evaluate_arch(
    net: Supernet, arch: Architecture | Mapping[str, Any], calib_x: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
    max_calib: int = 2000,
) -> tuple[float, nn.Module]:
    """``(accuracy, calibrated static subnet)`` of ``arch`` on ``(x, y)``."""
    sub = calibrated_subnet(net, arch, calib_x, max_calib)
    return accuracy(sub, x, y, net.resolution(net.space.canonical(arch))), sub
