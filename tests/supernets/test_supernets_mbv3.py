"""Supernets: the contract every registered supernet meets, and Once-for-All's reference numbers."""

from __future__ import annotations

import pytest
import torch
from supernet_helpers import cheap_arch as _cheap
from supernet_helpers import logits as _logits

from nasforge.errors import ArchitectureError, ConfigError
from nasforge.supernets import (
    ElasticMobileNetV3,
    MobileNetV3Subnet,
    count_macs,
    count_params,
    create_supernet,
    get_supernet_entry,
    list_supernets,
    register_supernet,
)
from nasforge.supernets.layers import DynamicBatchNorm2d


def test_registry_lists_the_builtin_members():
    names = list_supernets()
    assert {"mbv3-small", "ofa-mbv3-w1.0", "ofa-mbv3-w1.2"} <= set(names)
    assert names == sorted(names)
    for name in names:
        entry = get_supernet_entry(name)
        assert entry.name == name and entry.description


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_supernet("mbv3-small")(lambda **kw: None)
    assert get_supernet_entry("mbv3-small").factory is not None


@pytest.mark.parametrize("name", [n for n in list_supernets() if not n.startswith("sorted-")])
def test_extract_does_not_change_the_active_arch(name):
    """(The sorted members check the same in test_sorted_models.py.)"""
    net = create_supernet(name).eval()
    a = net.set_active(_cheap(net, net.space.sample(1)))
    x = torch.randn(1, *net.input_shape(a))
    before = _logits(net, x)
    state = [(b.active_kernel, b.active_expand) for u in net.units for b in u.blocks]
    depths = [u.active_depth for u in net.units]
    sub = net.extract(_cheap(net, net.space.sample(2)))
    assert isinstance(sub, MobileNetV3Subnet)
    assert net.active == a
    assert [(b.active_kernel, b.active_expand) for u in net.units for b in u.blocks] == state
    assert [u.active_depth for u in net.units] == depths
    assert torch.equal(_logits(net, x), before)
    # extract() with no argument copies the active subnet
    assert torch.equal(_logits(net.extract(), x), before)


def test_extracted_weights_are_copies(tiny_net):
    sub = tiny_net.extract(tiny_net.space.largest())
    with torch.no_grad():
        for p in sub.parameters():
            p.add_(1.0)
    shared = {id(p) for p in tiny_net.parameters()}
    assert not any(id(p) in shared for p in sub.parameters())
    assert float(tiny_net.classifier.weight.detach().abs().max()) < 1.0


def test_extract_follows_train_mode(tiny_net):
    assert tiny_net.train().extract().training
    assert not tiny_net.eval().extract().training


def test_sample_active_activates_a_canonical_arch(tiny_net):
    arch = tiny_net.sample_active(3)
    assert tiny_net.active == arch == tiny_net.space.canonical(arch) == tiny_net.space.sample(3)
    depths = arch["d"]
    assert [u.active_depth for u in tiny_net.units] == list(depths)


def test_set_active_rejects_bad_archs_and_keeps_the_old_one(tiny_net):
    arch = tiny_net.set_active(tiny_net.space.smallest())
    bad = tiny_net.space.largest().to_dict()
    bad["ks"][0] = 7
    with pytest.raises(ArchitectureError, match=r"'ks'\[0\] = 7.*\(3, 5\)"):
        tiny_net.set_active(bad)
    with pytest.raises(ArchitectureError, match="unknown"):
        tiny_net.set_active({**tiny_net.space.largest().to_dict(), "w": 1})
    with pytest.raises(ArchitectureError, match="JSON"):
        tiny_net.set_active("{not json")
    with pytest.raises(ArchitectureError):
        tiny_net.extract(bad)
    assert tiny_net.active == arch
    assert tiny_net.set_active(tiny_net.space.largest().to_json()) == tiny_net.space.largest()


def test_inactive_block_values_do_not_change_the_network(tiny_net, perturb):
    perturb(tiny_net, seed=4)
    tiny_net.eval()
    space = tiny_net.space
    base = space.smallest().to_dict()  # depth 1: blocks 1 and 3 are inactive
    other = dict(base, ks=[3, 3, 3, 3], e=[2, 2, 2, 2])
    x = torch.randn(2, *tiny_net.input_shape(space.smallest()))
    tiny_net.set_active(base)
    y1 = _logits(tiny_net, x)
    assert tiny_net.set_active(other) == tiny_net.active == space.canonical(base)
    assert torch.equal(_logits(tiny_net, x), y1)


