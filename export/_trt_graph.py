"""What an ONNX graph means for a TensorRT build: its reduced precisions and the input's optimization profile.

Graph inspection needs no onnx import (the FLOAT16 type code is kept literal).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nasforge.errors import ConfigError

from ._onnx_io import InputSpec, load_onnx
from ._trt_plan import TrtBuildConfig

if TYPE_CHECKING:
    import onnx

__all__ = ["GraphPrecision", "graph_precision", "optimization_profile"]

_QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
_FLOAT16 = 10  # onnx.TensorProto.FLOAT16 (kept literal so graph inspection needs no onnx import)


# ------------------------------------------------------------------------------------------- graph precision
@dataclass(frozen=True)
class GraphPrecision:
    """The reduced precisions written in an ONNX graph.

    Attributes:
        qdq_nodes: QuantizeLinear / DequantizeLinear nodes (any domain, subgraphs included).
        fp16_casts: Cast nodes whose ``to`` is FLOAT16.
        fp16_tensors: FLOAT16 initializers, Constant values and graph inputs.
    """

    qdq_nodes: int = 0
    fp16_casts: int = 0
    fp16_tensors: int = 0

    @property
    def has_qdq(self) -> bool:
        """The graph is explicitly quantized."""
        return self.qdq_nodes > 0

    @property
    def has_fp16(self) -> bool:
        """The graph computes (partly) in FP16."""
        return self.fp16_casts > 0 or self.fp16_tensors > 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {**dataclasses.asdict(self), "has_qdq": self.has_qdq, "has_fp16": self.has_fp16}


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph (If / Loop / Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def graph_precision(model: onnx.ModelProto | str | Path) -> GraphPrecision:
    """Count the Q/DQ nodes, FP16 casts and FP16 tensors of an ONNX model (a ModelProto or a file path).

    Raises:
        ExportError: a path that is not a readable ONNX file.
    """
    if isinstance(model, (str, Path)):
        model = load_onnx(model, load_external_data=False, check=False)
    qdq = casts = tensors = 0
    for graph in _graphs(model.graph):
        tensors += sum(init.data_type == _FLOAT16 for init in graph.initializer)
        tensors += sum(
            inp.type.HasField("tensor_type") and inp.type.tensor_type.elem_type == _FLOAT16
            for inp in graph.input
        )
        for node in graph.node:
            if node.op_type in _QDQ_OPS:
                qdq += 1
            elif node.op_type == "Cast":
                casts += any(a.name == "to" and a.i == _FLOAT16 for a in node.attribute)
            elif node.op_type == "Constant":
                tensors += any(a.name == "value" and a.t.data_type == _FLOAT16 for a in node.attribute)
    return GraphPrecision(qdq_nodes=qdq, fp16_casts=casts, fp16_tensors=tensors)


# ------------------------------------------------------------------------------------ optimization profile
def optimization_profile(
    config: TrtBuildConfig, spec: InputSpec
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None:
    """The (min, opt, max) input shapes of the build's optimization profile, or ``None`` for a static input.

    Raises:
        ConfigError: the input has dynamic dims besides the batch and ``config.input_shape`` does not fill
            them, or ``config.input_shape`` contradicts the graph.
    """
    dims = spec.dims
    if not dims:
        raise ConfigError(f"input '{spec.name}' is a scalar; TensorRT needs a batch dim to build a profile")
    if all(d is not None for d in dims):
        return None
    rest = dims[1:]
    if config.input_shape is not None:
        sample = config.input_shape
        if len(sample) != len(rest) or any(
            d is not None and d != s for d, s in zip(rest, sample, strict=True)
        ):
            shown = tuple("?" if d is None else d for d in rest)
            raise ConfigError(
                f"TensorRT input_shape {sample} does not fit the graph's {shown}; pass a matching shape"
            )
    elif any(d is None for d in rest):
        shown = tuple("?" if d is None else d for d in rest)
        raise ConfigError(
            f"input '{spec.name}' has dynamic dims {shown} besides the batch; pass "
            "TrtBuildConfig(input_shape=(...)) without the batch dim"
        )
    else:
        sample = tuple(d for d in rest if d is not None)
    first = dims[0]
    if first is not None:  # fixed batch, dynamic dims elsewhere
        return (first, *sample), (first, *sample), (first, *sample)
    return (
        (config.min_batch, *sample),
        (config.opt_batch, *sample),
        (config.resolved_max_batch, *sample),
    )
