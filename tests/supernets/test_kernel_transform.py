"""Once-for-All elastic kernel inside whole supernets: 706 transform parameters per elastic block, the 7 -> 5 -> 3
chain computed by hand, which matrices each kernel size trains, and the kernels that extracted subnets carry.

Layer-level basics (identity init, the 3x3 cut from the transformed 5x5, to_static parity) are in
``test_supernets_layers.py``.
"""

from __future__ import annotations

import pytest
import torch

from nasforge.supernets import count_params, create_supernet, list_supernets
from nasforge.supernets.layers import DynamicConv2d

OFA_KERNELS = (3, 5, 7)
MEMBERS = [n for n in list_supernets() if getattr(create_supernet(n).config, "kernel_sizes", None) == OFA_KERNELS]


def _by_hand(w7: torch.Tensor, t5: torch.Tensor, t3: torch.Tensor, k: int) -> torch.Tensor:
    """The OFA chain with explicit index arithmetic: out[c, i] = sum_j crop[c, j] * T[i, j] per flattened kernel."""
    if k == 7:
        return w7
    c = w7.shape[0]
    k5 = torch.einsum("cj,ij->ci", w7[:, 0, 1:6, 1:6].reshape(c, 25), t5).reshape(c, 1, 5, 5)
    if k == 5:
        return k5
    return torch.einsum("cj,ij->ci", k5[:, 0, 1:4, 1:4].reshape(c, 9), t3).reshape(c, 1, 3, 3)


def _elastic_dw(net) -> list[DynamicConv2d]:
    return [b.dw_conv for u in net.units for b in u.blocks]


def test_ofa_type_members_are_found():
    assert {"ofa-mbv3-w1.0", "ofa-mbv3-w1.2", "ofa-mbv3-cifar", "mbv3-small"} <= set(MEMBERS)


@pytest.mark.parametrize("name", MEMBERS)
def test_706_transform_parameters_per_elastic_block(name):
    net = create_supernet(name)
    dws = _elastic_dw(net)
    assert len(dws) == len(net.config.stages) * net.config.max_depth
    for dw in dws:
        assert {k: tuple(p.shape) for k, p in dw.transforms.items()} == {"to5x5": (25, 25), "to3x3": (9, 9)}
        assert torch.equal(dw.transforms["to5x5"], torch.eye(25)) and torch.equal(dw.transforms["to3x3"], torch.eye(9))
    transform_params = sum(p.numel() for n, p in net.named_parameters() if "transforms" in n)
    assert transform_params == 706 * len(dws)
    # the fixed first block (k3 only) has none, and extracted subnets carry none
    assert net.first_block is None or len(net.first_block.dw_conv.transforms) == 0
    assert count_params(net) - net.params(net.space.largest()) == transform_params


def test_active_kernels_are_the_matrix_chain_computed_by_hand():
    gen = torch.Generator().manual_seed(0)
    dw = DynamicConv2d(6, 6, OFA_KERNELS, depthwise=True, kernel_transform=True)
    with torch.no_grad():
        dw.transforms["to5x5"].add_(0.3 * torch.randn(25, 25, generator=gen))
        dw.transforms["to3x3"].add_(0.3 * torch.randn(9, 9, generator=gen))
    w7, t5, t3 = (t.detach() for t in (dw.weight, dw.transforms["to5x5"], dw.transforms["to3x3"]))
    for k in OFA_KERNELS:
        torch.testing.assert_close(dw.kernel(k, 6, 6).detach(), _by_hand(w7, t5, t3, k), rtol=1e-5, atol=1e-6)
    # a 3x3 cut straight from the 7x7 (skipping the transformed 5x5) is a different kernel
    direct = torch.einsum("cj,ij->ci", w7[:, 0, 2:5, 2:5].reshape(6, 9), t3).reshape(6, 1, 3, 3)
    assert float((dw.kernel(3, 6, 6).detach() - direct).abs().max()) > 1e-2
    # one matrix shared by all channels: channel c of 4 active channels equals channel c of all 6
    assert torch.equal(dw.kernel(3, 4, 4).detach(), dw.kernel(3, 6, 6).detach()[:4])


@pytest.mark.parametrize(("k", "expect5", "expect3"), [(7, False, False), (5, True, False), (3, True, True)])
def test_gradients_reach_exactly_the_matrices_on_the_path(k, expect5, expect3):
    dw = DynamicConv2d(6, 6, OFA_KERNELS, depthwise=True, kernel_transform=True)
    x = torch.randn(2, 6, 9, 9)
    dw(x, kernel_size=k).square().sum().backward()
    for key, expected in (("to5x5", expect5), ("to3x3", expect3)):
        grad = dw.transforms[key].grad
        reached = grad is not None and float(grad.abs().sum()) > 0
        assert reached == expected, (k, key)
    assert float(dw.weight.grad.abs().sum()) > 0


def test_supernet_backward_trains_each_active_blocks_own_matrices(tiny_options):
    # two units of at most two blocks, all active: one block per kernel size (and a second 3x3)
    net = create_supernet("mbv3-small", **{**tiny_options, "kernel_sizes": OFA_KERNELS, "depths": (2,)})
    ks = [3, 5, 7, 3]
    net.set_active(net.space.largest().replace(ks=ks))
    net.train()(torch.randn(4, *net.input_shape())).logsumexp(1).sum().backward()
    for dw, k in zip(_elastic_dw(net), ks, strict=True):
        g5, g3 = dw.transforms["to5x5"].grad, dw.transforms["to3x3"].grad
        assert (g5 is not None and float(g5.abs().sum()) > 0) == (k <= 5), k
        assert (g3 is not None and float(g3.abs().sum()) > 0) == (k == 3), k


@pytest.mark.parametrize("name", ["ofa-mbv3-cifar", "mbv3-small"])
def test_extracted_kernels_are_the_transformed_crops(name, perturb):
    net = create_supernet(name)
    perturb(net, seed=3, scale=0.2)  # non-identity matrices
    arch = net.space.largest().replace(ks=[(3, 5, 7)[i % 3] for i in range(len(net.space.largest()["ks"]))])
    sub = net.extract(arch)
    static_dw = [blk.depthwise[0] for blk in sub.blocks][1 if net.first_block is not None else 0 :]
    for dw, conv, k in zip(_elastic_dw(net), static_dw, arch["ks"], strict=True):
        expected = _by_hand(dw.weight.detach(), dw.transforms["to5x5"].detach(), dw.transforms["to3x3"].detach(), k)
        assert conv.kernel_size == (k, k) and conv.padding == (k // 2, k // 2)
        torch.testing.assert_close(conv.weight.detach(), expected, rtol=1e-5, atol=1e-6)
