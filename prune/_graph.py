"""Exact, invertible map between a conv network and a graph (one node per channel, one edge per weight kernel).

This is the network representation of "Meta Pruning via Graph Metanetworks": every channel of the network
(the input image channels, every conv/linear output channel, the logits) is a node, every (output channel,
input channel) pair of a conv or linear layer is an edge whose feature is that kernel, and identity
shortcuts are fixed edges with the identity kernel.

Node features (``NODE_DIM = 9`` columns)::

    [bn1.weight, bn1.bias, bn1.running_mean, bn1.running_var,
     bn2.weight, bn2.bias, bn2.running_mean, bn2.running_var, conv/linear bias]

Two BN slots exist because the output of a residual add with a projection shortcut is normalised by the
main branch's BN and the shortcut's BN. Absent slots are 0; a BN without affine parameters or running
statistics stores the values it acts with (1, 0, 0, 1) in the slots it lacks.

Edge features (``K * K`` columns, ``K`` the largest kernel side, made odd): the kernel flattened and
zero-padded into the centre of ``K x K`` (a ``kh x kw`` kernel starts at row ``(K - kh) // 2``, column
``(K - kw) // 2``); 1x1 convs and linear weights land on the centre element.

The map is found by tracing the model with :mod:`torch.fx` and following channel sets ("spaces"), so it
works for any network built from conv/BN/linear/activation/pooling/add, not for one architecture only.
"""

from __future__ import annotations

import builtins
import itertools
import operator
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from nasforge.errors import ConfigError

__all__ = [
    "NODE_DIM",
    "BIAS_SLOT",
    "NODE_INPUT",
    "NODE_HIDDEN",
    "NODE_LOGIT",
    "EDGE_WEIGHT",
    "EDGE_IDENTITY",
    "ChannelSet",
    "LayerLayout",
    "NormLayout",
    "ShortcutLayout",
    "GraphLayout",
    "NetworkGraph",
    "network_to_graph",
    "graph_to_params",
    "load_graph_",
]

NODE_DIM = 9
"""Node feature width: two BN slots of 4 values and one bias."""
BN_SLOTS = 2
BIAS_SLOT = 8
"""Column of the conv/linear bias in the node features."""
NODE_INPUT, NODE_HIDDEN, NODE_LOGIT = 0, 1, 2
EDGE_WEIGHT, EDGE_IDENTITY = 0, 1

_BN_DEFAULTS = (1.0, 0.0, 0.0, 1.0)  # what a BN acts with where it has no weight/bias/running stats
_SUPPORTED = "graph-metanetwork pruning supports conv/BN/linear/activation/pooling/add networks"


# ----------------------------------------------------------------------------------------------- layout


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


# ----------------------------------------------------------------------------------------------- tracing


@dataclass
class _Space:
    """A channel set while tracing; merged sets point at their root through ``parent``."""

    size: int | None
    parent: int
    version: int
    fresh: bool  # produced on a branch (conv/linear/add) and not yet read by anything else
    producers: list[str] = field(default_factory=list)
    norms: list[tuple[str, nn.Module]] = field(default_factory=list)
    bias: str | None = None


@dataclass(frozen=True)
class _Value:
    """What a traced tensor carries: its channel set, the set's version when it was made, and its rank."""

    space: int
    version: int
    flat: bool | None  # True for [B, C], False for [B, C, H, W], None when unknown (the input)


@dataclass(frozen=True)
class _PendingLayer:
    name: str
    module: nn.Module
    src: int
    dst: int


@dataclass(frozen=True)
class _PendingShortcut:
    src: int
    dst: int


_KEEP_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout1d,
    nn.Dropout2d, nn.AlphaDropout, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)
