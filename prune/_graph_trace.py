"""Tracing for the network <-> graph map: follow the channel sets ("spaces") of a :mod:`torch.fx` graph.

:class:`Tracer` visits every node of a traced model, merges the channel sets a residual add sums, and records
the conv/linear layers and identity shortcuts in trace order; :mod:`nasforge.prune._graph` builds the
:class:`~nasforge.prune._graph_layout.NetworkGraph` from the result.
"""

from __future__ import annotations

import builtins
import itertools
import operator
from dataclasses import dataclass, field

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from nasforge.errors import ConfigError

from ._graph_layout import BN_SLOTS, SUPPORTED

__all__ = ["Tracer", "PendingLayer", "PendingShortcut"]



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
class PendingLayer:
    """A traced conv/linear layer: module name, module, and the channel sets it reads (src) and writes (dst)."""

    name: str
    module: nn.Module
    src: int
    dst: int


@dataclass(frozen=True)
class PendingShortcut:
    """A traced identity shortcut from channel set src to channel set dst."""

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


class Tracer:
    """Walks an fx graph, following channel sets; :func:`nasforge.prune._graph.network_to_graph` builds the graph."""

    def __init__(self, model: nn.Module, example_input: Tensor | None) -> None:
        self.model = model
        self.modules = dict(model.named_modules())
        self.spaces: list[_Space] = []
        self.values: dict[torch.fx.Node, _Value] = {}
        self.meta: set[torch.fx.Node] = set()
        self.blocks: list[PendingLayer | PendingShortcut] = []
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
            raise ConfigError(f"{SUPPORTED}; {user.name} reads {arg.name} after it was summed into a residual "
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
        return ConfigError(f"{SUPPORTED}; {_describe(node, self.modules)} at {node.name} is not supported")

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
            raise ConfigError(f"{SUPPORTED} with one input tensor; the model also takes '{node.target}'")
        size, flat = None, None
        if self.example_input is not None:
            size, flat = int(self.example_input.shape[1]), self.example_input.dim() == 2
        self.input_space = self.new_space(size, fresh=False)
        self.values[node] = _Value(self.input_space, self.spaces[self.input_space].version, flat)

    def output(self, node: torch.fx.Node) -> None:
        """The model output: its channel set holds the logits."""
        out = node.args[0]
        if not isinstance(out, torch.fx.Node) or out not in self.values:
            raise ConfigError(f"{SUPPORTED} that return one tensor of logits; this model returns {out!r}")
        space = self.find(self.read(out, node).space)
        if space == self.find(self.input_space if self.input_space is not None else -1):
            raise ConfigError(f"{SUPPORTED}; this model returns its input unchanged, so it has no layers")
        self.logit_space = space

    def call_module(self, node: torch.fx.Node) -> None:
        """A leaf module: conv, linear, BN, or a channel-keeping op."""
        name = str(node.target)
        module = self.modules[name]
        if any(True for _ in module.parameters(recurse=False)) or isinstance(module, nn.modules.batchnorm._BatchNorm):
            if name in self.called:
                raise ConfigError(f"{SUPPORTED} whose layers run once; '{name}' is called more than once at "
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
                raise ConfigError(f"{SUPPORTED}; conv '{name}' at {node.name} reads a flattened tensor")
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
        self.blocks.append(PendingLayer(name, module, src, dst))
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
            raise ConfigError(f"{SUPPORTED} with at most {BN_SLOTS} BatchNorms per channel set; at {node.name} "
                              f"the same channels are normalised by {names}")

    def add(self, node: torch.fx.Node) -> None:
        """A residual add: fresh inputs merge into one set, the others join it through identity edges."""
        pair = node.args
        if len(pair) != 2 or node.kwargs or not all(isinstance(a, torch.fx.Node) and a in self.values for a in pair):
            raise ConfigError(f"{SUPPORTED}; {_describe(node, self.modules)} at {node.name} is not supported "
                              "(only the sum of two tensors is, no constants, no alpha)")
        values = [self.read(a, node) for a in pair]
        roots = [self.find(v.space) for v in values]
        if roots[0] == roots[1]:
            raise ConfigError(f"{SUPPORTED}; {node.name} adds two tensors of the same channel set "
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
            raise ConfigError(f"{SUPPORTED}; at {node.name} the biases of '{a.bias}' and '{b.bias}' are summed, "
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
        self.blocks.append(PendingShortcut(src, dst))

    def flatten(self, node: torch.fx.Node, start: object, end: object) -> None:
        """``flatten(x, 1)``: keeps the channel set; the Linear after it checks that the spatial size is 1."""
        value = self.single_input(node)
        if start != 1 or end != -1:
            raise ConfigError(f"{SUPPORTED}; {_describe(node, self.modules)} at {node.name} flattens dims "
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
            raise ConfigError(f"{SUPPORTED}; the mean at {node.name} runs over dims {list(dims)}; only spatial "
                              "dims (2, 3) keep the channels")
        self.values[node] = _Value(value.space, value.version, spatial == {2, 3} and not keepdim)
