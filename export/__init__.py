"""Export subnets to ONNX and measure their latency, here or on a board.

Every public name of ``nasforge.export`` is listed here; the implementation lives in private modules.
Importing this package does not import PyTorch: the names that need it (:func:`export_onnx`,
:data:`EXPORTERS`, :class:`ExportResult`) load it on first use, and ``torch-cpu`` imports it when it measures.

Export: :func:`export_onnx` writes one self-contained ONNX file after checking it against PyTorch in
onnxruntime (:func:`check_parity`); :func:`read_metadata` reads back what it recorded.

Latency: every backend is a :class:`Profiler` registered under a name (:func:`register_profiler`,
:func:`list_profilers`, :func:`get_profiler`); :func:`measure_latency` is the one-call entry point. The base
class runs the measurement protocol; a backend declares its :class:`ModelKind` and implements
:meth:`Profiler.prepare`, returning a :class:`PreparedRun` for the :class:`MeasureSettings` of a call.
Built-in backends: ``ort-cpu`` (an ONNX file in onnxruntime), ``torch-cpu`` (an ``nn.Module`` in PyTorch),
``remote`` (:class:`RemoteProfiler`: an ONNX file sent to a board running the profiling agent) and, on NVIDIA
GPUs, ``ort-cuda``, ``ort-tensorrt``, ``torch-cuda`` and ``tensorrt`` (engines from :func:`build_engine`, for
TensorRT 10 and 11; :func:`plan_build` decides flags vs. strongly typed precision).

Latency tables: :func:`build_latency_table` measures every distinct segment of a supernet on one device and fits
an end-to-end correction; :func:`validate_latency_table` measures its error on fresh subnets. Importing this
package makes the ``"table"`` latency predictor (:class:`TableLatencyPredictor`) available to
:func:`nasforge.nas.get_latency_predictor`.

Latency callables for the lower layers, which receive them instead of importing timing code:
:func:`torch_cpu_latency` (for :func:`nasforge.supernets.sorted.select`) and :func:`device_latency` (a
``devices.yaml`` device as ``f(model) -> ms``, for :func:`nasforge.prune.prune`) and :func:`layer_latency` (one
layer on a device, for the per-layer tables of latency-aware pruning).

Edge agent: ``nasforge agent serve --token-file F`` (or :func:`make_server` with an :class:`AgentConfig`)
measures uploaded ONNX files on the board in a child process: token checked in constant time, size capped
before reading, the upload read within a deadline, self-contained ONNX only, one job at a time, results
cached by model hash, loopback only unless ``allow_remote``. The agent imports no PyTorch: a board installs
nasforge with ``--no-deps`` plus the ``agent`` extra's packages.
:func:`agent_info` returns what an agent reports about itself (limits, backends, CPU flags, runtimes).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from nasforge.registry import announce

from . import _gpu_profilers, _profilers, _remote  # noqa: F401  (register the backends; nothing heavy imported)
from ._agent import AgentConfig, make_server, read_token_file, serve, write_token_file
from ._formats import ExportFormat, get_export_format, list_export_formats, register_export_format
from ._latency import (
    LatencyResult,
    MeasureSettings,
    ModelKind,
    PreparedRun,
    Profiler,
    check_measure_args,
    environment_fingerprint,
    get_profiler,
    list_profilers,
    measure_latency,
    register_profiler,
    timed_runs,
)
from ._latency_build import (
    build_latency_table,
    measure_rounds,
    measure_subnets,
    repeatability,
    validate_latency_table,
)
from ._latency_table import (
    MAX_HOLDOUT_MAPE,
    MIN_HOLDOUT_TAU,
    SEGMENT_RUNS,
    LatencyTable,
    error_stats,
    fingerprint_problems,
    supernet_signature,
)
from ._model_latency import device_latency, layer_latency, torch_cpu_latency
from ._onnx_io import InputSpec, read_metadata, single_input_spec
from ._parity import check_parity
from ._remote import RemoteProfiler, agent_info
from ._rewrite import spatial_means_to_global_pool
from ._slim import slim_onnx
from ._tensorrt import TrtBuildConfig, build_engine, graph_precision, plan_build, tensorrt_version

if TYPE_CHECKING:
    from ._onnx import EXPORTERS, ExportResult, export_onnx
    from ._table_predictor import TableLatencyPredictor

# Names whose module imports torch at load time: imported on first access (PEP 562).
_LAZY = {"EXPORTERS": "._onnx", "ExportResult": "._onnx", "export_onnx": "._onnx",
         "TableLatencyPredictor": "._table_predictor"}

# the "table" latency predictor registers into nas's registry when first asked for (nas imports torch)
announce("latency predictor", "table", f"{__name__}._table_predictor")

__all__ = [
    "EXPORTERS",
    "ExportResult",
    "export_onnx",
    "check_parity",
    "read_metadata",
    "LatencyResult",
    "Profiler",
    "ModelKind",
    "MeasureSettings",
    "PreparedRun",
    "register_profiler",
    "list_profilers",
    "get_profiler",
    "measure_latency",
    "environment_fingerprint",
    "timed_runs",
    "check_measure_args",
    "RemoteProfiler",
    "agent_info",
    "AgentConfig",
    "make_server",
    "LatencyTable",
    "MAX_HOLDOUT_MAPE",
    "MIN_HOLDOUT_TAU",
    "build_latency_table",
    "error_stats",
    "fingerprint_problems",
    "measure_rounds",
    "measure_subnets",
    "repeatability",
    "validate_latency_table",
    "supernet_signature",
    "slim_onnx",
    "spatial_means_to_global_pool",
    "TrtBuildConfig",
    "build_engine",
    "ExportFormat",
    "get_export_format",
    "list_export_formats",
    "register_export_format",
    "graph_precision",
    "plan_build",
    "tensorrt_version",
    "read_token_file",
    "serve",
    "write_token_file",
    "InputSpec",
    "single_input_spec",
    "SEGMENT_RUNS",
    "TableLatencyPredictor",
    "device_latency",
    "layer_latency",
    "torch_cpu_latency",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
