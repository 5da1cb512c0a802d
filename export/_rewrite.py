"""Runtime-friendly rewrites of an exported graph: same result, standard ONNX operators, faster kernels.

PyTorch exports ``x.mean((2, 3), keepdim=True)`` (the squeeze-excite pooling of MobileNetV3 and EfficientNet) as
``ReduceMean``. onnxruntime's CPU provider runs convolutions in a blocked channel layout (NCHWc) and keeps a
``GlobalAveragePool`` inside that layout, but leaves a ``ReduceMean`` outside it: the tensor is reordered out
of the blocked layout and back around every squeeze-excite block (``benchmarks/latency.py`` times exports with and without it; see
BENCHMARKS.md, issue 6 section).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["spatial_means_to_global_pool"]

_SPATIAL = ([2, 3], [-2, -1], [2, -1], [-2, 3])


def spatial_means_to_global_pool(model: Any) -> int:
    """Replace, in place, every ``ReduceMean`` over the two spatial axes of a 4-D tensor with ``keepdims=1`` by
    ``GlobalAveragePool`` (the same values); returns how many nodes were rewritten.

    A node is left alone when its axes are not constants, its input's rank is not known to be 4, or it drops
    the reduced axes.
    """
    means = [n for n in model.graph.node if n.op_type == "ReduceMean" and n.domain in ("", "ai.onnx")]
    if not means:  # no shape inference, no constant lookups
        return 0
    constants = _constants(model, {n.input[1] for n in means if len(n.input) > 1})
    ranks = _ranks(model)
    rewritten = 0
    for node in means:
        axes = _axes(node, constants)
        keep = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
        if axes is None or sorted(axes) not in [sorted(s) for s in _SPATIAL] or not keep:
            continue
        if ranks.get(node.input[0]) != 4:
            continue
        node.op_type = "GlobalAveragePool"
        del node.input[1:]
        del node.attribute[:]
        rewritten += 1
    return rewritten


def _constants(model: Any, names: set[str]) -> dict[str, np.ndarray]:
    """The initializers and ``Constant`` node outputs among ``names`` (the weights are not copied)."""
    from onnx import numpy_helper

    out = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.name in names}
    for node in model.graph.node:
        if (node.op_type == "Constant" and node.output[0] in names and node.attribute
                and node.attribute[0].name == "value"):
            out[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return out


def _axes(node: Any, constants: dict[str, np.ndarray]) -> list[int] | None:
    """The reduced axes of a ``ReduceMean`` (attribute before opset 18, input from 18), or None if unknown."""
    for attr in node.attribute:
        if attr.name == "axes":
            return [int(a) for a in attr.ints]
    if len(node.input) > 1 and node.input[1] in constants:
        return [int(a) for a in np.ravel(constants[node.input[1]])]
    return None


def _ranks(model: Any) -> dict[str, int]:
    """Known tensor ranks after ONNX shape inference (an empty dict when inference fails)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001  shape inference raises many types; no rewrite is then made
        return {}
    out: dict[str, int] = {}
    for value in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        t = value.type.tensor_type
        if t.HasField("shape"):
            out[value.name] = len(t.shape.dim)
    return out
