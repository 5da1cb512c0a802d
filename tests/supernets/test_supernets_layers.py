"""Elastic layers: the Once-for-All kernel transform chain, channel slicing, BN statistics slices, static copies."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nasforge.supernets.layers import (
    DynamicBatchNorm2d,
    DynamicConv2d,
    DynamicLinear,
    DynamicMBConv,
    DynamicSqueezeExcite,
    ElasticDepth,
    MBConv,
    SqueezeExcite,
    make_divisible,
    mid_channels,
    se_hidden,
)

TOL = 1e-6


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).detach().abs().max())


def _flat_transform(w: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Apply a (k*k, k*k) matrix to every flattened k x k kernel, as F.linear does: w_flat @ matrix.T."""
    k = w.shape[-1]
    return (w.reshape(*w.shape[:2], k * k) @ matrix.T).reshape(w.shape)


@pytest.fixture
def dw() -> DynamicConv2d:
    return DynamicConv2d(12, 12, (3, 5, 7), stride=1, depthwise=True, kernel_transform=True)


# -- helpers ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "expected"), [(16, 16), (24 * 1.2, 32), (40 * 1.2, 48), (112 * 1.2, 136),
                                                 (960 * 1.2, 1152), (1280 * 1.2, 1536), (3, 8), (100, 104)])
def test_make_divisible(value, expected):
    assert make_divisible(value, 8) == expected


def test_mid_and_se_widths_follow_ofa():
    assert mid_channels(16, 6) == 96 and mid_channels(24, 4) == 96 and mid_channels(40, 3) == 120
    assert se_hidden(120) == 32 and se_hidden(72) == 24 and se_hidden(96) == 24


# -- elastic kernel -------------------------------------------------------------------------------------------
def test_kernel_transform_params_per_depthwise_block(dw):
    assert sum(p.numel() for p in dw.transforms.parameters()) == 25 * 25 + 9 * 9 == 706
    assert set(dw.transforms.keys()) == {"to5x5", "to3x3"}
    plain = DynamicConv2d(12, 12, (3, 5, 7), depthwise=True, kernel_transform=False)
    assert len(plain.transforms) == 0
    single = DynamicConv2d(12, 12, (3,), depthwise=True, kernel_transform=True)
    assert len(single.transforms) == 0


def test_identity_init_gives_centre_crops(dw):
    w = dw.weight.detach()
    k7 = dw.kernel(7, 12, 12).detach()
    k5 = dw.kernel(5, 12, 12).detach()
    k3 = dw.kernel(3, 12, 12).detach()
    assert k7.shape == (12, 1, 7, 7) and k5.shape == (12, 1, 5, 5) and k3.shape == (12, 1, 3, 3)
    assert torch.equal(k7, w)
    assert _max_diff(k5, w[:, :, 1:6, 1:6]) < TOL
    assert _max_diff(k3, k5[:, :, 1:4, 1:4]) < TOL
    assert _max_diff(k3, w[:, :, 2:5, 2:5]) < TOL


def test_kernel_chain_uses_transformed_5x5(dw):
    w = dw.weight.detach().clone()
    k3_before = dw.kernel(3, 12, 12).detach().clone()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        dw.transforms["to5x5"].add_(0.2 * torch.randn(25, 25, generator=gen))
    t5 = dw.transforms["to5x5"].detach()
    k5 = dw.kernel(5, 12, 12).detach()
    k3 = dw.kernel(3, 12, 12).detach()
    assert _max_diff(k5, _flat_transform(w[:, :, 1:6, 1:6], t5)) < 1e-5
    # the 3x3 kernel changed although only the 5x5 transform did: it is cut from the transformed 5x5
    assert _max_diff(k3, k3_before) > 1e-3
    assert _max_diff(k3, k5[:, :, 1:4, 1:4]) < 1e-5
    assert torch.equal(dw.kernel(7, 12, 12).detach(), w)  # the stored 7x7 is untouched
    # and the 3x3 transform applies on top of that crop
    with torch.no_grad():
        dw.transforms["to3x3"].add_(0.2 * torch.randn(9, 9, generator=gen))
    t3 = dw.transforms["to3x3"].detach()
    assert _max_diff(dw.kernel(3, 12, 12).detach(), _flat_transform(k5[:, :, 1:4, 1:4], t3)) < 1e-5


def test_small_kernel_gradients_reach_both_transforms(dw):
    dw.kernel(3, 12, 12).pow(2).sum().backward()
    assert float(dw.transforms["to5x5"].grad.abs().sum()) > 0
    assert float(dw.transforms["to3x3"].grad.abs().sum()) > 0
    grad = dw.weight.grad[:, :, :, :]
    assert float(grad[:, :, 2:5, 2:5].abs().sum()) > 0
    # identity transforms: the 3x3 only reads the centre 3x3 of the 7x7 weight
    border = grad.clone()
    border[:, :, 2:5, 2:5] = 0
    assert float(border.abs().sum()) == 0.0


