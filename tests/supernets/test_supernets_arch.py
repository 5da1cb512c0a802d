"""Architecture (plain data) and SearchSpace: JSON round-trips, validation messages, counting, sampling, encoding."""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest

from nasforge.errors import ArchitectureError, NasforgeError
from nasforge.supernets.arch import Architecture, DepthGate, Dimension, SearchSpace

OFA = "ofa-mbv3-w1.0"


def _all_positions(space: SearchSpace, arch: Architecture):
    for d in space.dims:
        value = arch[d.name]
        values = (value,) if isinstance(value, int) else value
        for i, v in enumerate(values):
            yield d, i, v


# -- Architecture as plain data ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mbv3-small", "ofa-mbv3-w1.0", "ofa-mbv3-w1.2"])
def test_json_and_dict_round_trip_many_archs(spaces, name):
    space = spaces[name]
    rng = random.Random(1)
    seen = set()
    for _ in range(200):
        arch = space.sample(rng)
        text = arch.to_json()
        back = Architecture.from_json(text)
        assert back == arch and hash(back) == hash(arch)
        assert Architecture.from_dict(arch.to_dict()) == arch
        assert Architecture.from_dict(json.loads(text)) == arch
        assert space.validate(text) == arch
        assert json.loads(text) == arch.to_dict()
        seen.add(back)
    assert len(seen) > 190  # really different architectures were round-tripped, not one 200 times


def test_to_dict_uses_lists_and_ints(spaces):
    arch = spaces[OFA].largest()
    d = arch.to_dict()
    assert isinstance(d["ks"], list) and len(d["ks"]) == 20 and all(type(v) is int for v in d["ks"])
    assert type(d["r"]) is int and d["r"] == 224
    assert str(arch) == arch.to_json()


def test_equality_and_hash_distinguish_genes():
    a = Architecture.from_dict({"ks": [3, 5], "r": 16})
    assert a == Architecture.from_dict({"ks": (3, 5), "r": 16.0})
    assert a != Architecture.from_dict({"ks": [5, 3], "r": 16})
    assert len({a, Architecture.from_dict({"ks": [3, 5], "r": 16}), Architecture.from_dict({"ks": [3, 5], "r": 12})}) == 2


def test_replace_and_lookup():
    a = Architecture.from_dict({"ks": [3, 5], "r": 16})
    b = a.replace(ks=[7, 7])
    assert b["ks"] == (7, 7) and a["ks"] == (3, 5) and b["r"] == 16
    assert "ks" in a and "e" not in a
    with pytest.raises(KeyError):
        a["e"]


# -- validation errors name the field, index and allowed values ------------------------------------------------
def _ofa_dict(spaces) -> dict:
    return spaces[OFA].largest().to_dict()


def test_bad_value_names_field_index_and_choices(spaces):
    data = _ofa_dict(spaces)
    data["ks"][3] = 4
    with pytest.raises(ArchitectureError) as exc:
        spaces[OFA].validate(data)
    msg = str(exc.value)
    assert "'ks'[3]" in msg and "= 4" in msg and "(3, 5, 7)" in msg


def test_bad_scalar_value_names_choices(spaces):
    data = _ofa_dict(spaces)
    data["r"] = 130
    with pytest.raises(ArchitectureError) as exc:
        spaces[OFA].validate(data)
    msg = str(exc.value)
    assert "'r'" in msg and "130" in msg and "128" in msg and "224" in msg


def test_bad_value_in_inactive_block_is_still_rejected(spaces):
    data = spaces[OFA].smallest().to_dict()  # depth 2: blocks 2, 3 of each unit are inactive
    data["e"][3] = 5
    with pytest.raises(ArchitectureError, match=r"'e'\[3\]"):
        spaces[OFA].validate(data)


@pytest.mark.parametrize("length", [19, 21, 0])
def test_wrong_length(spaces, length):
    data = _ofa_dict(spaces)
    data["e"] = [6] * length
    with pytest.raises(ArchitectureError) as exc:
        spaces[OFA].validate(data)
    msg = str(exc.value)
    assert "'e'" in msg and "20" in msg and f"got {length}" in msg and "(3, 4, 6)" in msg


def test_scalar_where_list_expected(spaces):
    data = _ofa_dict(spaces)
    data["d"] = 3
    with pytest.raises(ArchitectureError, match=r"'d'.*5 values.*single int"):
        spaces[OFA].validate(data)


