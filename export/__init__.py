"""Export subnets to ONNX and measure their latency.

Every public name of ``nasforge.export`` is listed here; the implementation lives in private modules.

Export: :func:`export_onnx` writes one self-contained ONNX file after checking it against PyTorch in
onnxruntime (:func:`check_parity`); :func:`read_metadata` reads back what it recorded.

Latency: every backend is a :class:`Profiler` registered under a name (:func:`register_profiler`,
:func:`list_profilers`, :func:`get_profiler`); :func:`measure_latency` is the one-call entry point.
Built-in backends: ``ort-cpu`` (an ONNX file in onnxruntime) and ``torch-cpu`` (an ``nn.Module`` in PyTorch).
"""

from __future__ import annotations

from . import _profilers  # noqa: F401  (registers the built-in profilers)
from ._latency import (
    LatencyResult,
    Profiler,
    check_measure_args,
    environment_fingerprint,
    get_profiler,
    list_profilers,
    measure_latency,
    register_profiler,
    timed_runs,
)
from ._onnx import EXPORTERS, ExportResult, export_onnx
from ._onnx_io import read_metadata
from ._parity import check_parity

__all__ = [
    "EXPORTERS",
    "ExportResult",
    "export_onnx",
    "check_parity",
    "read_metadata",
    "LatencyResult",
    "Profiler",
    "register_profiler",
    "list_profilers",
    "get_profiler",
    "measure_latency",
    "environment_fingerprint",
    "timed_runs",
    "check_measure_args",
]
