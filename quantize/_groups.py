"""Operator groups of an FP32 graph, the unit in which selective quantization keeps parts in float.

INT8 does not pay for every operator alike: on onnxruntime's CPU kernels pointwise convolutions gain from it,
while depthwise convolutions, squeeze-excite gates and hard-swish products may gain nothing and pay for the
quantize/dequantize around them. :func:`operator_groups` sorts the graph's nodes into groups a
person recognises (``depthwise``, ``squeeze-excite``, ...) so that :mod:`nasforge.quantize._selective` can
measure, on the target, which groups to leave in float. :func:`fold_float_inputs` makes a node left in float
truly float: onnxruntime's quantizer may still hand it a dequantized bias, which keeps the runtime's fast
blocked-layout kernels from taking it (a float depthwise convolution then ran several times slower).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["GROUP_DESCRIPTIONS", "fold_float_inputs", "name_nodes", "operator_groups"]

GROUP_DESCRIPTIONS: dict[str, str] = {
    "stem": "the first convolution (reads the input image)",
    "depthwise": "depthwise and grouped convolutions",
    "squeeze-excite": "squeeze-excite branches (pooling, 1x1 convolutions, gate) and their gating product",
    "swish": "hard-swish and swish activations (x times a gate of x)",
    "residual-add": "residual additions",
    "conv": "the other convolutions (pointwise and dense)",
    "linear": "MatMul and Gemm layers",
}
_POOLS = ("GlobalAveragePool", "ReduceMean")
_GATES = ("HardSigmoid", "Sigmoid")


def name_nodes(model: Any) -> int:
    """Give every unnamed node a unique name (``<op>_<index>``), in place, so it can be excluded by name;
    returns how many were named. Deterministic: the same graph gets the same names."""
    taken = {n.name for n in model.graph.node if n.name}
    named = 0
    for i, node in enumerate(model.graph.node):
        if node.name:
            continue
        name = f"{node.op_type}_{i}"
        while name in taken:
            name += "_"
        node.name = name
        taken.add(name)
        named += 1
    return named


def operator_groups(model: Any) -> dict[str, list[str]]:
    """Node names per group (:data:`GROUP_DESCRIPTIONS`), empty groups left out; nodes in no group (ReLU,
    pooling, reshapes) follow their neighbours in the quantizer. Unnamed nodes are not listed: call
    :func:`name_nodes` first."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    constants = {i.name for i in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant"}
    graph_inputs = {i.name for i in graph.input} - constants
    se = _squeeze_excite_nodes(graph.node, consumers)
    groups: dict[str, list[str]] = {}
    for node in graph.node:
        group = _group_of(node, se, producers, consumers, constants, graph_inputs)
        if group is not None and node.name:
            groups.setdefault(group, []).append(node.name)
    return {g: groups[g] for g in GROUP_DESCRIPTIONS if g in groups}


def _group_of(node: Any, se: set[str], producers: dict[str, Any], consumers: dict[str, list[Any]],
              constants: set[str], graph_inputs: set[str]) -> str | None:
    op = node.op_type
    if node.name in se:
        return "squeeze-excite"
    if op in ("Conv", "ConvTranspose"):
        if node.input[0] in graph_inputs:
            return "stem"
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        return "depthwise" if group > 1 else "conv"
    if op in ("MatMul", "Gemm"):
        return "linear"
    if op == "HardSwish" or _is_swish(node, producers, consumers):
        return "swish"
    if op == "Add" and len(node.input) == 2 and not any(i in constants for i in node.input):
        return "residual-add"
    return None


def _is_swish(node: Any, producers: dict[str, Any], consumers: dict[str, list[Any]]) -> bool:
    """``node`` is the gate or the product of ``x * gate(x)`` (an inlined hard-swish or a swish)."""
    if node.op_type in _GATES:
        return any(c.op_type == "Mul" and node.input[0] in c.input for c in consumers.get(node.output[0], []))
    if node.op_type == "Mul" and len(node.input) == 2:
        for a, b in (node.input, node.input[::-1]):
            gate = producers.get(a)
            if gate is not None and gate.op_type in _GATES and gate.input[0] == b:
                return True
    return False


def _squeeze_excite_nodes(nodes: Iterable[Any], consumers: dict[str, list[Any]], depth: int = 8) -> set[str]:
    """Names of the nodes of every squeeze-excite branch: a global pooling of ``x``, what follows it, and the
    ``Mul`` that gates ``x`` with the result. A pooling not closed by such a product (a classifier head) is
    not a branch."""
    out: set[str] = set()
    for pool in nodes:
        if pool.op_type not in _POOLS:
            continue
        gated, branch, frontier = pool.input[0], [pool], list(pool.output)
        for _ in range(depth):
            nxt = [c for t in frontier for c in consumers.get(t, [])]
            closing = [c for c in nxt if c.op_type == "Mul" and gated in c.input]
            if closing:
                out.update(n.name for n in branch + closing)
                break
            branch += nxt
            frontier = [o for c in nxt for o in c.output]
            if not frontier:
                break
    return out


def fold_float_inputs(model: Any, names: Iterable[str]) -> int:
    """For each node in ``names`` (left in float), replace inputs after the first that are a
    ``DequantizeLinear`` of a constant by the float constant itself; remove what is then unused. In place;
    returns how many inputs were folded."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    wanted, folded, done = set(names), 0, {}
    for node in graph.node:
        if node.name not in wanted:
            continue
        for k in range(1, len(node.input)):
            dq = producers.get(node.input[k])
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
                continue
            if node.input[k] not in done:
                value = _dequantize(dq, inits)
                done[node.input[k]] = node.input[k] + "_float"
                graph.initializer.append(numpy_helper.from_array(value, done[node.input[k]]))
            node.input[k] = done[node.input[k]]
            folded += 1
    if folded:
        _drop_unused(graph)
    return folded


def _dequantize(dq: Any, inits: dict[str, Any]) -> np.ndarray:
    from onnx import numpy_helper

    x = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
    zero = (numpy_helper.to_array(inits[dq.input[2]]).astype(np.float64)
            if len(dq.input) > 2 and dq.input[2] in inits else np.zeros_like(scale))
    if scale.ndim == 1 and x.ndim > 1:  # per-channel along ``axis``
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((x - zero) * scale).astype(np.float32)


def _drop_unused(graph: Any) -> None:
    """Remove nodes whose outputs nobody reads and initializers nobody uses (repeated to a fixed point)."""
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        keep = [n for n in graph.node if any(o in used for o in n.output)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input} | {i.name for i in graph.input}
    inits = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
