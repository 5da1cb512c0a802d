"""TensorRT's side of an INT8 file: is the Q/DQ graph one TensorRT accepts, and how each version builds it.

TensorRT quantizes explicitly from Q/DQ nodes: signed int8, symmetric (zero point 0), per-tensor activations and
per-tensor or per-output-channel weights. TensorRT 11 is strongly typed and takes the precision from exactly
those nodes; TensorRT 10 builds the same file with the ``INT8`` builder flag (:func:`nasforge.export.plan_build`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nasforge.export import TrtBuildConfig, graph_precision, plan_build
from nasforge.onnx_io import load_onnx

__all__ = ["tensorrt_plans", "tensorrt_qdq_problems"]

_INT8 = 3  # onnx.TensorProto.INT8


def tensorrt_qdq_problems(model: Any) -> list[str]:
    """Why TensorRT would refuse or misread the Q/DQ nodes of ``model`` (a path or ModelProto); empty if none.

    Checks: the graph has Q/DQ nodes; every zero point is an int8 initializer of zeros; every scale is a
    positive, finite initializer.
    """
    from onnx import numpy_helper

    if isinstance(model, (str, Path)):
        model = load_onnx(model, check=False)
    inits = {i.name: i for i in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not nodes:
        return ["the graph has no QuantizeLinear/DequantizeLinear nodes (quantize it with target 'tensorrt')"]
    problems: list[str] = []
    for n in nodes:
        scale = inits.get(n.input[1]) if len(n.input) > 1 else None
        if scale is None:
            problems.append(f"{n.name}: scale {n.input[1] if len(n.input) > 1 else '?'} is not a constant")
        else:
            s = numpy_helper.to_array(scale)
            if not (np.isfinite(s).all() and (s > 0).all()):
                problems.append(f"{n.name}: scale has non-positive or non-finite values")
        zp = inits.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if zp is None:
            problems.append(f"{n.name}: no int8 zero point (TensorRT needs an explicit int8 zero point of 0)")
        elif zp.data_type != _INT8:
            problems.append(f"{n.name}: zero point is not int8 (asymmetric uint8 quantization; use target "
                            "'tensorrt')")
        elif np.any(numpy_helper.to_array(zp) != 0):
            problems.append(f"{n.name}: zero point is not 0 (TensorRT quantizes symmetrically)")
    return problems


def tensorrt_plans(path: str | Path) -> dict[str, Any]:
    """How TensorRT 10 (``INT8`` builder flag) and TensorRT 11 (strongly typed) would build this INT8 file."""
    precision = graph_precision(path)
    config = TrtBuildConfig(precision="int8")
    return {f"tensorrt{major}": plan_build(config, major, precision.has_qdq, precision.has_fp16).to_dict()
            for major in (10, 11)}
