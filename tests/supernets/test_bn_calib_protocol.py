"""BN recalibration protocol on sliced (dynamic) BN and across unequal batches, checked against hand-computed values.

``test_supernets_bn.py`` covers static networks (weighted means, biased variances, alternatives told apart), modes,
and which slices of a supernet change; this file pins the numbers for a dynamic BN whose active slice is narrower
than the layer, and the weights that an image limit falling inside a batch gives.
"""

from __future__ import annotations

import torch
from torch import nn

from nasforge.supernets import recalibrate_bn
from nasforge.supernets.layers import DynamicBatchNorm2d, DynamicConv2d


class _Sliced(nn.Module):
    """A 1x1 DynamicConv2d producing ``active`` of 8 channels, then a DynamicBatchNorm2d of 8 features."""

    def __init__(self, active: int) -> None:
        super().__init__()
        self.conv = DynamicConv2d(3, 8, bias=True)
        self.bn = DynamicBatchNorm2d(8)
        self.active = active
        self.inputs: list[int] = []
        with torch.no_grad():
            self.conv.bias.copy_(torch.linspace(-2.0, 2.0, 8))
            self.bn.running_mean.fill_(42.0)
            self.bn.running_var.fill_(7.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.shape[0])
        return self.bn(self.conv(x, out_channels=self.active))


def _batches(sizes: list[int]) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(n, 3, 3, 5, generator=gen) * (1 + k) + 2 * k for k, n in enumerate(sizes)]


def _weighted(model: _Sliced, batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch-size-weighted mean of per-batch means and of per-batch biased variances of the BN input."""
    sizes, means, variances = [], [], []
    with torch.no_grad():
        for x in batches:
            h = model.conv(x, out_channels=model.active).double()
            sizes.append(x.shape[0])
            means.append(h.mean((0, 2, 3)))
            variances.append(((h - h.mean((0, 2, 3), keepdim=True)) ** 2).mean((0, 2, 3)))
    n = sum(sizes)
    return sum(s * m for s, m in zip(sizes, means, strict=True)) / n, sum(
        s * v for s, v in zip(sizes, variances, strict=True)
    ) / n


def test_dynamic_slice_gets_weighted_means_and_biased_variances():
    model = _Sliced(active=5)
    batches = _batches([1, 4, 7])
    mean, var = _weighted(model, batches)
    assert recalibrate_bn(model, batches) == 12
    bn = model.bn
    torch.testing.assert_close(bn.running_mean[:5].double(), mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(bn.running_var[:5].double(), var, rtol=1e-6, atol=1e-6)
    # the three inactive channels keep their old statistics
    assert torch.equal(bn.running_mean[5:], torch.full((3,), 42.0))
    assert torch.equal(bn.running_var[5:], torch.full((3,), 7.0))
    # neither the unweighted mean of the batch means nor the variance of the pooled data
    pooled = torch.cat([model.conv(x, out_channels=5) for x in batches]).detach().double()
    assert float((bn.running_var[:5].double() - pooled.var((0, 2, 3), unbiased=False)).abs().max()) > 0.1
    unweighted = torch.stack([model.conv(x, out_channels=5).detach().double().mean((0, 2, 3)) for x in batches])
    assert float((bn.running_mean[:5].double() - unweighted.mean(0)).abs().max()) > 0.1


def test_image_limit_inside_a_batch_weights_by_the_images_used():
    model = _Sliced(active=8)
    batches = _batches([3, 6, 5])
    used = [batches[0], batches[1][:4]]  # 3 + 4 = 7 images: the second batch is cut, the third never runs
    mean, var = _weighted(model, used)
    model.inputs.clear()
    assert recalibrate_bn(model, batches, max_images=7) == 7
    assert model.inputs == [3, 4]
    torch.testing.assert_close(model.bn.running_mean.double(), mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(model.bn.running_var.double(), var, rtol=1e-6, atol=1e-6)


def test_a_limit_on_a_batch_boundary_forwards_whole_batches_only():
    model = _Sliced(active=6)
    assert recalibrate_bn(model, _batches([2, 3, 4]), max_images=5) == 5
    assert model.inputs == [2, 3]


def test_result_does_not_depend_on_momentum_or_previous_statistics():
    batches = _batches([2, 5])
    a, b = _Sliced(active=5), _Sliced(active=5)
    b.load_state_dict(a.state_dict())
    b.bn.momentum = None  # cumulative averaging in plain PyTorch training would give different numbers
    with torch.no_grad():
        b.bn.running_mean[:5].fill_(-3.0)
        b.bn.num_batches_tracked.fill_(100)
    recalibrate_bn(a, batches)
    recalibrate_bn(b, batches)
    assert torch.equal(a.bn.running_mean[:5], b.bn.running_mean[:5])
    assert torch.equal(a.bn.running_var[:5], b.bn.running_var[:5])
