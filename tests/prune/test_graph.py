"""The network <-> graph map of graph-metanetwork pruning: exact round trip, counts, gradients, clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from nasforge.errors import ConfigError
from nasforge.prune._graph import (
    EDGE_IDENTITY,
    EDGE_WEIGHT,
    NODE_DIM,
    NODE_HIDDEN,
    NODE_INPUT,
    NODE_LOGIT,
    NetworkGraph,
    graph_to_params,
    load_graph_,
    network_to_graph,
)


class BasicBlock(nn.Module):
    """CIFAR ResNet block; a 1x1 conv + BN projection shortcut where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x if self.downsample is None else self.downsample(x)
        return torch.relu(out)


class ResNet(nn.Module):
    """Stem, one stage per width (``blocks`` BasicBlocks each), global average pool, linear."""

    def __init__(self, widths: tuple[int, ...] = (8, 16, 32), blocks: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers, cin = [], widths[0]
        for i, width in enumerate(widths):
            for j in range(blocks):
                layers.append(BasicBlock(cin, width, 2 if i > 0 and j == 0 else 1))
                cin = width
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.pool(self.layers(self.stem(x)))
        return self.fc(out.view(out.size(0), -1))


class PlainNet(nn.Module):
    """Mixed kernels (3x3 with bias, 1x1, 5x5), so K = 5."""

    def __init__(self) -> None:
        super().__init__()
        self.c3 = nn.Conv2d(3, 8, 3, padding=1)
        self.c1 = nn.Conv2d(8, 6, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.c5 = nn.Conv2d(6, 4, 5, padding=2, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.gelu(self.c3(x))
        x = F.max_pool2d(torch.relu(self.bn1(self.c1(x))), 2)
        x = F.silu(self.bn2(self.c5(x)))
        return self.head(x.mean((2, 3)))


class CatNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(torch.cat([self.a(x), self.b(x)], 1), 1), 1))


class DepthwiseNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3)
        self.dw = nn.Conv2d(8, 8, 3, groups=8)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dw(self.stem(x)).mean((2, 3)))


class NoPoolNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.conv(x), 1))


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so the round trip checks real values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                for t in (m.weight, m.bias, m.running_mean):
                    t.copy_(torch.randn(t.shape, generator=gen))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) * 3 + 0.1)
    return model.eval()


def covered_keys(model: nn.Module) -> set[str]:
    """Every float parameter and every BN running statistic of ``model``."""
    keys = {k for k, p in model.named_parameters() if p.is_floating_point()}
    return keys | {k for k, _ in model.named_buffers() if k.endswith(("running_mean", "running_var"))}


@pytest.mark.parametrize("make", [ResNet, PlainNet])
def test_round_trip_is_exact_and_loads_into_a_fresh_model(make: type[nn.Module]) -> None:
    torch.manual_seed(0)
    model = randomise_bn(make())
    graph = network_to_graph(model)
    params = graph_to_params(graph)
    state = model.state_dict()
    assert set(params) == covered_keys(model)
    assert all(torch.equal(params[k], state[k]) for k in params)
    torch.manual_seed(1)
    other = make().eval()
    load_graph_(other, graph)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(other(x), model(x))


def test_resnet_counts_kinds_and_identity_edges() -> None:
    widths, classes = (8, 16, 32), 10
    graph = network_to_graph(ResNet(widths, classes=classes))
    # nodes: input, stem, per block conv1 + the add's set (conv2 merged with the projection), logits
    assert graph.num_nodes == 3 + widths[0] + sum(2 * w for w in widths) + classes
    stem = 3 * widths[0]
    blocks, cin = 0, widths[0]
    for w in widths:
        blocks += cin * w + w * w + (cin * w if cin != w else w)  # projection weights, or identity edges
        cin = w
    assert graph.num_edges == stem + blocks + widths[-1] * classes
    assert graph.node_feats.shape == (graph.num_nodes, NODE_DIM) and graph.edge_feats.shape[1] == 9
    assert graph.edge_index.shape == (2, graph.num_edges)
    assert (graph.node_kind == NODE_INPUT).sum() == 3 and (graph.node_kind == NODE_LOGIT).sum() == classes
    assert (graph.node_kind == NODE_HIDDEN).sum() == graph.num_nodes - 3 - classes
    # exactly one identity shortcut (the first block): edge i -> i with the identity kernel
    identity = graph.edge_kind == EDGE_IDENTITY
    assert identity.sum() == widths[0] and len(graph.layout.shortcuts) == 1
    assert torch.equal(graph.edge_feats[identity], F.one_hot(torch.full((8,), 4), 9).float())
    src, dst = graph.edge_index[:, identity]
    assert torch.equal(dst - src, torch.full_like(src, dst[0] - src[0])) and dst[0] != src[0]
    # the projection blocks: the add's channel set carries both BNs (slot 2 filled), the others one
    two_slots = (graph.node_feats[:, 4:8] != 0).any(1)
    assert two_slots.sum() == widths[1] + widths[2]
    assert (graph.edge_kind == EDGE_WEIGHT).sum() == graph.num_edges - widths[0]


def test_mixed_kernels_are_centred_and_biases_go_to_the_bias_slot() -> None:
    model = PlainNet()
    graph = network_to_graph(model, torch.randn(1, 3, 8, 8))
    assert graph.layout.kernel_size == 5 and graph.edge_feats.shape[1] == 25
    first = graph.edge_feats[: 8 * 3].reshape(8, 3, 5, 5)
    assert torch.equal(first[:, :, 1:4, 1:4], model.c3.weight) and first[:, :, 0].abs().sum() == 0
    one = graph.layout.layers[1]
    rows = graph.edge_feats[one.edge_start:one.edge_start + 48]
    assert torch.equal(rows[:, 12], model.c1.weight.flatten()) and rows[:, :12].abs().sum() == 0
    assert torch.equal(graph.node_feats[3:11, 8], model.c3.bias.detach())


def test_gradients_reach_node_and_edge_features() -> None:
    torch.manual_seed(0)
    model = randomise_bn(ResNet())
    graph = network_to_graph(model)
    graph.node_feats.requires_grad_(True)
    graph.edge_feats.requires_grad_(True)
    out = functional_call(model, graph_to_params(graph), (torch.randn(2, 3, 16, 16),))
    out.square().sum().backward()
    for grad in (graph.node_feats.grad, graph.edge_feats.grad):
        assert grad is not None and grad.abs().sum() > 0
    assert graph.edge_feats.grad[graph.edge_kind == EDGE_IDENTITY].abs().sum() == 0
    assert graph.node_feats.grad[:, [0, 1, 4, 5]].abs().sum() > 0  # BN weight/bias; running stats are detached


@pytest.mark.parametrize(("make", "named"), [(CatNet, "function cat"), (DepthwiseNet, "'dw' has groups=8"),
                                             (NoPoolNet, "global pooling before the classifier")])
def test_unsupported_networks_raise_clear_errors(make: type[nn.Module], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        network_to_graph(make())


def test_with_features_keeps_structure_and_checks_shapes() -> None:
    graph = network_to_graph(PlainNet())
    new = graph.with_features(graph.node_feats * 2, graph.edge_feats + 1)
    assert isinstance(new, NetworkGraph) and new.layout is graph.layout and new.edge_index is graph.edge_index
    with pytest.raises(ConfigError, match="shape"):
        graph.with_features(graph.node_feats[:3], graph.edge_feats)


def test_resnet56_converts() -> None:
    model = ResNet((16, 32, 64), blocks=9)
    graph = network_to_graph(model, torch.randn(1, 3, 32, 32))
    assert len(graph.layout.layers) == 56 + 2