def test_list_where_scalar_expected(spaces):
    data = _ofa_dict(spaces)
    data["r"] = [128, 160]
    with pytest.raises(ArchitectureError, match=r"'r'.*single int"):
        spaces[OFA].validate(data)
    data["r"] = [160]  # a one-element list is read as the scalar
    assert spaces[OFA].validate(data)["r"] == 160


def test_unknown_field(spaces):
    data = _ofa_dict(spaces)
    data["width"] = 3
    with pytest.raises(ArchitectureError) as exc:
        spaces[OFA].validate(data)
    msg = str(exc.value)
    assert "'width'" in msg and all(f"'{n}'" in msg for n in ("ks", "e", "d", "r"))


@pytest.mark.parametrize("missing", ["ks", "e", "d"])
def test_missing_field(spaces, missing):
    data = _ofa_dict(spaces)
    del data[missing]
    with pytest.raises(ArchitectureError) as exc:
        spaces[OFA].validate(data)
    msg = str(exc.value)
    assert f"missing field '{missing}'" in msg
    assert str(spaces[OFA].dim(missing).choices) in msg


@pytest.mark.parametrize(
    ("field", "value", "pattern"),
    [
        ("ks", ["a"] * 20, r"'ks'\[0\] must be an int, got 'a'"),
        ("ks", [7] * 19 + [3.5], r"'ks'\[19\] must be an int, got 3.5"),
        ("ks", [7] * 5 + [None] + [7] * 14, r"'ks'\[5\] must be an int"),
        ("ks", "777", r"'ks' must be an int or a list of ints"),
        ("ks", {"a": 1}, r"'ks' must be an int or a list of ints"),
        ("r", 160.5, r"'r' must be an int"),
        ("r", "160", r"'r' must be an int"),
        ("r", None, r"'r' must be an int"),
    ],
)
def test_non_int_values(spaces, field, value, pattern):
    data = _ofa_dict(spaces)
    data[field] = value
    with pytest.raises(ArchitectureError, match=pattern):
        spaces[OFA].validate(data)


@pytest.mark.parametrize(("field", "value"), [("r", True), ("ks", [True] + [7] * 19), ("d", [4, 4, False, 4, 4])])
def test_bools_are_not_ints(spaces, field, value):
    data = _ofa_dict(spaces)
    data[field] = value
    # rejected as a type error when the data is read, before any space sees it (True is not the int 1)
    with pytest.raises(ArchitectureError, match=f"'{field}'.* must be an int.*got (True|False)"):
        Architecture.from_dict(data)
    with pytest.raises(ArchitectureError, match=f"'{field}'.* must be an int"):
        spaces[OFA].validate(data)


@pytest.mark.parametrize("text", ['{"ks": [NaN]}', '{"ks": [Infinity]}', '{"ks": [-Infinity]}'])
def test_non_finite_json_numbers_are_architecture_errors(text):
    # Python's json accepts NaN/Infinity; they must give the user-facing error, not a bare ValueError.
    with pytest.raises(ArchitectureError, match=r"'ks'\[0\] must be an int"):
        Architecture.from_json(text)


@pytest.mark.parametrize("text", ['{"ks": [7, 7', "ks=7", "", "{'ks': [7]}"])
def test_bad_json(spaces, text):
    with pytest.raises(ArchitectureError, match="not valid JSON"):
        Architecture.from_json(text)
    with pytest.raises(ArchitectureError, match="not valid JSON"):
        spaces[OFA].validate(text)


@pytest.mark.parametrize("text", ["[7, 7]", "3", '"ks"', "null"])
def test_json_that_is_not_an_object(text):
    with pytest.raises(ArchitectureError, match="JSON object"):
        Architecture.from_json(text)


def test_architecture_errors_are_user_errors():
    assert issubclass(ArchitectureError, NasforgeError) and issubclass(ArchitectureError, ValueError)


def test_integral_floats_are_accepted(spaces):
    data = _ofa_dict(spaces)
    data["ks"] = [7.0] * 20
    data["r"] = 224.0
    assert spaces[OFA].validate(data) == spaces[OFA].largest()


# -- defaults and canonical form --------------------------------------------------------------------------------
def test_default_fills_missing_resolution(spaces):
    data = _ofa_dict(spaces)
    del data["r"]
    arch = spaces[OFA].validate(data)
    assert arch["r"] == 224 == spaces[OFA].dim("r").default
    assert arch.names == ("ks", "e", "d", "r")  # fields in space order


