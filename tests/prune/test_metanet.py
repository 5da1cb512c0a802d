"""The graph metanetwork: near identity at init, exact identity edges, permutation equivariance, errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from nasforge.errors import ConfigError
from nasforge.prune._graph import EDGE_IDENTITY, NetworkGraph, graph_to_params, network_to_graph
from nasforge.prune._metanet import GraphMetanetwork


class Block(nn.Module):
    """CIFAR BasicBlock; 1x1 conv + BN projection where the shape changes, identity otherwise."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.short is None else self.short(x)))


class ResNet(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (8, 16, 32), blocks: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers, cin = [], widths[0]
        for i, width in enumerate(widths):
            for j in range(blocks):
                layers.append(Block(cin, width, 2 if i > 0 and j == 0 else 1))
                cin = width
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1))


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    return model.eval()


def permute_hidden(model: ResNet, block: int, perm: Tensor) -> ResNet:
    """Function-preserving copy: conv1's output channels of ``block`` (and its BN, conv2's inputs) permuted."""
    other = copy.deepcopy(model)
    b = other.layers[block]
    with torch.no_grad():
        b.conv1.weight.copy_(b.conv1.weight[perm])
        for t in (b.bn1.weight, b.bn1.bias, b.bn1.running_mean, b.bn1.running_var):
            t.copy_(t[perm])
        b.conv2.weight.copy_(b.conv2.weight[:, perm])
    return other


def relative_change(new: Tensor, old: Tensor) -> float:
    return float((new - old).abs().max() / (old.abs().max() + 1e-12))


@pytest.fixture(scope="module")
def model() -> ResNet:
    torch.manual_seed(0)
    return trained_like(ResNet())


@pytest.fixture(scope="module")
def metanet() -> GraphMetanetwork:
    torch.manual_seed(1)
    return GraphMetanetwork().eval()


def test_fresh_metanetwork_is_near_identity(model: ResNet, metanet: GraphMetanetwork) -> None:
    graph = network_to_graph(model)
    with torch.no_grad():
        out = metanet(graph)
        x = torch.randn(4, 3, 16, 16)
        before, after = model(x), functional_call(model, graph_to_params(out), (x,))
    assert isinstance(out, NetworkGraph) and out.layout is graph.layout and out.edge_index is graph.edge_index
    assert 0 < relative_change(out.node_feats, graph.node_feats) < 0.05
    assert 0 < relative_change(out.edge_feats, graph.edge_feats) < 0.05
    assert float((after - before).norm() / before.norm()) < 0.1
    identity = graph.edge_kind == EDGE_IDENTITY
    assert identity.any() and torch.equal(out.edge_feats[identity], graph.edge_feats[identity])


def test_permuting_hidden_channels_permutes_the_output(model: ResNet) -> None:
    torch.manual_seed(2)
    metanet = GraphMetanetwork(hidden=32, layers=4, out_scale=1.0).eval()  # large updates: a sharp test
    perm = torch.randperm(16)
    permuted = permute_hidden(model, 1, perm)
    with torch.no_grad():
        ours = graph_to_params(metanet(network_to_graph(model)))
        theirs = graph_to_params(metanet(network_to_graph(permuted)))
    expected = dict(ours)
    for key in ("conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"):
        expected[f"layers.1.{key}"] = ours[f"layers.1.{key}"][perm]
    expected["layers.1.conv2.weight"] = ours["layers.1.conv2.weight"][:, perm]
    assert set(theirs) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(theirs[key], value, atol=1e-5, rtol=0)
    assert (ours["layers.1.conv1.weight"] - model.layers[1].conv1.weight).abs().max() > 1e-2  # not a no-op
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        a, b = functional_call(model, ours, (x,)), functional_call(permuted, theirs, (x,))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_gradients_reach_the_metanetwork(model: ResNet) -> None:
    torch.manual_seed(3)
    metanet = GraphMetanetwork(hidden=16, layers=2)
    out = metanet(network_to_graph(model))
    logits = functional_call(model, graph_to_params(out), (torch.randn(2, 3, 16, 16),))
    F.cross_entropy(logits, torch.tensor([1, 2])).backward()
    grads = [p.grad for p in metanet.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0


def test_graph_widths_must_match() -> None:
    five = nn.Sequential(nn.Conv2d(3, 4, 5), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    graph = network_to_graph(five)
    with pytest.raises(ConfigError, match="edge_dim=25"):
        GraphMetanetwork(hidden=8, layers=1)(graph)
    assert GraphMetanetwork(edge_dim=25, hidden=8, layers=1)(graph).edge_feats.shape == graph.edge_feats.shape
    with pytest.raises(ConfigError, match="hidden=0"):
        GraphMetanetwork(hidden=0)
    net = GraphMetanetwork(edge_dim=25, hidden=8, layers=3, out_scale=0.5)
    assert GraphMetanetwork(**net.config()).config() == net.config() == {
        "node_dim": 9, "edge_dim": 25, "hidden": 8, "layers": 3, "out_scale": 0.5}


def test_resnet20_forward_runs_and_size_is_moderate() -> None:
    torch.manual_seed(4)
    model = ResNet((16, 32, 64), blocks=3)
    graph = network_to_graph(model)
    metanet = GraphMetanetwork()
    assert 100_000 < sum(p.numel() for p in metanet.parameters()) < 1_000_000
    with torch.no_grad():
        out = metanet(graph)
    assert graph.num_edges > 30_000 and out.edge_feats.shape[0] == graph.num_edges
    assert out.node_feats.shape[0] == graph.node_feats.shape[0] and bool(torch.isfinite(out.edge_feats).all())