def test_kernel_size_validation():
    conv = DynamicConv2d(4, 4, (3, 5), depthwise=True)
    with pytest.raises(ValueError, match="kernel size 7"):
        conv.kernel(7, 4, 4)
    with pytest.raises(ValueError, match="odd"):
        DynamicConv2d(4, 4, (3, 4))
    with pytest.raises(ValueError, match="depthwise"):
        DynamicConv2d(4, 8, (3,), depthwise=True)


@pytest.mark.parametrize(("k", "c", "stride"), [(7, 12, 1), (5, 8, 2), (3, 5, 1), (3, 12, 2)])
def test_depthwise_to_static_matches_dynamic(dw, k, c, stride):
    dw.stride = stride
    with torch.no_grad():
        dw.transforms["to5x5"].add_(0.1 * torch.randn(25, 25))
        dw.transforms["to3x3"].add_(0.1 * torch.randn(9, 9))
    x = torch.randn(2, c, 9, 9)
    static = dw.to_static(c, kernel_size=k)
    assert isinstance(static, nn.Conv2d) and static.groups == c and static.kernel_size == (k, k)
    assert static.padding == (k // 2, k // 2) and static.stride == (stride, stride)
    with torch.no_grad():
        y_dyn, y_static = dw(x, kernel_size=k), static(x)
    assert y_dyn.shape == (2, c, (9 - 1) // stride + 1, (9 - 1) // stride + 1)
    assert _max_diff(y_dyn, y_static) < TOL


@pytest.mark.parametrize(("cin", "cout", "bias"), [(8, 16, False), (5, 12, True), (3, 1, True)])
def test_pointwise_to_static_matches_dynamic(cin, cout, bias):
    conv = DynamicConv2d(8, 16, (1,), bias=bias)
    if bias:
        with torch.no_grad():
            conv.bias.normal_()
    x = torch.randn(2, cin, 4, 4)
    static = conv.to_static(cin, cout)
    assert (static.in_channels, static.out_channels) == (cin, cout)
    assert torch.equal(static.weight, conv.weight[:cout, :cin])
    with torch.no_grad():
        assert _max_diff(conv(x, out_channels=cout), static(x)) < TOL


# -- batch norm -------------------------------------------------------------------------------------------------
def _randomised_bn(n: int = 8, momentum: float | None = 0.1) -> DynamicBatchNorm2d:
    bn = DynamicBatchNorm2d(n, momentum=momentum)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(n))
        bn.running_var.copy_(0.5 + torch.rand(n))
        bn.weight.copy_(1 + 0.2 * torch.randn(n))
        bn.bias.copy_(0.2 * torch.randn(n))
    return bn


def test_bn_train_forward_updates_only_the_active_slice():
    bn = _randomised_bn(8)
    mean0, var0 = bn.running_mean.clone(), bn.running_var.clone()
    x = torch.randn(6, 5, 4, 4) * 2 + 3
    y = bn.train()(x)
    batch_mean = x.mean((0, 2, 3))
    batch_var_unbiased = x.var((0, 2, 3), unbiased=True)
    assert _max_diff(bn.running_mean[:5], 0.9 * mean0[:5] + 0.1 * batch_mean) < 1e-5
    assert _max_diff(bn.running_var[:5], 0.9 * var0[:5] + 0.1 * batch_var_unbiased) < 1e-5
    assert torch.equal(bn.running_mean[5:], mean0[5:]) and torch.equal(bn.running_var[5:], var0[5:])
    assert int(bn.num_batches_tracked) == 1
    # the output is normalised with batch statistics and the first 5 affine parameters
    expected = (x - batch_mean[None, :, None, None]) / torch.sqrt(x.var((0, 2, 3), unbiased=False) + bn.eps)[
        None, :, None, None
    ] * bn.weight[:5, None, None] + bn.bias[:5, None, None]
    assert _max_diff(y, expected) < 1e-4


def test_bn_cumulative_momentum_none():
    bn = _randomised_bn(8, momentum=None)
    xs = [torch.randn(4, 3, 2, 2) for _ in range(3)]
    bn.train()
    for x in xs:
        bn(x)
    expected = torch.stack([x.mean((0, 2, 3)) for x in xs]).mean(0)
    assert _max_diff(bn.running_mean[:3], expected) < 1e-5


def test_bn_full_width_behaves_like_batchnorm():
    bn = _randomised_bn(6)
    ref = nn.BatchNorm2d(6)
    ref.load_state_dict(bn.state_dict())
    x = torch.randn(4, 6, 3, 3)
    assert _max_diff(bn.train()(x), ref.train()(x)) < 1e-6
    assert _max_diff(bn.running_mean, ref.running_mean) < 1e-7
    assert _max_diff(bn.eval()(x), ref.eval()(x)) < 1e-6


@pytest.mark.parametrize("c", [3, 8])
def test_bn_to_static_matches_eval(c):
    bn = _randomised_bn(8).eval()
    x = torch.randn(2, c, 3, 3)
    static = bn.to_static(c).eval()
    assert static.num_features == c
    assert torch.equal(static.running_mean, bn.running_mean[:c]) and torch.equal(static.weight, bn.weight[:c])
    with torch.no_grad():
        y = bn(x)
        assert _max_diff(y, static(x)) < TOL
        manual = (x - bn.running_mean[None, :c, None, None]) / torch.sqrt(bn.running_var[None, :c, None, None] + bn.eps)
        manual = manual * bn.weight[None, :c, None, None] + bn.bias[None, :c, None, None]
    assert _max_diff(y, manual) < 1e-5


# -- linear and squeeze-excite ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("fin", "fout"), [(16, 10), (12, 7), (1, 1)])
def test_linear_to_static(fin, fout):
    lin = DynamicLinear(16, 10)
    with torch.no_grad():
        lin.bias.normal_()
    x = torch.randn(3, fin)
    static = lin.to_static(fin, fout)
    assert (static.in_features, static.out_features) == (fin, fout)
    with torch.no_grad():
        y = lin(x, out_features=fout)
        assert y.shape == (3, fout)
        assert _max_diff(y, static(x)) < TOL
        assert _max_diff(y, x @ lin.weight[:fout, :fin].T + lin.bias[:fout]) < 1e-5


@pytest.mark.parametrize("c", [48, 32, 24])
def test_squeeze_excite_to_static(c):
    se = DynamicSqueezeExcite(48)
    with torch.no_grad():
        for p in se.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(2, c, 5, 5)
    static = se.to_static(c)
    assert isinstance(static, SqueezeExcite)
    assert static.reduce.out_channels == se_hidden(c) and static.reduce.in_channels == c
    with torch.no_grad():
        y = se(x)
        assert _max_diff(y, static(x)) < TOL
        # the gate is hard-sigmoid of the sliced bottleneck
        h = se_hidden(c)
        gate = F.hardsigmoid(
            F.conv2d(F.relu(F.conv2d(x.mean((2, 3), keepdim=True), se.reduce.weight[:h, :c], se.reduce.bias[:h])),
                     se.expand.weight[:c, :h], se.expand.bias[:c])
        )
        assert _max_diff(y, x * gate) < 1e-5
        assert _max_diff(y, x) > 1e-3  # the gate is not the identity


# -- depth ----------------------------------------------------------------------------------------------------
class _AddConst(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x + self.value


def test_elastic_depth_runs_only_the_first_blocks():
    blocks = [_AddConst(10.0**i) for i in range(4)]
    unit = ElasticDepth(blocks)
    assert unit.max_depth == 4 and unit.active_depth == 4
    x = torch.zeros(1)
    assert float(unit(x)) == 1111.0
    for d, expected in [(1, 1.0), (2, 11.0), (3, 111.0)]:
        unit.set_depth(d)
        assert unit.active_depth == d
        assert float(unit(x)) == expected
    assert [b.calls for b in blocks] == [4, 3, 2, 1]
    for bad in (0, 5, -1):
        with pytest.raises(ValueError, match="outside 1..4"):
            unit.set_depth(bad)
    assert unit.active_depth == 3


# -- MBConv ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("stride", "use_se", "cout"), [(1, True, 16), (2, False, 24)])
def test_mbconv_to_static_matches_for_every_kernel_and_expand(perturb, stride, use_se, cout):
    block = DynamicMBConv(16, cout, (3, 5, 7), (3, 4, 6), stride=stride, act="hswish", use_se=use_se,
                          residual=stride == 1 and cout == 16)
    perturb(block, seed=1)
    block.eval()
    x = torch.randn(2, 16, 7, 7)
    outputs = []
    for k, e in itertools.product((3, 5, 7), (3, 4, 6)):
        block.active_kernel, block.active_expand = k, e
        static = block.to_static().eval()
        assert isinstance(static, MBConv)
        mid = mid_channels(16, e)
        assert static.expand[0].out_channels == mid and static.depthwise[0].kernel_size == (k, k)
        assert (static.se is not None) == use_se and static.residual == block.residual
        with torch.no_grad():
            y = block(x)
            assert _max_diff(y, static(x)) < 1e-5
        outputs.append(y)
    # different (k, e) really give different functions
    assert min(_max_diff(a, b) for a, b in itertools.combinations(outputs, 2)) > 1e-4


def test_mbconv_rejects_bad_residual():
    with pytest.raises(ValueError, match="residual"):
        DynamicMBConv(16, 24, (3,), (3,), stride=1, residual=True)
    with pytest.raises(ValueError, match="residual"):
        DynamicMBConv(16, 16, (3,), (3,), stride=2, residual=True)
