"""Graph-metanetwork pruning: sparsity regulariser, eval-mode task loss, tiny meta-training with the finetuned
checkpoint choice, pruning with --criterion gmn (max normaliser), the pre-pruned family."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nasforge.data import load_data
from nasforge.errors import CheckpointError, ConfigError
from nasforge.prune import _gmn, create_model, get_criterion, layer_widths, prune, train_classifier
from nasforge.prune._gmn import (
    GroupSparsity,
    MetaTrainConfig,
    _task_loss,
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
    # GroupNormPruner's form: 1/2 sum gamma ||w||^2 with gamma from the weights' own relative norms, so halving
    # every weight leaves gamma and quarters the loss; its gradient on a weight is gamma * w (between w and 4w)
    half = {k: v.detach() * 0.5 for k, v in params.items()}
    assert reg.loss(half).item() == pytest.approx(loss.item() * 0.25, rel=1e-4)
    ratio = params["conv1.weight"].grad / params["conv1.weight"].detach()
    ok = params["conv1.weight"].detach().abs() > 1e-6
    assert ratio[ok].min().item() >= 1 - 1e-4 and ratio[ok].max().item() <= 4 + 1e-4


def test_sparsity_scales_follow_the_current_weights(family: tuple[list[torch.nn.Module], object]) -> None:
    nets, data = family
    reg = GroupSparsity(nets[0], data.train.x[:2], alpha=16.0)
    params = {k: v.detach().clone() for k, v in nets[0].named_parameters()}
    g = max(range(len(reg.groups)), key=lambda j: len(reg.scales[j]))
    strongest = int(reg.scales[g].argmin())  # gamma 1 in the network as built
    for key, dim, idx in reg.groups[g]:  # make that channel the weakest of its group
        params[key] = params[key].index_fill(dim, idx[strongest:strongest + 1], 0.0) + 0.0
        params[key].select(dim, int(idx[strongest])).fill_(1e-4)
    now = reg.scales_for(params)
    assert reg.scales[g][strongest].item() == pytest.approx(1.0)
    assert now[g][strongest].item() == pytest.approx(16.0, rel=1e-4)  # recomputed: now pushed hardest
    assert not torch.allclose(reg.loss(params), reg.loss(params, reg.scales))


def test_task_loss_runs_bn_in_eval_mode(family: tuple[list[torch.nn.Module], object]) -> None:
    """Train-mode BN would make a uniform scaling of the conv before it free; the task loss must see it."""
    nets, data = family
    net = nets[0]
    params = graph_to_params(network_to_graph(net))
    stats = {k: v.detach().clone() for k, v in net.named_buffers()}
    x, y = data.train.x[:64], data.train.y[:64]
    scaled = {**params, "conv1.weight": params["conv1.weight"] * 0.2}
    net.train()  # whatever mode the network is left in
    before, after = _task_loss(net, params, stats, x, y), _task_loss(net, scaled, stats, x, y)
    assert not net.training
    eval_change = abs(after.item() - before.item())
    assert eval_change > 1e-3
    assert all(torch.equal(v, stats[k]) for k, v in net.named_buffers())
    # the bug it guards against: with batch statistics the same scaling changes (almost) nothing
    weights = {k: v for k, v in params.items() if "running" not in k}
    copies = {k: v.clone() for k, v in stats.items()}
    net.train()
    train_a = torch.nn.functional.cross_entropy(torch.func.functional_call(net, {**copies, **weights}, (x,)), y)
    weights["conv1.weight"] = weights["conv1.weight"] * 0.2
    train_b = torch.nn.functional.cross_entropy(torch.func.functional_call(net, {**copies, **weights}, (x,)), y)
    net.eval()
    assert abs(train_b.item() - train_a.item()) < eval_change / 20


def test_gmn_ranks_with_the_max_normaliser() -> None:
    assert get_criterion("gmn").make().normalizer == "max"
    assert get_criterion("l2").make().normalizer == "mean"


def test_tiny_meta_train_and_prune(family: tuple[list[torch.nn.Module], object], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    nets, data = family
    calls: list[int] = []
    real = _gmn._short_finetune

    def counting(model: torch.nn.Module, *args: object) -> None:
        calls.append(sum(p.numel() for p in model.parameters()))
        real(model, *args)

    monkeypatch.setattr(_gmn, "_short_finetune", counting)
    cfg = MetaTrainConfig(steps=4, validate_every=2, hidden=16, layers=2, target="macs=0.5", prune_steps=2,
                          val_finetune_batches=3, batch_size=16)
    records: list[dict[str, float]] = []
    result = meta_train(nets[:2], nets[2], data.train, data.val, cfg, on_step=lambda s, r: records.append(r))
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all("val_acc" in r and "val_acc_pruned" in r for r in records if r["step"] in (2, 4))
    assert result.best_step in (0, 2, 4) and 0 <= result.best_val_acc <= 1
    # every checkpoint candidate (baseline, step 0, 2, 4) was finetuned after pruning, pruned models only
    full = sum(p.numel() for p in nets[2].parameters())
    assert len(calls) == 4 and all(n < full for n in calls)
    assert any(r["val_acc"] != r["val_acc_pruned"] for r in result.history if "val_acc" in r)
    # the networks it trained on are unchanged (the metanetwork writes into copies of their tensors only)
    assert all(not m.training for m in nets)
    path = save_metanet(tmp_path / "mn.pt", result.metanet, family="resnet8", best_step=result.best_step)
    again, info = load_metanet(path)
    graph = network_to_graph(nets[2])
    with torch.no_grad():
        a, b = result.metanet(graph), again(graph)
    assert torch.equal(a.edge_feats, b.edge_feats) and info["best_step"] == result.best_step
    # pruning with the metanetwork: weights rewritten first, then group-L2 to the target in small steps
    pruned, report = prune(nets[2], data.val.x[:2], target="macs=0.5", criterion="gmn", metanet=path, steps=3)
    assert report.macs_after <= 0.5 * report.macs_before and len(report.steps) == 3
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
    # BN running statistics stay the network's own (no loss trains the metanetwork's outputs for them) ...
    assert torch.equal(net.bn1.running_var, nets[0].bn1.running_var)
    # ... unless asked otherwise
    apply_metanet(net, GraphMetanetwork(hidden=16, layers=2), data.val.x[:2], keep_running_stats=False)
    assert not torch.equal(net.bn1.running_var, nets[0].bn1.running_var)


def test_pre_pruned_family_is_narrower_and_cached_apart(tmp_path: Path) -> None:
    from nasforge.prune_job import trained_family

    data = load_data("shapes?n=200&classes=4", image_size=16, seed=0)
    logs: list[str] = []
    plain = trained_family("resnet8?widths=[8,8,16]", data, 1, 1, tmp_path, 0, log=logs.append)
    pre = trained_family("resnet8?widths=[8,8,16]", data, 1, 1, tmp_path, 0, log=logs.append, pre_prune=1.5,
                         pre_prune_epochs=1)
    wide, narrow = layer_widths(plain[0]), layer_widths(pre[0])
    assert sum(narrow.values()) < sum(wide.values()) and narrow["fc"] == wide["fc"] == 4
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.pt"))
    assert len(files) == 2 and files[0] == "pp1.5x-f1/" + files[1]  # the plain file is not reused as pre-pruned
    assert sum("trained network" in m for m in logs) == 1 and sum("pre-pruned" in m for m in logs) == 1
    again = trained_family("resnet8?widths=[8,8,16]", data, 1, 1, tmp_path, 0, log=logs.append, pre_prune=1.5,
                           pre_prune_epochs=1)  # from the cache: same structure and weights, nothing retrained
    assert layer_widths(again[0]) == narrow and len(logs) == 2
    assert all(torch.equal(a, b) for a, b in zip(again[0].state_dict().values(), pre[0].state_dict().values(),
                                                     strict=True))


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
