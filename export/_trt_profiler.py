"""The ``tensorrt`` latency backend: a TensorRT engine run with ``execute_async_v3``, timed with CUDA events.

The protocol is :class:`~nasforge.export.Profiler`'s; each run is timed with CUDA events recorded on the
engine's stream (:func:`~nasforge.export._gpu_info.event_timer`). An ``.onnx`` model is first built into a
temporary engine. torch (for the CUDA buffers and stream) and tensorrt are imported only when it measures.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from nasforge.errors import ConfigError, ExportError

from ._gpu_info import check_device, event_timer, gpu_fingerprint, require_cuda
from ._latency import MeasureSettings, ModelKind, PreparedRun, Profiler, register_profiler
from ._onnx_io import InputSpec, first_line, load_onnx, single_input_spec
from ._profilers import onnx_input_shape
from ._trt_build import build_engine, make_logger, require_tensorrt
from ._trt_plan import TrtBuildConfig
from ._trt_sidecar import read_sidecar

__all__ = ["ENGINE_SUFFIXES", "TensorrtProfiler"]

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
_TRT_TO_TORCH = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
}


def _torch_dtype(torch_mod: Any, trt_dtype: Any, name: str) -> Any:
    """The torch dtype of an engine tensor's TensorRT type."""
    key = getattr(trt_dtype, "name", str(trt_dtype).rsplit(".", 1)[-1])
    if key not in _TRT_TO_TORCH:
        raise ExportError(
            f"engine tensor '{name}' has type {key}, which the tensorrt profiler cannot allocate"
        )
    return getattr(torch_mod, _TRT_TO_TORCH[key])


@register_profiler("tensorrt")
class TensorrtProfiler(Profiler):
    """A TensorRT engine run with ``execute_async_v3`` on a CUDA stream, each run timed with CUDA events.

    ``model`` is an engine file (``.engine``, ``.plan``, ``.trt``) or an ``.onnx`` file, which is first built
    into a temporary engine (:func:`~nasforge.export.build_engine`) whose batch profile is ``[1, batch]``
    tuned for ``batch``. Buffers are PyTorch CUDA tensors. :meth:`measure` raises :class:`ConfigError` when no
    CUDA device is visible, :class:`MissingDependencyError` when TensorRT is not installed, and
    :class:`ExportError` when the engine cannot be loaded (built by another TensorRT or for another GPU) or run.

    Options (for ONNX input): ``precision``, ``workspace_mb``, ``timing_cache`` (keep it across measurements
    to speed up rebuilds), ``builder_optimization_level``, ``strongly_typed`` (see ``TrtBuildConfig``);
    ``device`` (CUDA device index).
    """

    model_kind = ModelKind.ENGINE_OR_ONNX
    model_hint = "export it with nasforge.export.export_onnx or use backend='torch-cuda' for an nn.Module"

    def __init__(
        self,
        *,
        precision: str = "fp32",
        workspace_mb: int = 1024,
        timing_cache: str | Path | None = None,
        builder_optimization_level: int = 3,
        strongly_typed: bool | None = None,
        device: int = 0,
    ) -> None:
        self.build_config = TrtBuildConfig(
            precision=precision,
            workspace_mb=workspace_mb,
            timing_cache=None if timing_cache is None else Path(timing_cache),
            builder_optimization_level=builder_optimization_level,
            strongly_typed=strongly_typed,
        )
        self.device = check_device("tensorrt", device)

    @contextmanager
    def prepare(self, model: str | Path, settings: MeasureSettings) -> Iterator[PreparedRun]:
        """Load (or build) the engine, bind a random input and the outputs, and time it on its stream."""
        path = Path(model)
        suffix = path.suffix.lower()
        if suffix != ".onnx" and suffix not in ENGINE_SUFFIXES:
            raise ConfigError(
                f"{self.name} measures a TensorRT engine ({', '.join(ENGINE_SUFFIXES)}) or an .onnx file, "
                f"got '{path}'"
            )
        if suffix == ".onnx":  # refuse a batch the graph cannot take before a long build
            onnx_input_shape(single_input_spec(load_onnx(path), path), settings.batch, settings.input_shape, path)
        torch_mod = require_cuda(self.name, self.device, "ort-cpu")
        trt = require_tensorrt()
        with torch_mod.cuda.device(self.device):
            engine_data, engine_meta = self._engine_data(path, settings)
            engine = _EngineRun(trt, torch_mod, engine_data, engine_meta, path)
            try:
                run = engine.bind(self.device, settings)
                summary = None
                if engine_meta:
                    summary = {k: engine_meta.get(k) for k in ("tensorrt", "precision", "plan", "gpu")}
                yield PreparedRun(
                    run,
                    self_timed=True,
                    fingerprint=lambda: gpu_fingerprint(
                        settings.threads,
                        self.device,
                        timer="cuda-events",
                        tensorrt_runtime=str(trt.__version__),
                        engine=summary,
                    ),
                )
            finally:
                engine.close()  # engine, context and buffers are freed on their device

    def _engine_data(self, path: Path, settings: MeasureSettings) -> tuple[bytes, dict[str, Any] | None]:
        """The serialized engine and its sidecar: read from ``path``, or built from the ONNX file."""
        if path.suffix.lower() == ".onnx":
            with tempfile.TemporaryDirectory(prefix="nasforge-trt-") as tmp:
                config = dataclasses.replace(
                    self.build_config,
                    min_batch=1,
                    opt_batch=settings.batch,
                    max_batch=settings.batch,
                    input_shape=settings.input_shape,
                )
                info = build_engine(path, Path(tmp) / (path.stem + ".engine"), config)
                return info.engine_path.read_bytes(), info.to_dict()
        if not path.is_file():
            raise ExportError(f"no TensorRT engine at '{path}'; build one with build_engine")
        return path.read_bytes(), read_sidecar(path)


