"""The graph metanetwork of "Meta Pruning via Graph Metanetworks": a message-passing network on network graphs.

It reads a :class:`~nasforge.prune._graph.NetworkGraph` (one node per channel, one edge per kernel) and
returns a graph of the same structure with new features, ``input + out_scale * decoder(hidden)``, so that at
initialisation it is close to the identity map. Nothing depends on node order (no positional encodings),
so permuting the channels of a layer permutes the output the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nasforge.errors import ConfigError
from nasforge.prune._graph import EDGE_WEIGHT, NODE_DIM, NetworkGraph

__all__ = ["GraphMetanetwork"]

_NODE_KINDS = 3
_EDGE_KINDS = 2
_STATS = 4  # mean, std, max, min
_DECODER_INIT_GAIN = 0.1  # small decoded updates at init: conv weights are ~0.02, out_scale alone is not enough


def _symlog(x: Tensor) -> Tensor:
    """``sign(x) * log1p(|x|)``: keeps small weights as they are and compresses large BN variances."""
    return torch.sign(x) * torch.log1p(x.abs())


def _shrink_(layer: nn.Linear, gain: float) -> None:
    """Scale a freshly initialised layer's weight and bias by ``gain``."""
    with torch.no_grad():
        layer.weight.mul_(gain)
        layer.bias.mul_(gain)


def _mlp(width_in: int, hidden: int, width_out: int) -> nn.Sequential:
    """Two-layer MLP with SiLU."""
    return nn.Sequential(nn.Linear(width_in, hidden), nn.SiLU(), nn.Linear(hidden, width_out))


def _aggregate(messages: Tensor, target: Tensor, num_nodes: int) -> Tensor:
    """Mean, std, max and min of the messages arriving at each node; zeros where none arrive.

    Args:
        messages: ``[E, H]``.
        target: ``[E]`` node each message goes to.
        num_nodes: ``N``.

    Returns:
        ``[N, 4 * H]``.
    """
    width = messages.shape[1]
    zeros = messages.new_zeros(num_nodes, width)
    count = messages.new_zeros(num_nodes).index_add_(0, target, messages.new_ones(target.shape[0]))
    denom = count.clamp_min(1.0).unsqueeze(1)
    mean = zeros.index_add(0, target, messages) / denom
    square = zeros.index_add(0, target, messages * messages) / denom
    has_any = (count > 0).unsqueeze(1).to(messages.dtype)
    std = torch.sqrt((square - mean * mean).clamp_min(0.0) + 1e-6) * has_any
    spread = target.unsqueeze(1).expand(-1, width)
    high = zeros.scatter_reduce(0, spread, messages, "amax", include_self=False)
    low = zeros.scatter_reduce(0, spread, messages, "amin", include_self=False)
    return torch.cat([mean, std, high, low], dim=1)


