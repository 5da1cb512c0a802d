"""Supernets: the contract every registered supernet meets (moved from tests/supernets/test_supernets_mbv3.py)."""

from __future__ import annotations

import random

import pytest
import torch
from supernet_helpers import cheap_arch as _cheap
from supernet_helpers import logits as _logits

from nasforge.supernets import Supernet, count_macs, count_params, create_supernet, list_supernets

PARITY_TOL = 1e-5
N_RANDOM = 5


# -- the contract ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list_supernets())
def test_supernet_contract(name, perturb):
    net = create_supernet(name)
    space = net.space
    assert isinstance(net, Supernet)
    assert space.validate(space.largest()) == space.largest() and space.validate(space.smallest()) == space.smallest()
    assert net.active == space.largest()
    assert net.input_shape() == (net.in_channels, net.default_resolution, net.default_resolution)

    # rebuilding from config_dict gives the same network shape
    twin = create_supernet(name, **net.config_dict())
    assert twin.space == space and count_params(twin) == count_params(net)
    assert {k: v.shape for k, v in twin.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}

    # BN is not the identity, kernel transforms are not identities, and some train-mode steps moved the stats
    perturb(net, seed=2)
    rng = random.Random(0)
    net.train()
    for _ in range(2):
        arch = net.set_active(_cheap(net, space.sample(rng)))
        net(torch.randn(4, *net.input_shape(arch)))

    net.eval()
    archs = [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(N_RANDOM)]
    for arch in map(lambda a: _cheap(net, a), archs):
        active = net.set_active(arch)
        assert active == arch and net.active == arch
        x = torch.randn(2, *net.input_shape(arch))
        y_net = _logits(net, x)
        sub = net.extract(arch)
        assert net.active == arch
        assert not sub.training
        y_sub = _logits(sub, x)
        assert y_net.shape == (2, net.config.num_classes)
        assert float((y_net - y_sub).abs().max()) < PARITY_TOL, arch
        assert float(y_net.abs().max()) > 1e-3  # not trivially zero
        assert net.params(arch) == count_params(sub)
        assert net.macs(arch) == count_macs(sub, net.input_shape(arch))
