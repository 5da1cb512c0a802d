"""Counting architectures (Once-for-All's 7371^5, with and without resolution) and the CIFAR-size OFA member."""

from __future__ import annotations

import itertools
import json

import pytest

from nasforge.cli import main
from nasforge.supernets import count_macs, count_params, create_supernet, list_supernets

OFA_UNIT = 9**2 + 9**3 + 9**4  # (ks, e) pairs per block: 3 x 3 = 9; depth 2, 3 or 4
OFA_ARCHS = OFA_UNIT**5
OFA_MEMBERS = ["ofa-mbv3-w1.0", "ofa-mbv3-w1.2", "ofa-mbv3-cifar"]


# -- counting ---------------------------------------------------------------------------------------------------
def test_one_ofa_unit_has_7371_distinct_settings_by_brute_force(spaces):
    space = spaces["ofa-mbv3-w1.0"]
    base = space.largest().to_dict()
    distinct = set()
    for d in (2, 3, 4):
        for genes in itertools.product(itertools.product((3, 5, 7), (3, 4, 6)), repeat=4):
            ks, e = zip(*genes, strict=True)
            arch = dict(base, d=[d, 4, 4, 4, 4], ks=[*ks, *base["ks"][4:]], e=[*e, *base["e"][4:]])
            distinct.add(space.canonical(arch))  # inactive blocks of unit 0 no longer matter
    assert len(distinct) == OFA_UNIT == 7371


@pytest.mark.parametrize("name", OFA_MEMBERS)
def test_ofa_space_sizes_with_and_without_resolution(spaces, name):
    space = spaces[name]
    n_res = len(space.dim("r").choices)
    assert space.size(exclude=("r",)) == OFA_ARCHS == 7371**5
    assert f"{OFA_ARCHS:.3g}" == "2.18e+19"
    assert space.size() == OFA_ARCHS * n_res
    assert space.size(exclude="r") == OFA_ARCHS  # a single name works too
    assert space.size(exclude=("r", "ks")) == (3**2 + 3**3 + 3**4) ** 5  # expand ratios and depths only
    assert space.size(exclude=("ks", "e", "d", "r")) == 1


def test_size_exclude_matches_brute_force(gated_space):
    space = gated_space  # ks, e gated by d (2 units x 2 blocks), w ungated (2 positions), r scalar
    archs = list(space.enumerate())
    assert space.size(exclude=()) == space.size() == len(archs) == 3200
    assert space.size(exclude=("r",)) == len({a.replace(r=16) for a in archs}) == 1600
    assert space.size(exclude=("w", "r")) == len({a.replace(w=[8, 8], r=16) for a in archs}) == 400
    # ks held at one value: canonicalise after pinning it, so inactive blocks still do not count
    pinned = {space.canonical(a.replace(ks=[5] * 4)) for a in archs}
    assert space.size(exclude=("ks",)) == len(pinned) == (2 + 4) ** 2 * 4 * 2
    assert space.size(exclude=("d", "ks", "e")) == 4 * 2


def test_size_exclude_rejects_unknown_names_and_a_lone_depth(gated_space):
    with pytest.raises(ValueError, match=r"\['width'\].*'ks'.*'r'"):
        gated_space.size(exclude=("width",))
    with pytest.raises(ValueError, match=r"depth 'd'.*\['ks', 'e'\]"):
        gated_space.size(exclude=("d",))
    with pytest.raises(ValueError, match=r"depth 'd'.*\['e'\]"):
        gated_space.size(exclude=("d", "ks"))


# -- the CLI prints both numbers --------------------------------------------------------------------------------
def test_space_describe_prints_counts_with_and_without_resolution(capsys):
    assert main(["space", "describe", "ofa-mbv3-w1.0"]) == 0
    text = capsys.readouterr().out
    assert f"{OFA_ARCHS:,}" in text and "2.18e+19" in text
    assert f"{OFA_ARCHS * 25:.3g}" in text and "25 resolutions" in text
    assert main(["space", "describe", "ofa-mbv3-w1.0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["architectures"] == OFA_ARCHS and out["space_size"] == OFA_ARCHS * 25
    assert out["resolutions"] == list(range(128, 225, 4))
    # the keys that existed before are still there
    assert {"space", "params", "macs", "resolution", "arch", "space_size"} <= set(out)


# -- the CIFAR-size OFA member ----------------------------------------------------------------------------------
def test_cifar_member_is_listed(capsys):
    assert "ofa-mbv3-cifar" in list_supernets()
    assert main(["space", "list"]) == 0
    assert "ofa-mbv3-cifar" in capsys.readouterr().out


def test_cifar_member_is_the_ofa_w10_layout_for_32x32():
    cifar, w10 = create_supernet("ofa-mbv3-cifar"), create_supernet("ofa-mbv3-w1.0")
    c = cifar.config
    assert (c.num_classes, c.in_channels, c.stem_stride, c.resolutions) == (10, 3, 1, (24, 28, 32))
    assert cifar.default_resolution == 32 and cifar.space.largest()["r"] == 32
    assert cifar.input_shape() == (3, 32, 32)
    same = ("stem_width", "first_block_width", "stages", "kernel_sizes", "expand_ratios", "depths",
            "final_expand_width", "feature_width", "kernel_transform", "bn_momentum", "bn_eps")
    assert all(getattr(c, f) == getattr(w10.config, f) for f in same)
    assert cifar.space.dims[:3] == w10.space.dims[:3]  # ks, e, d as in OFA


@pytest.mark.parametrize("r", [24, 28, 32])
def test_cifar_member_analytic_costs_equal_the_hook_counts(r):
    net = create_supernet("ofa-mbv3-cifar")
    for arch in (net.space.largest(), net.space.smallest(), net.space.sample(r)):
        arch = arch.replace(r=r)
        sub = net.extract(arch)
        assert net.params(arch) == count_params(sub)
        assert net.macs(arch) == count_macs(sub, (3, r, r))
    big = net.space.largest()
    # only the classifier differs from OFA's 1000-class w1.0 (7,664,760 params): 1280 inputs + bias
    assert net.params(big) == 7_664_760 - 1000 * 1281 + 10 * 1281
    assert net.macs(big) == 49_554_816  # at 32x32: the same number the hook counter gives
