"""Graph-metanetwork pruning: sparsity regulariser, tiny meta-training, pruning with --criterion gmn."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nasforge.data import load_data
from nasforge.errors import CheckpointError, ConfigError
from nasforge.prune import create_model, prune, train_classifier
from nasforge.prune._gmn import (
    GroupSparsity,
    MetaTrainConfig,
    apply_metanet,
    load_metanet,
    meta_train,
    save_metanet,
)
from nasforge.prune._graph import graph_to_params, network_to_graph


@pytest.fixture(scope="module")
def family() -> tuple[list[torch.nn.Module], object]:
    data = load_data("shapes?n=300&classes=4", image_size=16, seed=0)
    nets = []
    for i in range(3):
        torch.manual_seed(i)
        net = create_model("resnet8", num_classes=4, widths=[8, 8, 16])
        train_classifier(net, data.train, epochs=1, seed=i)
        nets.append(net.eval())
    return nets, data


def test_sparsity_pushes_hardest_on_weak_groups(family: tuple[list[torch.nn.Module], object]) -> None:
    nets, data = family
    reg = GroupSparsity(nets[0], data.train.x[:2], alpha=4.0)
    assert reg.groups and len(reg.groups) == len(reg.scales)
    for scale in reg.scales:  # the weakest channel of each group gets alpha, the strongest 1
        assert scale.max().item() == pytest.approx(4.0, rel=1e-5) and scale.min().item() == pytest.approx(1.0)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in nets[0].named_parameters()}
    loss = reg.loss(params)
    loss.backward()
    assert loss.item() > 0 and params["conv1.weight"].grad.abs().sum() > 0
    # the regulariser is the mean of scaled group norms: shrinking every weight shrinks it proportionally
    half = {k: v.detach() * 0.5 for k, v in params.items()}
    assert reg.loss(half).item() == pytest.approx(loss.item() * 0.5, rel=1e-4)


def test_tiny_meta_train_and_prune(family: tuple[list[torch.nn.Module], object], tmp_path: Path) -> None:
    nets, data = family
    cfg = MetaTrainConfig(steps=4, validate_every=2, hidden=16, layers=2, target="macs=0.5")
    records: list[dict[str, float]] = []
    result = meta_train(nets[:2], nets[2], data.train, data.val, cfg, on_step=lambda s, r: records.append(r))
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all("val_acc" in r for r in records if r["step"] in (2, 4))
    assert result.best_step in (0, 2, 4) and 0 <= result.best_val_acc <= 1
    # the networks it trained on are unchanged (the metanetwork writes into copies of their tensors only)
    assert all(not m.training for m in nets)
    path = save_metanet(tmp_path / "mn.pt", result.metanet, family="resnet8", best_step=result.best_step)
    again, info = load_metanet(path)
    graph = network_to_graph(nets[2])
    with torch.no_grad():
        a, b = result.metanet(graph), again(graph)
    assert torch.equal(a.edge_feats, b.edge_feats) and info["best_step"] == result.best_step
    # pruning with the metanetwork: weights rewritten first, then group-L2 to the target
    pruned, report = prune(nets[2], data.val.x[:2], target="macs=0.5", criterion="gmn", metanet=path)
    assert report.macs_after <= 0.5 * report.macs_before
    assert report.extra["metanet"]["edges"] == graph.num_edges
    assert 0 < report.extra["metanet"]["relative_weight_change"] < 0.5
    assert torch.isfinite(pruned(data.val.x[:4])).all()


def test_apply_metanet_is_near_identity_on_a_fresh_metanet(family: tuple[list[torch.nn.Module], object]) -> None:
    from nasforge.prune._metanet import GraphMetanetwork

    nets, data = family
    net = create_model("resnet8", num_classes=4, widths=[8, 8, 16]).eval()
    net.load_state_dict(nets[0].state_dict())
    before = net(data.val.x[:8])
    info = apply_metanet(net, GraphMetanetwork(hidden=16, layers=2), data.val.x[:2])
    after = net(data.val.x[:8])
    assert info["relative_weight_change"] < 0.05
    assert ((after - before).norm() / before.norm()).item() < 0.1
    assert set(graph_to_params(network_to_graph(net))) <= set(net.state_dict())


def test_gmn_errors(family: tuple[list[torch.nn.Module], object], tmp_path: Path) -> None:
    nets, data = family
    with pytest.raises(ConfigError, match="needs a trained metanetwork"):
        prune(nets[0], data.val.x[:2], criterion="gmn")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a metanetwork")
    with pytest.raises(CheckpointError, match="corrupt or not a metanetwork"):
        load_metanet(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_metanet(tmp_path / "missing.pt")
    from nasforge.prune._metanet import GraphMetanetwork

    mbv2 = create_model("mobilenetv2", width_mult=0.25, last_channels=32, num_classes=4)
    with pytest.raises(ConfigError, match="groups|depthwise"):
        apply_metanet(mbv2, GraphMetanetwork(hidden=8, layers=1), data.val.x[:2])