class _EngineRun:
    """A deserialized engine with its execution context and CUDA buffers; :meth:`close` frees them."""

    def __init__(
        self, trt: Any, torch_mod: Any, engine_data: bytes, engine_meta: dict[str, Any] | None, path: Path
    ) -> None:
        self.trt, self.torch, self.path = trt, torch_mod, path
        logger = make_logger(trt)
        self.runtime = trt.Runtime(logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine_data)
        if self.engine is None:
            built = f" (built with TensorRT {engine_meta.get('tensorrt')})" if engine_meta else ""
            reason = f": {first_line(Exception(logger.errors[0]))}" if logger.errors else ""
            raise ExportError(
                f"TensorRT {trt.__version__} cannot load the engine '{path}'{built}{reason}; an engine runs only "
                "on the TensorRT version and GPU it was built with, rebuild it with build_engine"
            )
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise ExportError(
                f"TensorRT cannot create an execution context for '{path}' (out of GPU memory?)"
            )
        self.buffers: dict[str, Any] = {}

    def close(self) -> None:
        """Drop the buffers, context, engine and runtime (in that order)."""
        self.buffers.clear()
        self.context = self.engine = self.runtime = None

    def bind(self, device_index: int, settings: MeasureSettings) -> Any:
        """Allocate and bind the input and outputs; returns the CUDA-event-timed run."""
        torch_mod, engine, context, path = self.torch, self.engine, self.context, self.path
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == self.trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise ExportError(
                f"'{path}' has {len(inputs)} inputs {inputs}; only single-input engines are supported"
            )
        name = inputs[0]
        shape = self._input_shape(name, settings)
        device = torch_mod.device("cuda", device_index)
        dtype = _torch_dtype(torch_mod, engine.get_tensor_dtype(name), name)
        if dtype.is_floating_point:
            gen = torch_mod.Generator().manual_seed(0)
            x = torch_mod.randn(shape, generator=gen).to(device=device, dtype=dtype)
        else:
            x = torch_mod.zeros(shape, dtype=dtype, device=device)
        self.buffers[name] = x
        for out in names:
            if out != name:
                self.buffers[out] = self._output_buffer(out, device)
        for tensor_name, tensor in self.buffers.items():
            context.set_tensor_address(tensor_name, tensor.data_ptr())
        stream = torch_mod.cuda.Stream(device)
        handle = stream.cuda_stream

        def run() -> None:  # through self: close() frees the context
            if not self.context.execute_async_v3(handle):
                raise ExportError(f"TensorRT failed to run '{path}' (execute_async_v3 returned False)")

        torch_mod.cuda.synchronize(device)  # inputs written on the default stream are ready
        return event_timer(torch_mod, run, stream)

    def _input_shape(self, name: str, settings: MeasureSettings) -> tuple[int, ...]:
        """The input's concrete shape at ``settings.batch``, checked against the engine's profile and set."""
        engine, path, batch = self.engine, self.path, settings.batch
        dims = tuple(None if d < 0 else int(d) for d in engine.get_tensor_shape(name))
        spec = InputSpec(name, np.dtype(np.float32), dims)  # dtype unused
        shape = onnx_input_shape(spec, batch, settings.input_shape, path)
        if dims and dims[0] is None:
            low, _, high = (tuple(s) for s in engine.get_tensor_profile_shape(name, 0))
            if not low[0] <= batch <= high[0]:
                raise ExportError(
                    f"'{path}' accepts batches {low[0]}..{high[0]} but batch={batch} was asked; rebuild it with "
                    f"TrtBuildConfig(max_batch={batch}) or measure with a batch in range"
                )
        if not self.context.set_input_shape(name, shape):
            raise ExportError(f"'{path}' does not accept input shape {shape} for '{name}'")
        return shape

    def _output_buffer(self, out: str, device: Any) -> Any:
        """An empty CUDA tensor for output ``out`` (its shape follows from the input shape)."""
        out_shape = tuple(int(d) for d in self.context.get_tensor_shape(out))
        if any(d < 0 for d in out_shape):
            raise ExportError(
                f"output '{out}' of '{self.path}' has a data-dependent shape {out_shape}; not supported"
            )
        out_dtype = _torch_dtype(self.torch, self.engine.get_tensor_dtype(out), out)
        return self.torch.empty(out_shape, dtype=out_dtype, device=device)
