"""Once-for-All reference checkpoints <-> nasforge (``nasforge.supernets.ofa_compat``), without the reference code.

``data/ofa_mbv3_w1.0_keys.json`` holds the key -> shape list of the reference ``OFAMobileNetV3`` w1.0 state dict,
written by ``python benchmarks/ofa_reference_check.py --ofa-repo PATH --write-keys FILE`` (which also checks
logits against the reference itself).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nasforge.errors import CheckpointError
from nasforge.supernets import create_supernet
from nasforge.supernets.ofa_compat import (
    load_ofa_checkpoint,
    nasforge_to_ofa_state_dict,
    ofa_key_map,
    ofa_to_nasforge_state_dict,
)

FIXTURE = Path(__file__).parent / "data" / "ofa_mbv3_w1.0_keys.json"


@pytest.fixture(scope="module")
def ofa_shapes() -> dict[str, list[int]]:
    return json.loads(FIXTURE.read_text())["keys"]


@pytest.fixture(scope="module")
def ofa_state(ofa_shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """A seeded random state dict in the reference's key layout (counters are int64, as BN keeps them)."""
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in ofa_shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.randint(0, 1000, shape, generator=gen)
        else:
            state[key] = torch.randn(shape, generator=gen)
    return state


def test_exported_keys_and_shapes_match_the_reference(ofa_shapes: dict[str, list[int]]) -> None:
    exported = nasforge_to_ofa_state_dict(create_supernet("ofa-mbv3-w1.0"))
    assert {k: list(v.shape) for k, v in exported.items()} == ofa_shapes


def test_block_order_within_units() -> None:
    # blocks of one unit have equal shapes, so only the names catch a mixed-up order
    names = ofa_key_map(create_supernet("ofa-mbv3-w1.0"))
    assert names["units.0.blocks.1.dw_conv.weight"] == "blocks.2.conv.depth_conv.conv.conv.weight"
    assert names["units.2.blocks.3.expand_bn.running_var"] == "blocks.12.conv.inverted_bottleneck.bn.bn.running_var"
    assert names["units.4.blocks.3.project_conv.weight"] == "blocks.20.conv.point_linear.conv.conv.weight"
    assert names["units.1.blocks.2.dw_conv.transforms.to5x5"] == "blocks.7.conv.depth_conv.conv.7to5_matrix"
    assert names["units.1.blocks.2.dw_conv.transforms.to3x3"] == "blocks.7.conv.depth_conv.conv.5to3_matrix"
    assert names["units.3.blocks.0.se.reduce.bias"] == "blocks.13.conv.depth_conv.se.fc.reduce.bias"
    assert names["first_block.project_bn.weight"] == "blocks.0.conv.point_linear.bn.weight"
    assert names["classifier.bias"] == "classifier.linear.bias"


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b) or set(a) == set(b)
    for key, tensor in a.items():
        assert tensor.dtype == b[key].dtype, key
        assert torch.equal(tensor, b[key]), key


def test_round_trip_is_identical(ofa_state: dict[str, torch.Tensor]) -> None:
    net = load_ofa_checkpoint(create_supernet("ofa-mbv3-w1.0"), ofa_state)
    _assert_same(nasforge_to_ofa_state_dict(net), ofa_state)


def test_wrappers_prefixes_old_names_and_files(ofa_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    wrapped = {"epoch": 3, "state_dict": {"module." + k.replace(".conv.", ".mobile_inverted_conv.", 1)
                                          if k.startswith("blocks.") else "module." + k: v
                                          for k, v in ofa_state.items()}}
    path = tmp_path / "ofa.pth"
    torch.save(wrapped, path)
    for source in (wrapped, path, str(path)):
        net = load_ofa_checkpoint(create_supernet("ofa-mbv3-w1.0"), source)
        _assert_same(nasforge_to_ofa_state_dict(net), ofa_state)


def test_fixed_kernel_checkpoint_needs_an_explicit_choice(ofa_state: dict[str, torch.Tensor]) -> None:
    no_transforms = {k: v for k, v in ofa_state.items() if not k.endswith("_matrix")}
    net = create_supernet("ofa-mbv3-w1.0")
    with pytest.raises(CheckpointError, match="40 missing.*keep_missing_transforms=True"):
        ofa_to_nasforge_state_dict(no_transforms, net)
    load_ofa_checkpoint(net, no_transforms, keep_missing_transforms=True)
    assert torch.equal(net.units[0].blocks[0].dw_conv.transforms["to5x5"], torch.eye(25))
    assert torch.equal(net.units[0].blocks[0].dw_conv.weight, ofa_state["blocks.1.conv.depth_conv.conv.conv.weight"])


def test_missing_and_unexpected_keys(ofa_state: dict[str, torch.Tensor]) -> None:
    net = create_supernet("ofa-mbv3-w1.0")
    broken = dict(ofa_state)
    del broken["blocks.3.conv.point_linear.bn.bn.running_mean"]
    broken["blocks.21.conv.point_linear.conv.conv.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        load_ofa_checkpoint(net, broken)
    message = str(info.value)
    assert "\n" not in message
    assert "1 missing (blocks.3.conv.point_linear.bn.bn.running_mean)" in message
    assert "1 unexpected (blocks.21.conv.point_linear.conv.conv.weight)" in message
    with pytest.raises(CheckpointError, match="not tensors"):
        load_ofa_checkpoint(net, {**ofa_state, "first_conv.conv.weight": [1.0]})


def test_wrong_width_names_the_right_member(ofa_state: dict[str, torch.Tensor]) -> None:
    with pytest.raises(CheckpointError, match=r"wrong shape for 'ofa-mbv3-w1.2'.*create_supernet\('ofa-mbv3-w1.0'\)"):
        load_ofa_checkpoint(create_supernet("ofa-mbv3-w1.2"), ofa_state)
    with pytest.raises(CheckpointError, match="1000 classes: create the supernet with num_classes=1000"):
        load_ofa_checkpoint(create_supernet("ofa-mbv3-w1.0", num_classes=10), ofa_state)


def test_unreadable_files(ofa_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    net = create_supernet("ofa-mbv3-w1.0")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(bytes(range(256)) * 8)
    good = tmp_path / "good.pth"
    torch.save({"first_conv.conv.weight": ofa_state["first_conv.conv.weight"]}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for path in (garbage, truncated):
        with pytest.raises(CheckpointError, match="corrupt or not a torch checkpoint"):
            load_ofa_checkpoint(net, path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_ofa_checkpoint(net, tmp_path / "absent.pth")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_ofa_checkpoint(net, tmp_path)
    torch.save([1, 2], good)
    with pytest.raises(CheckpointError, match="must be a state dict, got list"):
        load_ofa_checkpoint(net, good)


def test_other_layouts_are_refused() -> None:
    with pytest.raises(CheckpointError, match="needs an ElasticMobileNetV3 with a first block and a feature layer"):
        ofa_key_map(create_supernet("mbv3-small", feature_width=None))
