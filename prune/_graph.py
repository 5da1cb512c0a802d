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

from collections.abc import Iterator

import torch
import torch.fx
from torch import Tensor, nn

from nasforge.errors import ConfigError

from ._graph_layout import (
    BIAS_SLOT,
    BN_DEFAULTS,
    EDGE_IDENTITY,
    EDGE_WEIGHT,
    NODE_DIM,
    NODE_HIDDEN,
    NODE_INPUT,
    NODE_LOGIT,
    SUPPORTED,
    ChannelSet,
    GraphLayout,
    LayerLayout,
    NetworkGraph,
    NormLayout,
    ShortcutLayout,
)
from ._graph_trace import PendingLayer, PendingShortcut, Tracer

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


# ----------------------------------------------------------------------------------------------- building




def _kernel_side(blocks: list[PendingLayer | PendingShortcut]) -> int:
    """``K``: the largest kernel side of any conv, made odd (1 without convs)."""
    sides = [max(b.module.kernel_size) for b in blocks if isinstance(b, PendingLayer) and isinstance(b.module, nn.Conv2d)]
    side = max(sides, default=1)
    return side if side % 2 else side + 1


def _offsets(tracer: Tracer) -> tuple[dict[int, int], list[ChannelSet]]:
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


def _layer_layout(block: PendingLayer, starts: dict[int, int], tracer: Tracer, edge_start: int) -> LayerLayout:
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


def _norm_layouts(tracer: Tracer, starts: dict[int, int]) -> Iterator[tuple[NormLayout, nn.Module]]:
    """Layout entries of every BatchNorm, slots numbered per channel set in trace order."""
    for index, space in enumerate(tracer.spaces):
        if space.parent != index:
            continue
        for slot, (name, module) in enumerate(space.norms):
            w, b, mean, var = (f"{name}.{attr}" if getattr(module, attr) is not None else None
                               for attr in ("weight", "bias", "running_mean", "running_var"))
            dtype = next((t.dtype for t in module.state_dict().values() if t.is_floating_point()), torch.float32)
            yield NormLayout(name, (w, b, mean, var), starts[index], int(space.size or 0), slot, dtype), module


def _node_features(tracer: Tracer, starts: dict[int, int], num_nodes: int, device: torch.device
                   ) -> tuple[Tensor, list[NormLayout]]:
    """``[N, NODE_DIM]`` node features (BN slots and biases) and the BN layout."""
    feats = torch.zeros(num_nodes, NODE_DIM, dtype=torch.float32, device=device)
    norms = []
    for layout, module in _norm_layouts(tracer, starts):
        for col, attr in enumerate(("weight", "bias", "running_mean", "running_var")):
            value = getattr(module, attr)
            rows = slice(layout.start, layout.start + layout.size)
            feats[rows, 4 * layout.slot + col] = (value.detach().to(torch.float32) if value is not None
                                                 else BN_DEFAULTS[col])
        norms.append(layout)
    for block in tracer.blocks:
        if isinstance(block, PendingLayer) and block.module.bias is not None:
            start = starts[tracer.find(block.dst)]
            feats[start:start + block.module.bias.shape[0], BIAS_SLOT] = block.module.bias.detach().to(torch.float32)
    return feats, norms


def _model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (CPU for a model without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _build(tracer: Tracer) -> NetworkGraph:
    """Turn a finished trace into a NetworkGraph."""
    device = _model_device(tracer.model)
    side = _kernel_side(tracer.blocks)
    starts, sets = _offsets(tracer)
    num_nodes = sets[-1].start + sets[-1].size
    index, feats, kinds, layers, shortcuts = [], [], [], [], []
    edge_start = 0
    for block in tracer.blocks:
        src, dst = starts[tracer.find(block.src)], starts[tracer.find(block.dst)]
        if isinstance(block, PendingLayer):
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
    tracer = Tracer(model, example_input)
    tracer.run(traced.graph)
    if tracer.logit_space is None:
        raise ConfigError(f"{SUPPORTED}; {type(model).__name__} has no output tensor")
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