# -- Once-for-All reference numbers ---------------------------------------------------------------------------
def test_ofa_w10_reference_numbers():
    net = create_supernet("ofa-mbv3-w1.0")
    space = net.space
    big, small = space.largest(), space.smallest()
    assert big["r"] == 224 and small["r"] == 128
    assert net.params(big) == 7_664_760
    assert net.macs(big) == 566_170_656
    assert net.params(small) == 3_410_792
    assert net.macs(small) == 41_476_224
    assert count_params(net) == 7_678_880
    # the difference is exactly the kernel transforms: 20 elastic depthwise blocks x (25*25 + 9*9)
    assert count_params(net) - net.params(big) == 20 * 706
    assert count_macs(net.extract(small), (3, 128, 128)) == 41_476_224


def test_ofa_w12_reference_numbers():
    net = create_supernet("ofa-mbv3-w1.2")
    big = net.space.largest()
    assert net.params(big) == 10_701_632
    assert net.macs(big) == 843_101_040
    assert count_params(net) - net.params(big) == 20 * 706


def test_ofa_widths():
    w10, w12 = create_supernet("ofa-mbv3-w1.0").config, create_supernet("ofa-mbv3-w1.2").config
    widths = lambda c: [c.stem_width, c.first_block_width, *(s.width for s in c.stages), c.final_expand_width,  # noqa: E731
                        c.feature_width]
    assert widths(w10) == [16, 16, 24, 40, 80, 112, 160, 960, 1280]
    assert widths(w12) == [24, 24, 32, 48, 96, 136, 192, 1152, 1536]
    assert [s.stride for s in w10.stages] == [2, 2, 2, 1, 2]
    assert [s.act for s in w10.stages] == ["relu", "relu", "hswish", "hswish", "hswish"]
    assert [s.se for s in w10.stages] == [False, True, False, True, True]
    assert w10.num_classes == 1000 and w10.bn_momentum == 0.1 and w10.bn_eps == 1e-5


@pytest.mark.parametrize("resolution", [128, 132, 164, 192, 212, 224])
def test_ofa_macs_at_several_resolutions_match_the_hook_counter(resolution):
    net = create_supernet("ofa-mbv3-w1.0")
    arch = net.space.sample(resolution).replace(r=resolution)
    sub = net.extract(arch)
    counted = count_macs(sub, (3, resolution, resolution))
    assert net.macs(arch) == counted
    assert net.macs(arch.replace(r=224), resolution=resolution) == counted
    assert net.params(arch) == count_params(sub)


def test_macs_grow_with_resolution():
    net = create_supernet("ofa-mbv3-w1.0")
    arch = net.space.largest()
    macs = [net.macs(arch, resolution=r) for r in net.space.dim("r").choices]
    assert macs == sorted(macs) and len(set(macs)) == len(macs)


def test_num_classes_override_changes_the_head():
    net = create_supernet("ofa-mbv3-w1.0", num_classes=10)
    assert net.classifier.out_features == 10
    big = net.space.largest()
    assert net.params(big) == 7_664_760 - 1000 * 1281 + 10 * 1281


# -- factory errors ---------------------------------------------------------------------------------------------
def test_unknown_supernet_name_lists_the_known_ones():
    with pytest.raises(ConfigError) as exc:
        create_supernet("resnet-50")
    msg = str(exc.value)
    assert "'resnet-50'" in msg and all(name in msg for name in list_supernets())


def test_unknown_option_lists_the_allowed_ones():
    with pytest.raises(ConfigError) as exc:
        create_supernet("mbv3-small", num_clases=10)
    msg = str(exc.value)
    assert "num_clases" in msg and "num_classes" in msg and "kernel_sizes" in msg


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"num_classes": 1}, "num_classes"),
        ({"kernel_sizes": (3, 4)}, "odd"),
        ({"depths": (0, 1)}, "depths"),
        ({"stages": ()}, "stage"),
        ({"stages": ({"width": 8, "stride": 1, "colour": "red"},)}, "width, stride, act, se"),
        ({"stages": (8,)}, "stage"),
    ],
)
def test_bad_option_values_raise_config_error(options, pattern):
    with pytest.raises(ConfigError, match=pattern):
        create_supernet("mbv3-small", **options)


def test_options_build_a_different_member(tiny_net):
    assert isinstance(tiny_net, ElasticMobileNetV3)
    assert tiny_net.space.dim("ks").choices == (3, 5) and tiny_net.space.dim("d").choices == (1, 2)
    assert tiny_net.space.size() == 800
    bns = [m for m in tiny_net.modules() if isinstance(m, DynamicBatchNorm2d)]
    assert bns and all(m.momentum == 0.1 for m in bns)
