"""Helpers shared by the supernet tests (tests/supernets) and the supernet contract test (tests/contract)."""

from __future__ import annotations

import torch
from torch import nn

from nasforge.supernets import Supernet


def perturb_net(net: nn.Module, seed: int = 0, scale: float = 0.1) -> None:
    """Make every BN a non-identity (random running stats and affine) and every kernel transform non-identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * scale)
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                m.weight.copy_(1.0 + torch.randn(n, generator=gen) * scale)
                m.bias.copy_(torch.randn(n, generator=gen) * scale)
        for name, p in net.named_parameters():
            if "transforms" in name:
                p.add_(torch.randn(p.shape, generator=gen) * scale)


def cheap_arch(net: Supernet, arch):
    """OFA members run at their smallest resolution (128) to keep the contract test cheap on CPU."""
    arch = net.space.canonical(arch)
    if "r" in net.space.names and net.space.dim("r").choices[0] >= 64:
        arch = arch.replace(r=net.space.dim("r").choices[0])
    return arch


def logits(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The network's output on ``x`` without autograd."""
    with torch.no_grad():
        return net(x)