def test_validate_orders_fields_like_the_space(spaces):
    data = _ofa_dict(spaces)
    shuffled = {k: data[k] for k in ("r", "d", "e", "ks")}
    assert spaces[OFA].validate(shuffled) == spaces[OFA].largest()


def test_canonical_merges_archs_that_differ_only_in_inactive_blocks(spaces):
    space = spaces[OFA]
    base = space.smallest().to_dict()  # every unit has depth 2: blocks 4u+2, 4u+3 are inactive
    a, b = dict(base), dict(base)
    a["ks"] = [3, 3, 5, 3] * 5
    a["e"] = [3, 3, 3, 4] * 5
    b["ks"] = [3, 3, 3, 5] * 5
    b["e"] = [3, 3, 6, 3] * 5
    assert space.validate(a) != space.validate(b)
    ca, cb = space.canonical(a), space.canonical(b)
    assert ca == cb and hash(ca) == hash(cb)
    assert ca["ks"] == (3, 3, 7, 7) * 5 and ca["e"] == (3, 3, 6, 6) * 5  # inactive -> largest choice
    np.testing.assert_array_equal(space.encode(a), space.encode(b))
    # an active difference is not merged
    c = dict(base)
    c["ks"] = [5, 3, 3, 3] + [3] * 16
    assert space.canonical(c) != ca


def test_canonical_is_idempotent(spaces):
    space = spaces["mbv3-small"]
    rng = random.Random(3)
    for _ in range(50):
        raw = {d.name: ([rng.choice(d.choices) for _ in range(d.positions)] if not d.is_scalar else
                        rng.choice(d.choices)) for d in space.dims}
        c = space.canonical(raw)
        assert space.canonical(c) == c
        for d, i, v in _all_positions(space, c):
            if not space.is_active(c, d.name, i):
                assert v == d.choices[-1]
            elif not d.is_scalar:
                assert v == raw[d.name][i]


# -- counting -------------------------------------------------------------------------------------------------
def test_size_matches_enumeration_and_brute_force(gated_space):
    space = gated_space
    # per unit: depth 1 -> 4 (ks, e) combos, depth 2 -> 16; 2 units; ungated w: 2**2; r: 2
    assert space.size() == (4 + 16) ** 2 * 4 * 2 == 3200
    enumerated = list(space.enumerate())
    assert len(enumerated) == len(set(enumerated)) == space.size()
    assert all(space.canonical(a) == a for a in enumerated)
    # brute force over every raw gene combination, canonicalised
    dims = space.dims
    raw_positions = [d.choices for d in dims for _ in range(d.positions)]
    distinct = set()
    for values in itertools.product(*raw_positions):
        data, k = {}, 0
        for d in dims:
            data[d.name] = values[k] if d.is_scalar else list(values[k : k + d.positions])
            k += d.positions
        distinct.add(space.canonical(data))
    assert distinct == set(enumerated)


def test_enumerate_limit(gated_space):
    assert len(list(gated_space.enumerate(limit=7))) == 7
    assert list(gated_space.enumerate(limit=0)) == []


def test_ungated_space_size():
    space = SearchSpace("flat", (Dimension("w", (8, 16, 24), 3), Dimension("r", (12, 16))))
    assert space.size() == 3**3 * 2 == len(set(space.enumerate()))


def test_ofa_space_size(spaces):
    space = spaces[OFA]
    assert space.dim("r").choices == tuple(range(128, 225, 4)) and len(space.dim("r").choices) == 25
    per_unit = 9**2 + 9**3 + 9**4
    assert per_unit == 7371
    assert space.size() == 7371**5 * 25
    assert 2.17e19 < space.size() // 25 < 2.19e19  # "7371^5 ~ 2.18e19" without resolution
    assert spaces["ofa-mbv3-w1.2"].size() == space.size()
    assert space.describe()["size"] == space.size()


def test_space_rejects_inconsistent_definitions():
    with pytest.raises(ValueError, match="duplicate"):
        SearchSpace("x", (Dimension("a", (1, 2)), Dimension("a", (1, 2))))
    with pytest.raises(ValueError, match="positions"):
        SearchSpace("x", (Dimension("ks", (3,), 5), Dimension("d", (1, 2), 2)), (DepthGate("d", ("ks",), 2),))
    with pytest.raises(ValueError, match="max_depth"):
        SearchSpace("x", (Dimension("ks", (3,), 4), Dimension("d", (1, 3), 2)), (DepthGate("d", ("ks",), 2),))
    with pytest.raises(ValueError, match="no choices"):
        Dimension("a", ())
    with pytest.raises(ValueError, match="default"):
        Dimension("r", (12, 16), default=14)


