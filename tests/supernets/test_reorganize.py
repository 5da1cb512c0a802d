"""Channel re-organisation (Once-for-All): the largest subnet keeps its function, important channels move first,
earlier widths keep their channels at later expand stages, and extraction still matches the dynamic supernet."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from nasforge.supernets import ElasticMobileNetV3, create_supernet
from nasforge.supernets.layers import DynamicMBConv, mid_channels
from nasforge.supernets.reorganize import band_sort, middle_importance, reorganize_block, reorganize_channels

# (member, input resolution used here): OFA runs at 64x64 to stay cheap; the network accepts any size.
MEMBERS = [("mbv3-small", 16), ("ofa-mbv3-w1.0", 64)]


def _net(name: str, perturb, seed: int = 0) -> ElasticMobileNetV3:
    torch.manual_seed(seed)
    net = create_supernet(name, dropout=0.0)  # no dropout: train-mode outputs are deterministic
    perturb(net, seed=seed)
    assert isinstance(net, ElasticMobileNetV3)
    return net


def _blocks(net: ElasticMobileNetV3) -> list[DynamicMBConv]:
    return [b for unit in net.units for b in unit.blocks]


def _uniform_expand(net: ElasticMobileNetV3, e: int):
    big = net.space.largest()
    return big.replace(e=[e] * len(big["e"]))


def _out(net: torch.nn.Module, x: torch.Tensor, train: bool) -> torch.Tensor:
    net.train(train)
    with torch.no_grad():
        return net(x)


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max())


@pytest.mark.parametrize(("name", "res"), MEMBERS)
def test_largest_subnet_is_unchanged_and_smaller_ones_change(name, res, perturb):
    net = _net(name, perturb)
    ref = copy.deepcopy(net)
    x = torch.randn(4, net.in_channels, res, res)
    reorganize_channels(net, expand_stage=0)
    small = _uniform_expand(net, min(net.config.expand_ratios))
    for train in (False, True):
        for m in (net, ref):
            m.set_active(m.space.largest())
        y_ref, y = _out(ref, x, train), _out(net, x, train)
        assert float(y_ref.abs().max()) > 1e-2
        assert _diff(y, y_ref) < 1e-5, train
        for m in (net, ref):
            m.set_active(small)
        assert _diff(_out(net, x, train), _out(ref, x, train)) > 1e-3, train


def test_train_mode_statistics_are_permuted_with_the_channels(perturb):
    net = _net("mbv3-small", perturb)
    ref = copy.deepcopy(net)
    perms = [reorganize_block(b, 0) for b in _blocks(net)]
    x = torch.randn(4, 1, 16, 16)
    _out(net, x, True)
    _out(ref, x, True)  # both update their running statistics from the same batch
    for block, old, perm in zip(_blocks(net), _blocks(ref), perms, strict=True):
        assert perm is not None
        for bn in ("expand_bn", "dw_bn"):
            new_bn, old_bn = getattr(block, bn), getattr(old, bn)
            assert torch.allclose(new_bn.running_mean, old_bn.running_mean[perm], atol=1e-6)
            assert torch.allclose(new_bn.running_var, old_bn.running_var[perm], atol=1e-6)
        assert torch.allclose(block.project_bn.running_mean, old.project_bn.running_mean, atol=1e-6)


@pytest.mark.parametrize(("name", "res"), MEMBERS)
def test_extraction_matches_the_supernet_after_reorganisation(name, res, perturb):
    net = _net(name, perturb, seed=1)
    reorganize_channels(net, expand_stage=1)
    net.eval()
    rng = random.Random(0)
    archs = [net.space.largest(), net.space.smallest(), *(net.space.sample(rng) for _ in range(3))]
    x = torch.randn(2, net.in_channels, res, res)
    for arch in archs:
        net.set_active(arch)
        y = _out(net, x, False)
        assert _diff(net.extract(arch).eval()(x), y) < 1e-5, arch


def test_stage0_sorts_middle_channels_and_se_hidden_units(perturb):
    net = _net("ofa-mbv3-w1.0", perturb)
    before = [middle_importance(b) for b in _blocks(net)]
    reorganize_channels(net, 0)
    for block, old in zip(_blocks(net), before, strict=True):
        imp = middle_importance(block)
        assert torch.allclose(imp, torch.sort(old, descending=True).values, rtol=1e-12)  # same values, descending
        if block.se is not None:
            se_imp = block.se.expand.weight.detach().double().abs().sum(dim=(0, 2, 3))
            assert bool((se_imp[:-1] >= se_imp[1:]).all())
    assert sum(b.se is not None for b in _blocks(net)) == 12


def test_stage1_keeps_the_channels_of_ratio_4_as_a_prefix(perturb):
    net = _net("ofa-mbv3-w1.0", perturb, seed=2)
    moved_across = 0
    for block in _blocks(net):
        w4, w6 = (mid_channels(block.in_channels, e) for e in (4, 6))
        plain = torch.sort(middle_importance(block), descending=True, stable=True).indices
        moved_across += int(not torch.equal(plain[:w4].sort().values, torch.arange(w4)))
        old = middle_importance(block)
        perm = reorganize_block(block, expand_stage=1)
        assert perm is not None and perm.shape == (w6,)
        assert torch.equal(perm[:w4].sort().values, torch.arange(w4))  # ratio 4 keeps exactly its channels
        assert torch.equal(perm[w4:].sort().values, torch.arange(w4, w6))
        imp = middle_importance(block)
        assert torch.allclose(imp, old[perm], rtol=1e-12)
        for lo, hi in ((0, w4), (w4, w6)):  # sorted inside each band
            assert bool((imp[lo : hi - 1] >= imp[lo + 1 : hi]).all())
    assert moved_across >= 10  # a plain sort (stage 0) would have changed the ratio-4 prefix of most blocks


def test_reorganisation_is_idempotent_and_keeps_parameter_identity(perturb):
    net = _net("mbv3-small", perturb)
    ids = [id(p) for p in net.parameters()]
    reorganize_channels(net, 0)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    reorganize_channels(net, 0)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert [id(p) for p in net.parameters()] == ids  # an optimizer built before still holds the parameters


def test_block_without_expand_conv_is_left_alone(perturb):
    net = _net("mbv3-small", perturb)
    assert net.first_block is not None and not net.first_block.has_expand
    before = copy.deepcopy(net.first_block.state_dict())
    assert reorganize_block(net.first_block, 0) is None
    reorganize_channels(net, 0)
    assert all(torch.equal(before[k], v) for k, v in net.first_block.state_dict().items())


def test_band_sort():
    imp = torch.tensor([1.0, 5.0, 3.0, 9.0, 0.0, 7.0])
    assert band_sort(imp, []).tolist() == [3, 5, 1, 2, 0, 4]
    assert band_sort(imp, [3]).tolist() == [1, 2, 0, 3, 5, 4]
    assert band_sort(imp, [2, 4]).tolist() == [1, 0, 3, 2, 5, 4]
    assert band_sort(imp, [0, 6, 2, 2]).tolist() == band_sort(imp, [2]).tolist()  # empty bands are ignored


@pytest.mark.parametrize("stage", [-1, 3])
def test_bad_stage_is_rejected(stage, tiny_net):
    with pytest.raises(ValueError, match=f"expand_stage {stage}.*0..1"):
        reorganize_channels(tiny_net, stage)