_KEEP_FUNCTIONS = frozenset({
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu,
    F.mish, F.hardswish, F.hardsigmoid, F.hardtanh, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.softplus,
    F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
})
_KEEP_METHODS = frozenset({"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "contiguous"})
_ADD_FUNCTIONS = frozenset({operator.add, operator.iadd, torch.add})
_ADD_METHODS = frozenset({"add", "add_"})
_META_METHODS = frozenset({"size", "dim"})
_META_ATTRS = frozenset({"shape", "ndim", "dtype", "device"})


def _describe(node: torch.fx.Node, modules: dict[str, nn.Module]) -> str:
    """How an error names the op of ``node``."""
    if node.op == "call_module":
        return f"module {type(modules[str(node.target)]).__name__} '{node.target}'"
    if node.op == "call_method":
        return f"method .{node.target}()"
    if node.op == "get_attr":
        return f"direct parameter access '{node.target}'"
    name = getattr(node.target, "__name__", repr(node.target))
    return f"function {name}"


def _arg(node: torch.fx.Node, index: int, key: str, default: object) -> object:
    """Argument ``index`` / keyword ``key`` of an fx node, or ``default``."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(key, default)


class _Tracer:
    """Walks an fx graph, following channel sets; :meth:`build` turns the result into a NetworkGraph."""

    def __init__(self, model: nn.Module, example_input: Tensor | None) -> None:
        self.model = model
        self.modules = dict(model.named_modules())
        self.spaces: list[_Space] = []
        self.values: dict[torch.fx.Node, _Value] = {}
        self.meta: set[torch.fx.Node] = set()
        self.blocks: list[_PendingLayer | _PendingShortcut] = []
        self.called: set[str] = set()
        self.versions = itertools.count()
        self.example_input = example_input
        self.input_space: int | None = None
        self.logit_space: int | None = None

    # -- spaces

    def find(self, space: int) -> int:
        """Root of ``space`` after merges."""
        while self.spaces[space].parent != space:
            space = self.spaces[space].parent
        return space

    def new_space(self, size: int | None, fresh: bool) -> int:
        """A new channel set; returns its id."""
        self.spaces.append(_Space(size, len(self.spaces), next(self.versions), fresh))
        return len(self.spaces) - 1

    def claim_size(self, space: int, size: int, node: torch.fx.Node, what: str) -> None:
        """Set the size of a set whose size is unknown, or check it."""
        current = self.spaces[space].size
        if current is None:
            self.spaces[space].size = size
        elif current != size:
            raise ConfigError(f"{what} at {node.name} expects {size} channels but its input carries {current}; "
                              "the model's shapes do not match (does it run on its own?)")

    def read(self, arg: torch.fx.Node, user: torch.fx.Node) -> _Value:
        """The value of a traced tensor that ``user`` reads, refusing values summed away by a residual add."""
        value = self.values[arg]
        if self.spaces[self.find(value.space)].version != value.version:
            raise ConfigError(f"{_SUPPORTED}; {user.name} reads {arg.name} after it was summed into a residual "
                              "add, which a channel graph cannot express")
        return value

    def single_input(self, node: torch.fx.Node) -> _Value:
        """The one tensor input of ``node`` (its first argument)."""
        tensors = [a for a in node.all_input_nodes if a in self.values]
        if len(tensors) != 1 or not node.args or node.args[0] is not tensors[0]:
            raise self.unsupported(node)
        return self.read(tensors[0], node)

    def unsupported(self, node: torch.fx.Node) -> ConfigError:
        """The error for an op the graph map does not cover."""
        return ConfigError(f"{_SUPPORTED}; {_describe(node, self.modules)} at {node.name} is not supported")

    # -- visiting

    def run(self, graph: torch.fx.Graph) -> None:
        """Visit every node of the traced graph."""
        for node in graph.nodes:
            if node.op == "placeholder":
                self.placeholder(node)
            elif node.op == "call_module":
                self.call_module(node)
            elif node.op in ("call_function", "call_method"):
                self.call_op(node)
            elif node.op == "output":
                self.output(node)
            else:
                raise self.unsupported(node)

    def placeholder(self, node: torch.fx.Node) -> None:
        """The network input: a channel set that is never fresh."""
        if self.input_space is not None:
            raise ConfigError(f"{_SUPPORTED} with one input tensor; the model also takes '{node.target}'")
        size, flat = None, None
        if self.example_input is not None:
            size, flat = int(self.example_input.shape[1]), self.example_input.dim() == 2
        self.input_space = self.new_space(size, fresh=False)
        self.values[node] = _Value(self.input_space, self.spaces[self.input_space].version, flat)

    def output(self, node: torch.fx.Node) -> None:
        """The model output: its channel set holds the logits."""
        out = node.args[0]
        if not isinstance(out, torch.fx.Node) or out not in self.values:
            raise ConfigError(f"{_SUPPORTED} that return one tensor of logits; this model returns {out!r}")
        space = self.find(self.read(out, node).space)
        if space == self.find(self.input_space if self.input_space is not None else -1):
            raise ConfigError(f"{_SUPPORTED}; this model returns its input unchanged, so it has no layers")
        self.logit_space = space

    def call_module(self, node: torch.fx.Node) -> None:
        """A leaf module: conv, linear, BN, or a channel-keeping op."""
        name = str(node.target)
        module = self.modules[name]
        if any(True for _ in module.parameters(recurse=False)) or isinstance(module, nn.modules.batchnorm._BatchNorm):
            if name in self.called:
                raise ConfigError(f"{_SUPPORTED} whose layers run once; '{name}' is called more than once at "
                                  f"{node.name}, so its weights would need two places in the graph")
            self.called.add(name)
        if type(module) is nn.Conv2d:
            self.layer(node, name, module)
        elif type(module) is nn.Linear:
            self.layer(node, name, module)
        elif type(module) in (nn.BatchNorm2d, nn.BatchNorm1d):
            self.norm(node, name, module)
        elif isinstance(module, _KEEP_MODULES) and not any(True for _ in module.parameters()):
            self.values[node] = self.single_input(node)
        elif isinstance(module, nn.Flatten):
            self.flatten(node, module.start_dim, module.end_dim)
        else:
            raise self.unsupported(node)

    def call_op(self, node: torch.fx.Node) -> None:
        """A function or method call."""
        inputs = node.all_input_nodes
        tensors = [a for a in inputs if a in self.values]
        if not tensors:
            if all(a in self.meta for a in inputs) and inputs:
                self.meta.add(node)  # arithmetic on sizes
                return
            raise self.unsupported(node)
        target = node.target
        is_method = node.op == "call_method"
        if (is_method and target in _META_METHODS) or (target is builtins.getattr and node.args[1] in _META_ATTRS):
            self.meta.add(node)
        elif (not is_method and target in _ADD_FUNCTIONS) or (is_method and target in _ADD_METHODS):
            self.add(node)
        elif (not is_method and target in _KEEP_FUNCTIONS) or (is_method and target in _KEEP_METHODS):
            self.values[node] = self.single_input(node)
        elif target is torch.flatten or (is_method and target == "flatten"):
            self.flatten(node, _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1))
        elif target is torch.mean or (is_method and target == "mean"):
            self.mean(node)
        elif target is torch.reshape or (is_method and target in ("view", "reshape")):
            self.reshape(node)
        else:
            raise self.unsupported(node)

    # -- ops

    def layer(self, node: torch.fx.Node, name: str, module: nn.Conv2d | nn.Linear) -> None:
        """A conv or linear layer: a new fresh channel set fed from its input's set."""
        value = self.single_input(node)
        src = self.find(value.space)
        if isinstance(module, nn.Conv2d):
            if module.groups != 1:
                raise ConfigError(f"graph-metanetwork pruning needs groups=1 convolutions; layer '{name}' has "
                                  f"groups={module.groups} (depthwise/grouped convs have no per-pair kernels)")
            if value.flat:
                raise ConfigError(f"{_SUPPORTED}; conv '{name}' at {node.name} reads a flattened tensor")
            size_in, size_out, flat = module.in_channels, module.out_channels, False
        else:
            size_in, size_out, flat = module.in_features, module.out_features, True
            current = self.spaces[src].size
            if value.flat is False or (current is not None and current != size_in):
                raise ConfigError(f"the graph map needs global pooling before the classifier: linear '{name}' "
                                  f"has in_features={size_in} but its input carries {current} channels"
                                  f"{' per position' if value.flat is False else ''}; pool to 1x1 and flatten first")
        self.claim_size(src, size_in, node, f"layer '{name}'")
        self.spaces[src].fresh = False
        dst = self.new_space(size_out, fresh=True)
        self.spaces[dst].producers.append(name)
        if module.bias is not None:
            self.spaces[dst].bias = name
        self.blocks.append(_PendingLayer(name, module, src, dst))
        self.values[node] = _Value(dst, self.spaces[dst].version, flat)

    def norm(self, node: torch.fx.Node, name: str, module: nn.Module) -> None:
        """A BatchNorm: attaches its features to the input's channel set."""
        value = self.single_input(node)
        space = self.find(value.space)
        self.claim_size(space, int(module.num_features), node, f"BatchNorm '{name}'")
        self.spaces[space].norms.append((name, module))
        self.check_slots(space, node)
        self.values[node] = value

    def check_slots(self, space: int, node: torch.fx.Node) -> None:
        """Refuse a channel set normalised by more than two BatchNorms."""
        names = [n for n, _ in self.spaces[space].norms]
        if len(names) > BN_SLOTS:
            raise ConfigError(f"{_SUPPORTED} with at most {BN_SLOTS} BatchNorms per channel set; at {node.name} "
                              f"the same channels are normalised by {names}")

    def add(self, node: torch.fx.Node) -> None:
        """A residual add: fresh inputs merge into one set, the others join it through identity edges."""
        pair = node.args
        if len(pair) != 2 or node.kwargs or not all(isinstance(a, torch.fx.Node) and a in self.values for a in pair):
            raise ConfigError(f"{_SUPPORTED}; {_describe(node, self.modules)} at {node.name} is not supported "
                              "(only the sum of two tensors is, no constants, no alpha)")
        values = [self.read(a, node) for a in pair]
        roots = [self.find(v.space) for v in values]
        if roots[0] == roots[1]:
            raise ConfigError(f"{_SUPPORTED}; {node.name} adds two tensors of the same channel set "
                              f"({pair[0].name}, {pair[1].name}), which a channel graph cannot express")
        fresh = [r for r in roots if self.spaces[r].fresh]
        dst = fresh[0] if fresh else self.new_space(self.spaces[roots[0]].size, fresh=True)
        for other in fresh[1:]:
            self.merge(dst, other, node)
        for other in roots:
            if other not in fresh:
                self.shortcut(other, dst, node)
        self.spaces[dst].version = next(self.versions)
        self.spaces[dst].fresh = True
        flats = {v.flat for v in values} - {None}
        self.values[node] = _Value(dst, self.spaces[dst].version, flats.pop() if len(flats) == 1 else None)

    def merge(self, dst: int, src: int, node: torch.fx.Node) -> None:
        """Merge channel set ``src`` into ``dst`` (their producers' outputs are summed)."""
        a, b = self.spaces[dst], self.spaces[src]
        if a.size is not None and b.size is not None and a.size != b.size:
            raise ConfigError(f"{node.name} adds tensors of {a.size} and {b.size} channels; the model's shapes "
                              "do not match")
        if a.bias is not None and b.bias is not None:
            raise ConfigError(f"{_SUPPORTED}; at {node.name} the biases of '{a.bias}' and '{b.bias}' are summed, "
                              "which one bias slot cannot hold; drop one of the biases (BN follows anyway)")
        a.size = a.size if a.size is not None else b.size
        a.norms.extend(b.norms)
        a.producers.extend(b.producers)
        a.bias = a.bias or b.bias
        b.parent, b.fresh = dst, False
        self.check_slots(dst, node)

    def shortcut(self, src: int, dst: int, node: torch.fx.Node) -> None:
        """Identity edges from channel set ``src`` into ``dst``."""
        size = self.spaces[src].size
        if size is not None:
            self.claim_size(dst, size, node, "residual add")
        elif self.spaces[dst].size is not None:
            self.spaces[src].size = self.spaces[dst].size
        self.blocks.append(_PendingShortcut(src, dst))

    def flatten(self, node: torch.fx.Node, start: object, end: object) -> None:
        """``flatten(x, 1)``: keeps the channel set; the Linear after it checks that the spatial size is 1."""
        value = self.single_input(node)
        if start != 1 or end != -1:
            raise ConfigError(f"{_SUPPORTED}; {_describe(node, self.modules)} at {node.name} flattens dims "
                              f"{start}..{end}; only flatten(x, 1) after global pooling is supported")
        self.values[node] = _Value(value.space, value.version, True)

    def reshape(self, node: torch.fx.Node) -> None:
        """``x.view(x.size(0), -1)`` and the like: a flatten; any other shape is refused."""
        value = self.single_input(node)
        shape = list(node.args[1:])
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = list(shape[0])
        batch_ok = len(shape) == 2 and (isinstance(shape[0], int) or shape[0] in self.meta)
        if not batch_ok or shape[1] != -1 or node.kwargs:
            raise self.unsupported(node)
        self.values[node] = _Value(value.space, value.version, True)

    def mean(self, node: torch.fx.Node) -> None:
        """A mean over spatial dims (global average pooling)."""
        value = self.single_input(node)
        dims = _arg(node, 1, "dim", None)
        keepdim = _arg(node, 2, "keepdim", False)
        dims = [dims] if isinstance(dims, int) else dims
        if value.flat or not isinstance(dims, (tuple, list)) or not dims or not isinstance(keepdim, bool):
            raise self.unsupported(node)
        spatial = {d % 4 if isinstance(d, int) else -1 for d in dims}
        if not spatial <= {2, 3}:
            raise ConfigError(f"{_SUPPORTED}; the mean at {node.name} runs over dims {list(dims)}; only spatial "
                              "dims (2, 3) keep the channels")
        self.values[node] = _Value(value.space, value.version, spatial == {2, 3} and not keepdim)


# ----------------------------------------------------------------------------------------------- building


def _kernel_side(blocks: list[_PendingLayer | _PendingShortcut]) -> int:
    """``K``: the largest kernel side of any conv, made odd (1 without convs)."""
    sides = [max(b.module.kernel_size) for b in blocks if isinstance(b, _PendingLayer) and isinstance(b.module, nn.Conv2d)]
    side = max(sides, default=1)
    return side if side % 2 else side + 1


def _offsets(tracer: _Tracer) -> tuple[dict[int, int], list[ChannelSet]]:
    """First node of every root channel set, and the sets in node order."""
    starts: dict[int, int] = {}
    sets: list[ChannelSet] = []
    for index, space in enumerate(tracer.spaces):
        if space.parent != index:
            continue
        if space.size is None:
            raise ConfigError("the number of input channels is unknown (no conv or linear reads the input); "
                              "pass example_input to network_to_graph")
        kind = NODE_INPUT if index == tracer.input_space else NODE_LOGIT if index == tracer.logit_space else NODE_HIDDEN
        start = sets[-1].start + sets[-1].size if sets else 0
        starts[index] = start
        sets.append(ChannelSet(start, space.size, kind, tuple(space.producers)))
    return starts, sets


def _pad_kernels(weight: Tensor, side: int) -> Tensor:
    """``[O, I, kh, kw]`` (or ``[O, I]``) weights as ``[O * I, side * side]`` rows, each kernel centred."""
    out_ch, in_ch = weight.shape[:2]
    kh, kw = (weight.shape[2], weight.shape[3]) if weight.dim() == 4 else (1, 1)
    rows = torch.zeros(out_ch * in_ch, side, side, dtype=torch.float32, device=weight.device)
    r0, c0 = (side - kh) // 2, (side - kw) // 2
    rows[:, r0:r0 + kh, c0:c0 + kw] = weight.detach().reshape(out_ch * in_ch, kh, kw).to(torch.float32)
    return rows.reshape(out_ch * in_ch, side * side)


def _edge_block(src_start: int, dst_start: int, out_ch: int, in_ch: int, device: torch.device) -> Tensor:
    """``[2, out_ch * in_ch]`` edge index of a dense layer, edge ``o * in_ch + i`` from ``i`` to ``o``."""
    src = torch.arange(in_ch, device=device).repeat(out_ch) + src_start
    dst = torch.arange(out_ch, device=device).repeat_interleave(in_ch) + dst_start
    return torch.stack([src, dst])


def _layer_layout(block: _PendingLayer, starts: dict[int, int], tracer: _Tracer, edge_start: int) -> LayerLayout:
    """The layout entry of one traced conv/linear layer."""
    module = block.module
    weight = module.weight
    kernel = (int(weight.shape[2]), int(weight.shape[3])) if weight.dim() == 4 else (1, 1)
    return LayerLayout(
        name=block.name, weight_key=f"{block.name}.weight",
        bias_key=f"{block.name}.bias" if module.bias is not None else None,
        out_channels=int(weight.shape[0]), in_channels=int(weight.shape[1]), kernel=kernel,
        linear=weight.dim() == 2, edge_start=edge_start, out_start=starts[tracer.find(block.dst)],
        in_start=starts[tracer.find(block.src)], dtype=weight.dtype,
    )


def _norm_layouts(tracer: _Tracer, starts: dict[int, int]) -> Iterator[tuple[NormLayout, nn.Module]]:
    """Layout entries of every BatchNorm, slots numbered per channel set in trace order."""
    for index, space in enumerate(tracer.spaces):
        if space.parent != index:
            continue
        for slot, (name, module) in enumerate(space.norms):
            w, b, mean, var = (f"{name}.{attr}" if getattr(module, attr) is not None else None
                               for attr in ("weight", "bias", "running_mean", "running_var"))
            dtype = next((t.dtype for t in module.state_dict().values() if t.is_floating_point()), torch.float32)
            yield NormLayout(name, (w, b, mean, var), starts[index], int(space.size or 0), slot, dtype), module


def _node_features(tracer: _Tracer, starts: dict[int, int], num_nodes: int, device: torch.device
                   ) -> tuple[Tensor, list[NormLayout]]:
    """``[N, NODE_DIM]`` node features (BN slots and biases) and the BN layout."""
    feats = torch.zeros(num_nodes, NODE_DIM, dtype=torch.float32, device=device)
    norms = []
    for layout, module in _norm_layouts(tracer, starts):
        for col, attr in enumerate(("weight", "bias", "running_mean", "running_var")):
            value = getattr(module, attr)
            rows = slice(layout.start, layout.start + layout.size)
            feats[rows, 4 * layout.slot + col] = (value.detach().to(torch.float32) if value is not None
                                                 else _BN_DEFAULTS[col])
        norms.append(layout)
    for block in tracer.blocks:
        if isinstance(block, _PendingLayer) and block.module.bias is not None:
            start = starts[tracer.find(block.dst)]
            feats[start:start + block.module.bias.shape[0], BIAS_SLOT] = block.module.bias.detach().to(torch.float32)
    return feats, norms


def _model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (CPU for a model without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _build(tracer: _Tracer) -> NetworkGraph:
    """Turn a finished trace into a NetworkGraph."""
    device = _model_device(tracer.model)
    side = _kernel_side(tracer.blocks)
    starts, sets = _offsets(tracer)
    num_nodes = sets[-1].start + sets[-1].size
    index, feats, kinds, layers, shortcuts = [], [], [], [], []
    edge_start = 0
    for block in tracer.blocks:
        src, dst = starts[tracer.find(block.src)], starts[tracer.find(block.dst)]
        if isinstance(block, _PendingLayer):
            layer = _layer_layout(block, starts, tracer, edge_start)
            layers.append(layer)
            index.append(_edge_block(src, dst, layer.out_channels, layer.in_channels, device))
            feats.append(_pad_kernels(block.module.weight, side))
            count, kind = layer.out_channels * layer.in_channels, EDGE_WEIGHT
        else:
            count, kind = tracer.spaces[tracer.find(block.src)].size or 0, EDGE_IDENTITY
            shortcuts.append(ShortcutLayout(src, dst, count, edge_start))
            index.append(torch.stack([torch.arange(count, device=device) + src, torch.arange(count, device=device) + dst]))
            eye = torch.zeros(count, side * side, dtype=torch.float32, device=device)
            eye[:, (side * side) // 2] = 1.0
            feats.append(eye)
        kinds.append(torch.full((count,), kind, dtype=torch.long, device=device))
        edge_start += count
    node_feats, norms = _node_features(tracer, starts, num_nodes, device)
    node_kind = torch.cat([torch.full((s.size,), s.kind, dtype=torch.long, device=device) for s in sets])
    layout = GraphLayout(side, tuple(sets), tuple(layers), tuple(norms), tuple(shortcuts))
    empty = torch.zeros(0, dtype=torch.long, device=device)
    return NetworkGraph(
        node_feats=node_feats,
        edge_index=torch.cat(index, dim=1) if index else empty.reshape(2, 0),
        edge_feats=torch.cat(feats) if feats else torch.zeros(0, side * side, device=device),
        edge_kind=torch.cat(kinds) if kinds else empty,
        node_kind=node_kind,
        layout=layout,
    )


# ----------------------------------------------------------------------------------------------- public


def network_to_graph(model: nn.Module, example_input: Tensor | None = None) -> NetworkGraph:
    """Map a conv/BN/linear/residual network to its channel graph (exact and invertible).

    Args:
        model: the network; traced with :func:`torch.fx.symbolic_trace`, so its forward must be traceable.
        example_input: optional input batch; fixes the number of input channels when no layer reads the
            input directly.

    Returns:
        The graph; its features are float32 copies of the model's weights (no autograd link to the model),
        so the round trip is bit-exact for float32, float16 and bfloat16 models (float64 is rounded).

    Raises:
        ConfigError: the model cannot be traced, or uses an op, a grouped conv, a shared layer or a
            classifier without global pooling that the graph map does not cover.
    """
    try:
        traced = torch.fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many kinds of errors on untraceable code
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"torch.fx cannot trace {type(model).__name__} ({first}); make its forward free of "
                          "data-dependent control flow") from exc
    tracer = _Tracer(model, example_input)
    tracer.run(traced.graph)
    if tracer.logit_space is None:
        raise ConfigError(f"{_SUPPORTED}; {type(model).__name__} has no output tensor")
    return _build(tracer)


def _layer_weight(edge_feats: Tensor, layer: LayerLayout, side: int) -> Tensor:
    """A conv/linear weight cut back out of the edge features (differentiable views)."""
    count = layer.out_channels * layer.in_channels
    grid = edge_feats[layer.edge_start:layer.edge_start + count].reshape(layer.out_channels, layer.in_channels, side, side)
    kh, kw = layer.kernel
    r0, c0 = (side - kh) // 2, (side - kw) // 2
    weight = grid[:, :, r0, c0] if layer.linear else grid[:, :, r0:r0 + kh, c0:c0 + kw]
    return weight.to(layer.dtype)


def graph_to_params(graph: NetworkGraph) -> dict[str, Tensor]:
    """The model tensors a graph's features encode, keyed by state-dict name.

    Built with indexing and reshapes only, so a loss on ``torch.func.functional_call(model, params, x)``
    back-propagates into ``graph.node_feats`` and ``graph.edge_feats``. BN running statistics are the
    exception: they come back as detached copies, because ``torch.batch_norm`` has no gradient for them and
    updates them in place in train mode (their feature columns get no gradient).

    Args:
        graph: a graph from :func:`network_to_graph` (possibly with new features).

    Returns:
        Conv/linear weights and biases and BN weight/bias/running_mean/running_var; identity edges and
        tensors the graph does not cover (``num_batches_tracked``) are absent.
    """
    layout = graph.layout
    params: dict[str, Tensor] = {}
    for layer in layout.layers:
        params[layer.weight_key] = _layer_weight(graph.edge_feats, layer, layout.kernel_size)
        if layer.bias_key is not None:
            bias = graph.node_feats[layer.out_start:layer.out_start + layer.out_channels, BIAS_SLOT]
            params[layer.bias_key] = bias.to(layer.dtype)
    for norm in layout.norms:
        block = graph.node_feats[norm.start:norm.start + norm.size, 4 * norm.slot:4 * norm.slot + 4]
        for col, key in enumerate(norm.keys):
            if key is None:
                continue
            value = block[:, col].to(norm.dtype)
            # batch_norm cannot differentiate running stats, and updates them in place in train mode
            params[key] = value.detach().clone() if col >= 2 else value
    return params


def load_graph_(model: nn.Module, graph: NetworkGraph) -> None:
    """Copy the tensors a graph encodes into ``model`` in place.

    Args:
        model: a model of the architecture the graph was built from.
        graph: the graph.

    Raises:
        ConfigError: the model lacks a tensor the graph has, or its shape differs.
    """
    targets = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for key, value in graph_to_params(graph).items():
            target = targets.get(key)
            if target is None or target.shape != value.shape:
                found = "missing" if target is None else f"of shape {tuple(target.shape)}"
                raise ConfigError(f"the graph holds '{key}' of shape {tuple(value.shape)} but in the model it is "
                                  f"{found}; load the graph into a model of the architecture it came from")
            target.copy_(value)