# -- sampling, mutation, crossover ----------------------------------------------------------------------------
def _assert_valid_canonical(space: SearchSpace, arch: Architecture) -> None:
    assert space.validate(arch) == arch
    assert space.canonical(arch) == arch


@pytest.mark.parametrize("name", ["mbv3-small", "ofa-mbv3-w1.0"])
def test_sample_mutate_crossover_give_valid_canonical_archs(spaces, name):
    space = spaces[name]
    rng = random.Random(7)
    pop = [space.sample(rng) for _ in range(20)]
    for _ in range(100):
        a, b = rng.sample(pop, 2)
        child = space.crossover(a, b, rng)
        mutant = space.mutate(child, rng, prob=0.3)
        for arch in (child, mutant):
            _assert_valid_canonical(space, arch)
        # every active position of the child comes from one of its parents
        for d, i, v in _all_positions(space, child):
            if space.is_active(child, d.name, i):
                pa, pb = (a[d.name], b[d.name]) if d.is_scalar else (a[d.name][i], b[d.name][i])
                assert v in (pa, pb)
        pop.append(mutant)


def test_crossover_mixes_both_parents(spaces):
    space = spaces[OFA]
    a = space.largest()
    b = space.validate({"ks": [3] * 20, "e": [3] * 20, "d": [4] * 5, "r": 128})  # differs from a everywhere
    children = [space.crossover(a, b, seed) for seed in range(10)]
    for child in children:
        from_a = sum(x == y for x, y in zip(child["ks"] + child["e"], a["ks"] + a["e"], strict=True))
        assert 5 <= from_a <= 35  # uniform per position: about half of the 40 genes from each parent
    assert {c["r"] for c in children} == {128, 224}
    assert len(set(children)) == 10


def test_sampling_is_seeded_and_varied(spaces):
    space = spaces[OFA]
    assert space.sample(5) == space.sample(5)
    assert space.sample(random.Random(5)) == space.sample(5)
    archs = {space.sample(s) for s in range(300)}
    assert len(archs) == 300
    # every choice of every dimension shows up (seeded draws, so this is deterministic)
    for d in space.dims:
        values = {v for a in archs for dd, _, v in _all_positions(space, a) if dd.name == d.name}
        assert values == set(d.choices)


def test_mutate_probabilities(spaces):
    space = spaces[OFA]
    arch = space.sample(0)
    assert space.mutate(arch, 1, prob=0.0) == arch
    changed = sum(space.mutate(arch, s, prob=1.0) != arch for s in range(20))
    assert changed == 20
    assert space.crossover(arch, arch, 3) == arch


# -- encoding -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mbv3-small", "ofa-mbv3-w1.0"])
def test_encode_one_hot_per_active_position(spaces, name):
    space = spaces[name]
    expected_size = sum(d.positions * len(d.choices) for d in space.dims)
    assert space.encoding_size == expected_size
    if name == OFA:
        assert space.encoding_size == 20 * 3 + 20 * 3 + 5 * 3 + 25
    for seed in range(30):
        arch = space.sample(seed)
        vec = space.encode(arch)
        assert vec.shape == (space.encoding_size,) and vec.dtype == np.float32
        assert set(np.unique(vec)) <= {0.0, 1.0}
        offset = 0
        n_active = 0
        for d, i, v in _all_positions(space, arch):
            part = vec[offset : offset + len(d.choices)]
            if space.is_active(arch, d.name, i):
                assert part.sum() == 1.0 and d.choices[int(part.argmax())] == v
                n_active += 1
            else:
                assert part.sum() == 0.0
            offset += len(d.choices)
        assert offset == space.encoding_size and vec.sum() == n_active


def test_encode_distinguishes_distinct_archs(gated_space):
    vectors = {gated_space.encode(a).tobytes() for a in gated_space.enumerate()}
    assert len(vectors) == gated_space.size()


def test_largest_and_smallest(spaces):
    space = spaces[OFA]
    big, small = space.largest(), space.smallest()
    assert big["ks"] == (7,) * 20 and big["e"] == (6,) * 20 and big["d"] == (4,) * 5 and big["r"] == 224
    assert small["d"] == (2,) * 5 and small["r"] == 128
    assert small["ks"] == (3, 3, 7, 7) * 5 and small["e"] == (3, 3, 6, 6) * 5  # canonical: inactive at the top
    _assert_valid_canonical(space, big)
    _assert_valid_canonical(space, small)
