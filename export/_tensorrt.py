"""TensorRT engines from ONNX files, for TensorRT 10 (precision builder flags) and 11+ (precision from the graph).

TensorRT 10 builds *weakly typed* networks by default: ``BuilderFlag.FP16`` lets it pick FP16 kernels anywhere,
and ``BuilderFlag.INT8`` on a graph with QuantizeLinear/DequantizeLinear (Q/DQ) nodes gives explicit
quantization (no calibrator). TensorRT 11 removed those flags, the INT8 calibrator and weak typing: every
network is strongly typed, so an engine runs in exactly the precisions written in the ONNX graph (Q/DQ nodes
for INT8, FP16 casts or FP16 weights for FP16).

The code is split by step, and this module gathers its names:

* :mod:`._trt_plan` — versions, :class:`TrtBuildConfig` and :func:`plan_build`, which decides without
  importing TensorRT which flags a build uses and refuses combinations that cannot give the precision asked;
* :mod:`._trt_graph` — :func:`graph_precision` (Q/DQ nodes, FP16 casts) and :func:`optimization_profile`;
* :mod:`._trt_build` — :func:`build_engine`, which carries the plan out with TensorRT's Python API;
* :mod:`._trt_sidecar` — :class:`EngineInfo` and the engine's JSON sidecar.

Everything that imports ``tensorrt`` does so lazily: these modules import without TensorRT installed.
"""

from __future__ import annotations

from ._trt_build import build_engine, make_logger, require_tensorrt, tensorrt_version
from ._trt_graph import GraphPrecision, graph_precision, optimization_profile
from ._trt_plan import MIN_MAJOR, PRECISIONS, BuildPlan, TrtBuildConfig, parse_version, plan_build
from ._trt_sidecar import EngineInfo, read_sidecar, sidecar_path

_make_logger = make_logger  # the name it had before the split

__all__ = [
    "MIN_MAJOR",
    "PRECISIONS",
    "BuildPlan",
    "EngineInfo",
    "GraphPrecision",
    "TrtBuildConfig",
    "build_engine",
    "graph_precision",
    "optimization_profile",
    "parse_version",
    "plan_build",
    "read_sidecar",
    "require_tensorrt",
    "sidecar_path",
    "tensorrt_version",
]
