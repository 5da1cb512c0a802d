"""onnxruntime-gpu latency backends: ``ort-cuda`` and ``ort-tensorrt``.

They time ``run_with_iobinding`` plus a synchronisation of the outputs with the host clock (onnxruntime
exposes no stream to record CUDA events on); with ``io_binding=False`` they time ``session.run``, host-device
copies included. The first warm-up run includes onnxruntime's lazy initialisation (and, for TensorRT, the
engine build). The protocol itself is :class:`~nasforge.export.Profiler`'s. onnxruntime is imported only
when a backend measures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from nasforge.errors import ConfigError, ExportError

from ._gpu_info import check_device, gpu_fingerprint
from ._latency import MeasureSettings, ModelKind, PreparedRun, Profiler, register_profiler
from ._onnx_io import first_line, load_onnx, ort_errors, single_input_spec
from ._profilers import onnx_input_shape, random_array
from ._trt_graph import graph_precision
from ._trt_plan import TrtBuildConfig

__all__ = ["OrtCudaProfiler", "OrtTensorrtProfiler", "require_ort_provider"]


def require_ort_provider(backend: str, provider: str) -> Any:
    """Import onnxruntime and check that it offers ``provider``; returns the module.

    Raises:
        ConfigError: the provider is not available (the message names onnxruntime-gpu).
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    if provider not in available:
        extra = " and TensorRT's libraries" if provider == "TensorrtExecutionProvider" else ""
        raise ConfigError(
            f"{backend} needs onnxruntime-gpu{extra}: {provider} is not among onnxruntime "
            f"{ort.__version__}'s providers ({', '.join(available)}); "
            "pip uninstall onnxruntime && pip install onnxruntime-gpu"
        )
    return ort


class _OrtGpuProfiler(Profiler):
    """Shared code of the onnxruntime GPU backends (not registered)."""

    provider: str = ""
    model_kind = ModelKind.ONNX
    model_hint = "export it with nasforge.export.export_onnx or use backend='torch-cuda' for an nn.Module"

    def __init__(self, *, device: int = 0, io_binding: bool = True) -> None:
        self.device = check_device(self.name, device)
        if not isinstance(io_binding, bool):
            raise ConfigError(f"{self.name} io_binding={io_binding!r} is invalid; pass True or False")
        self.io_binding = io_binding

    def _providers(self, path: Path) -> list[Any]:
        """The session's provider list, preferred first."""
        raise NotImplementedError

    def _check_graph(self, path: Path) -> None:
        """Refuse a graph the backend's options cannot run as asked (default: accept)."""

    @contextmanager
    def prepare(self, model: str | Path, settings: MeasureSettings) -> Iterator[PreparedRun]:
        """Open a session on the provider with the input bound on the GPU (``io_binding``) or fed from the host.

        Raises:
            ConfigError: onnxruntime-gpu (or the provider's libraries) missing, or a fallback to another
                provider.
        """
        path = Path(model)
        ort = require_ort_provider(self.name, self.provider)
        spec = single_input_spec(load_onnx(path), path)
        self._check_graph(path)
        x = random_array(onnx_input_shape(spec, settings.batch, settings.input_shape, path), spec.dtype)
        session = self._open_session(ort, path, settings.threads)
        used = session.get_providers()
        yield PreparedRun(
            self._runner(ort, session, spec.name, x),
            fingerprint=lambda: gpu_fingerprint(settings.threads, self.device, providers=used, timer="wall-clock"),
            errors=ort_errors(),
            error_message=f"onnxruntime failed to run '{path}' on {self.provider}",
        )

    def _open_session(self, ort: Any, path: Path, threads: int) -> Any:
        """An inference session on :attr:`provider`; refuses one that fell back to another provider."""
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=self._providers(path))
        except ort_errors() as err:
            raise ExportError(
                f"onnxruntime cannot load '{path}' on {self.provider}: {first_line(err)}"
            ) from err
        used = session.get_providers()
        if not used or used[0] != self.provider:
            raise ConfigError(
                f"{self.name}: onnxruntime fell back to {used} instead of {self.provider} (its CUDA/cuDNN"
                f"{'/TensorRT' if 'Tensorrt' in self.provider else ''} libraries did not load; check that "
                "their versions match onnxruntime-gpu's)"
            )
        return session

    def _runner(self, ort: Any, session: Any, input_name: str, x: np.ndarray) -> Callable[[], None]:
        """One run: ``run_with_iobinding`` and an output sync, or ``session.run`` without IO binding."""
        if not self.io_binding:
            feed = {input_name: x}
            return lambda: session.run(None, feed)  # type: ignore[no-any-return]
        binding = session.io_binding()
        x_gpu = ort.OrtValue.ortvalue_from_numpy(x, "cuda", self.device)
        binding.bind_ortvalue_input(input_name, x_gpu)
        for out in session.get_outputs():
            binding.bind_output(out.name, "cuda", self.device)

        def run_once() -> None:
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()

        return run_once


@register_profiler("ort-cuda")
class OrtCudaProfiler(_OrtGpuProfiler):
    """onnxruntime-gpu with the CUDA execution provider (CPU fallback for unsupported nodes).

    Options: ``device`` (CUDA device index), ``io_binding`` (keep input and outputs on the GPU; default True).
    """

    provider = "CUDAExecutionProvider"

    def _providers(self, path: Path) -> list[Any]:
        return [(self.provider, {"device_id": str(self.device)}), "CPUExecutionProvider"]


@register_profiler("ort-tensorrt")
class OrtTensorrtProfiler(_OrtGpuProfiler):
    """onnxruntime-gpu with the TensorRT execution provider (CUDA, then CPU, for what TensorRT does not take).

    Options: ``precision`` (``"fp32"``, ``"fp16"`` -> ``trt_fp16_enable``, ``"int8"`` -> ``trt_int8_enable``,
    which needs a Q/DQ graph), ``workspace_mb``, ``cache_dir`` (engine and timing caches, so a second
    measurement does not rebuild; default none), ``device``, ``io_binding``.
    """

    provider = "TensorrtExecutionProvider"

    def __init__(
        self,
        *,
        precision: str = "fp32",
        workspace_mb: int = 1024,
        cache_dir: str | Path | None = None,
        device: int = 0,
        io_binding: bool = True,
    ) -> None:
        super().__init__(device=device, io_binding=io_binding)
        TrtBuildConfig(precision=precision, workspace_mb=workspace_mb)  # validates both
        self.precision, self.workspace_mb = precision, workspace_mb
        self.cache_dir = None if cache_dir is None else Path(cache_dir)

    def _check_graph(self, path: Path) -> None:
        if self.precision == "int8" and not graph_precision(path).has_qdq:
            raise ConfigError(
                "precision='int8' needs an ONNX graph with QuantizeLinear/DequantizeLinear (Q/DQ) nodes and "
                f"'{path}' has none; quantize it first (nasforge quantize) and measure that file"
            )

    def _providers(self, path: Path) -> list[Any]:
        options = {
            "device_id": str(self.device),
            "trt_max_workspace_size": str(self.workspace_mb << 20),
            "trt_fp16_enable": str(self.precision == "fp16"),
            "trt_int8_enable": str(self.precision == "int8"),
        }
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            options.update(
                trt_engine_cache_enable="True",
                trt_engine_cache_path=str(self.cache_dir),
                trt_timing_cache_enable="True",
                trt_timing_cache_path=str(self.cache_dir),
            )
        return [
            (self.provider, options),
            ("CUDAExecutionProvider", {"device_id": str(self.device)}),
            "CPUExecutionProvider",
        ]
