"""The data of a network graph: feature-layout constants, where every parameter lives, and the graph itself.

See :mod:`nasforge.prune._graph` for the feature layout and the map itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nasforge.errors import ConfigError

__all__ = [
    "NODE_DIM",
    "BN_SLOTS",
    "BIAS_SLOT",
    "NODE_INPUT",
    "NODE_HIDDEN",
    "NODE_LOGIT",
    "EDGE_WEIGHT",
    "EDGE_IDENTITY",
    "BN_DEFAULTS",
    "SUPPORTED",
    "ChannelSet",
    "LayerLayout",
    "NormLayout",
    "ShortcutLayout",
    "GraphLayout",
    "NetworkGraph",
]

NODE_DIM = 9
"""Node feature width: two BN slots of 4 values and one bias."""
BN_SLOTS = 2
BIAS_SLOT = 8
"""Column of the conv/linear bias in the node features."""
NODE_INPUT, NODE_HIDDEN, NODE_LOGIT = 0, 1, 2
EDGE_WEIGHT, EDGE_IDENTITY = 0, 1

BN_DEFAULTS = (1.0, 0.0, 0.0, 1.0)  # what a BN acts with where it has no weight/bias/running stats
SUPPORTED = "graph-metanetwork pruning supports conv/BN/linear/activation/pooling/add networks"




@dataclass(frozen=True)
class ChannelSet:
    """A set of channels that share nodes: a layer's output, or the merged outputs summed by a residual add.

    Attributes:
        start: index of the first node; the set's nodes are ``start .. start + size - 1``.
        size: number of channels.
        kind: ``NODE_INPUT``, ``NODE_HIDDEN`` or ``NODE_LOGIT``.
        producers: names of the conv/linear layers writing into the set (empty for the network input).
    """

    start: int
    size: int
    kind: int
    producers: tuple[str, ...]


@dataclass(frozen=True)
class LayerLayout:
    """Where one conv or linear layer lives in the graph.

    Attributes:
        name: qualified module name.
        weight_key, bias_key: state-dict keys (``bias_key`` is None without bias).
        out_channels, in_channels: weight shape; the layer's edges are ``edge_start + o * in_channels + i``.
        kernel: ``(kh, kw)``; ``(1, 1)`` for a linear layer.
        linear: True for a 2-D (linear) weight.
        edge_start: index of the layer's first edge.
        out_start, in_start: first node of the output and input channel sets.
        dtype: dtype of the weight in the model.
    """

    name: str
    weight_key: str
    bias_key: str | None
    out_channels: int
    in_channels: int
    kernel: tuple[int, int]
    linear: bool
    edge_start: int
    out_start: int
    in_start: int
    dtype: torch.dtype


@dataclass(frozen=True)
class NormLayout:
    """Where one BatchNorm lives: columns ``4 * slot .. 4 * slot + 3`` of nodes ``start .. start + size - 1``.

    Attributes:
        name: qualified module name.
        keys: state-dict keys of (weight, bias, running_mean, running_var); None where the BN lacks one.
        start, size: the nodes it normalises.
        slot: 0 or 1.
        dtype: dtype of the BN's tensors in the model.
    """

    name: str
    keys: tuple[str | None, str | None, str | None, str | None]
    start: int
    size: int
    slot: int
    dtype: torch.dtype


@dataclass(frozen=True)
class ShortcutLayout:
    """An identity shortcut: edges ``edge_start + i`` from node ``src_start + i`` to ``dst_start + i``."""

    src_start: int
    dst_start: int
    size: int
    edge_start: int


@dataclass(frozen=True)
class GraphLayout:
    """Plain data saying where every parameter lives in a :class:`NetworkGraph` (enough to map back).

    Attributes:
        kernel_size: ``K``; edge features have ``K * K`` columns.
        channel_sets: every channel set, in node order.
        layers, norms, shortcuts: conv/linear layers, BatchNorms and identity shortcuts, in trace order.
    """

    kernel_size: int
    channel_sets: tuple[ChannelSet, ...]
    layers: tuple[LayerLayout, ...]
    norms: tuple[NormLayout, ...]
    shortcuts: tuple[ShortcutLayout, ...]


@dataclass
class NetworkGraph:
    """A network as a graph; see the module docstring for the feature layout.

    Attributes:
        node_feats: ``[N, NODE_DIM]`` float32.
        edge_index: ``[2, E]`` int64; row 0 the source node, row 1 the destination node.
        edge_feats: ``[E, K * K]`` float32.
        edge_kind: ``[E]`` int64; ``EDGE_WEIGHT`` (0) or ``EDGE_IDENTITY`` (1).
        node_kind: ``[N]`` int64; ``NODE_INPUT`` (0), ``NODE_HIDDEN`` (1) or ``NODE_LOGIT`` (2).
        layout: where every parameter lives.
    """

    node_feats: Tensor
    edge_index: Tensor
    edge_feats: Tensor
    edge_kind: Tensor
    node_kind: Tensor
    layout: GraphLayout

    @property
    def num_nodes(self) -> int:
        """Number of nodes (channels)."""
        return int(self.node_kind.shape[0])

    @property
    def num_edges(self) -> int:
        """Number of edges (weight kernels and identity links)."""
        return int(self.edge_kind.shape[0])

    def with_features(self, node_feats: Tensor, edge_feats: Tensor) -> NetworkGraph:
        """The same structure with new features.

        Args:
            node_feats: ``[N, NODE_DIM]`` tensor.
            edge_feats: ``[E, K * K]`` tensor.

        Returns:
            A new graph sharing ``edge_index``, the kinds and the layout.

        Raises:
            ConfigError: a shape differs from the current features'.
        """
        for what, new, old in (("node_feats", node_feats, self.node_feats), ("edge_feats", edge_feats, self.edge_feats)):
            if tuple(new.shape) != tuple(old.shape):
                raise ConfigError(f"{what} of shape {tuple(new.shape)} does not fit this graph; "
                                  f"pass a tensor of shape {tuple(old.shape)}")
        return NetworkGraph(node_feats, self.edge_index, edge_feats, self.edge_kind, self.node_kind, self.layout)