class _MessageLayer(nn.Module):
    """One round of gated node-x-edge messages over both edge directions, then node and edge updates."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.node_norm = nn.LayerNorm(hidden)
        self.edge_norm = nn.LayerNorm(hidden)
        self.node_proj = nn.Linear(hidden, 3 * hidden)  # gate from the sender, gate from the receiver, value
        self.edge_proj = nn.Linear(hidden, 3 * hidden)  # gate from the edge, edge value, edge-update input
        self.direction = nn.Parameter(torch.zeros(2, hidden))  # gate bias of forward / reverse messages
        self.update_norm = nn.LayerNorm((1 + 2 * _STATS) * hidden)
        self.node_mlp = _mlp((1 + 2 * _STATS) * hidden, hidden, hidden)
        self.edge_node_norm = nn.LayerNorm(hidden)
        self.edge_nodes = nn.Linear(hidden, 2 * hidden, bias=False)  # source and destination parts
        self.edge_out = nn.Linear(hidden, hidden)

    def messages(self, h: Tensor, edge_gate: Tensor, edge_value: Tensor, src: Tensor, dst: Tensor
                 ) -> tuple[Tensor, Tensor]:
        """Forward (u -> v) and reverse (v -> u) messages of every edge, with shared weights.

        ``m = sigmoid(gate(h_sender, h_receiver, e, direction)) * (W_n h_sender) * (W_e e)``.
        """
        width = self.hidden
        parts = self.node_proj(self.node_norm(h))
        at_src, at_dst = parts.index_select(0, src), parts.index_select(0, dst)
        forward = at_src[:, :width] + at_dst[:, width:2 * width]
        forward += edge_gate + self.direction[0]
        reverse = at_dst[:, :width] + at_src[:, width:2 * width]
        reverse += edge_gate + self.direction[1]
        forward = torch.sigmoid(forward) * at_src[:, 2 * width:]
        reverse = torch.sigmoid(reverse) * at_dst[:, 2 * width:]
        return forward * edge_value, reverse * edge_value

    def forward(self, h: Tensor, e: Tensor, src: Tensor, dst: Tensor) -> tuple[Tensor, Tensor]:
        """Update node states ``h [N, H]`` and edge states ``e [E, H]``."""
        edge_gate, edge_value, edge_self = self.edge_proj(self.edge_norm(e)).chunk(3, dim=1)
        forward, reverse = self.messages(h, edge_gate, edge_value, src, dst)
        num_nodes = h.shape[0]
        gathered = torch.cat([h, _aggregate(forward, dst, num_nodes), _aggregate(reverse, src, num_nodes)], dim=1)
        h = h + self.node_mlp(self.update_norm(gathered))
        from_src, from_dst = self.edge_nodes(self.edge_node_norm(h)).chunk(2, dim=1)
        update = from_src.index_select(0, src) + from_dst.index_select(0, dst)
        update += edge_self
        return h, e + self.edge_out(F.silu(update))


class GraphMetanetwork(nn.Module):
    """Message-passing metanetwork that maps a network graph to a graph of the same structure.

    ``node_out = node_in + out_scale * node_decoder(h)`` and ``edge_out = edge_in + out_scale * edge_decoder(e)``;
    identity-shortcut edges keep their features exactly. Inputs are encoded after ``sign(x) * log1p(|x|)``
    (BN variances can be large); the residual output stays in raw parameter space. The decoders' last layers
    start at a tenth of the default initialisation, so a fresh metanetwork moves each weight by a few 1e-4
    (at ``out_scale=0.01``) and the transformed network computes nearly the same function.

    Args:
        node_dim: node feature width (``NODE_DIM`` = 9).
        edge_dim: edge feature width, ``K * K`` of the graphs it will see (9 for 3x3 kernels).
        hidden: width of node and edge states.
        layers: number of message-passing rounds.
        out_scale: scale of the decoded updates.

    Raises:
        ConfigError: a width or the layer count is not positive, or ``out_scale`` is negative.
    """

    def __init__(self, node_dim: int = NODE_DIM, edge_dim: int = 9, hidden: int = 64, layers: int = 8,
                 out_scale: float = 0.01) -> None:
        super().__init__()
        for name, value in (("node_dim", node_dim), ("edge_dim", edge_dim), ("hidden", hidden), ("layers", layers)):
            if value < 1:
                raise ConfigError(f"GraphMetanetwork {name}={value} must be at least 1")
        if out_scale < 0:
            raise ConfigError(f"GraphMetanetwork out_scale={out_scale} must be >= 0")
        self.node_dim, self.edge_dim, self.hidden, self.out_scale = node_dim, edge_dim, hidden, float(out_scale)
        self.node_encoder = nn.Sequential(_mlp(node_dim + _NODE_KINDS, hidden, hidden), nn.LayerNorm(hidden))
        self.edge_encoder = nn.Sequential(_mlp(edge_dim + _EDGE_KINDS, hidden, hidden), nn.LayerNorm(hidden))
        self.layers = nn.ModuleList(_MessageLayer(hidden) for _ in range(layers))
        self.node_decoder = nn.Sequential(nn.LayerNorm(hidden), _mlp(hidden, hidden, node_dim))
        self.edge_decoder = nn.Sequential(nn.LayerNorm(hidden), _mlp(hidden, hidden, edge_dim))
        for decoder in (self.node_decoder, self.edge_decoder):
            _shrink_(decoder[1][-1], _DECODER_INIT_GAIN)

    def config(self) -> dict[str, int | float]:
        """The constructor arguments, so ``GraphMetanetwork(**net.config())`` rebuilds the architecture."""
        return {"node_dim": self.node_dim, "edge_dim": self.edge_dim, "hidden": self.hidden,
                "layers": len(self.layers), "out_scale": self.out_scale}

    def check(self, graph: NetworkGraph) -> None:
        """Raise ConfigError when ``graph``'s feature widths differ from this metanetwork's."""
        if graph.node_feats.shape[1] != self.node_dim:
            raise ConfigError(f"the graph has {graph.node_feats.shape[1]} node features but the metanetwork was "
                              f"built with node_dim={self.node_dim}; build it with node_dim={graph.node_feats.shape[1]}")
        if graph.edge_feats.shape[1] != self.edge_dim:
            side = graph.layout.kernel_size
            raise ConfigError(f"the graph has {side}x{side} = {graph.edge_feats.shape[1]} edge features but the "
                              f"metanetwork was built with edge_dim={self.edge_dim}; build it with "
                              f"edge_dim={graph.edge_feats.shape[1]}")

    def encode(self, graph: NetworkGraph) -> tuple[Tensor, Tensor]:
        """Initial node ``[N, H]`` and edge ``[E, H]`` states."""
        node_kind = F.one_hot(graph.node_kind, _NODE_KINDS).to(graph.node_feats.dtype)
        edge_kind = F.one_hot(graph.edge_kind, _EDGE_KINDS).to(graph.edge_feats.dtype)
        h = self.node_encoder(torch.cat([_symlog(graph.node_feats), node_kind], dim=1))
        e = self.edge_encoder(torch.cat([_symlog(graph.edge_feats), edge_kind], dim=1))
        return h, e

    def forward(self, graph: NetworkGraph) -> NetworkGraph:
        """Transform a network graph.

        Args:
            graph: from :func:`~nasforge.prune._graph.network_to_graph`.

        Returns:
            A graph with the same structure and layout and the updated features.

        Raises:
            ConfigError: the graph's feature widths differ from ``node_dim`` / ``edge_dim``.
        """
        self.check(graph)
        h, e = self.encode(graph)
        src, dst = graph.edge_index[0], graph.edge_index[1]
        for layer in self.layers:
            h, e = layer(h, e, src, dst)
        node_out = graph.node_feats + self.out_scale * self.node_decoder(h)
        learned = (graph.edge_kind == EDGE_WEIGHT).unsqueeze(1)
        edge_out = torch.where(learned, graph.edge_feats + self.out_scale * self.edge_decoder(e), graph.edge_feats)
        return graph.with_features(node_out, edge_out)
