"""GPU latency backends: ``ort-cuda``, ``ort-tensorrt`` (onnxruntime-gpu), ``torch-cuda`` and ``tensorrt``.

They follow the protocol of :func:`~nasforge.export._latency.timed_runs` (fixed threads, ``warmup`` untimed
runs, ``runs`` timed runs, re-measure while the CV exceeds ``max_cv``). ``torch-cuda`` and ``tensorrt`` time
each run with CUDA events recorded on the stream around the work (:func:`~nasforge.export.timed_runs` with ``self_timed=True``), waiting for the
end event before the next run; the onnxruntime backends time ``run_with_iobinding`` plus a synchronisation of
the outputs with the wall clock, since onnxruntime exposes no stream to record events on. Their fingerprint
adds the GPU (name, compute capability, memory, driver) and the CUDA / TensorRT / onnxruntime-gpu versions
(:func:`gpu_fingerprint`).

Importing this module registers the backends; torch, onnxruntime and tensorrt are imported only when a
backend measures.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nasforge.errors import ConfigError, ExportError

from ._latency import (
    LatencyResult,
    Profiler,
    _version,
    check_measure_args,
    environment_fingerprint,
    register_profiler,
    timed_runs,
)
from ._onnx_io import InputSpec, first_line, load_onnx, ort_errors, single_input_spec
from ._tensorrt import TrtBuildConfig, build_engine, graph_precision, read_sidecar, require_tensorrt

if TYPE_CHECKING:
    import torch

__all__ = [
    "OrtCudaProfiler",
    "OrtTensorrtProfiler",
    "TensorrtProfiler",
    "TorchCudaProfiler",
    "gpu_fingerprint",
    "gpu_info",
]

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
_DRIVER = re.compile(r"Kernel Module(?: for [\w-]+)?\s+([0-9][0-9.]*)")


# ------------------------------------------------------------------------------------------- GPU description
def _driver_version() -> str | None:
    """NVIDIA driver version from /proc/driver/nvidia/version, else from nvidia-smi, else ``None``."""
    try:
        match = _DRIVER.search(
            Path("/proc/driver/nvidia/version").read_text(encoding="utf-8", errors="replace")
        )
        if match:
            return match.group(1)
    except OSError:
        pass
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.strip().splitlines() if done.returncode == 0 else []
    return lines[0].strip() if lines else None


def gpu_info(device: int = 0) -> dict[str, Any]:
    """Describe GPU ``device`` as seen by PyTorch: ``{"name", "compute_capability", "memory_mb", "count",
    "driver", "cuda"}`` (``name`` is ``None`` without a visible CUDA device). Never raises."""
    info: dict[str, Any] = {
        "name": None,
        "compute_capability": None,
        "memory_mb": None,
        "count": 0,
        "driver": _driver_version(),
        "cuda": None,
    }
    try:
        import torch

        info["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(device)
            info.update(
                name=props.name,
                compute_capability=f"{props.major}.{props.minor}",
                memory_mb=int(props.total_memory) >> 20,
                count=torch.cuda.device_count(),
            )
    except Exception:  # noqa: BLE001 - a description must not fail a measurement
        pass
    return info


def gpu_fingerprint(threads: int, device: int = 0, **extra: Any) -> dict[str, Any]:
    """:func:`environment_fingerprint` plus ``"gpu"`` (:func:`gpu_info`) and GPU library versions
    (``tensorrt``, ``onnxruntime-gpu``, ``cuda``, ``cudnn``); ``extra`` items are added as they are."""
    fingerprint = environment_fingerprint(threads)
    gpu = gpu_info(device)
    fingerprint["gpu"] = gpu
    versions = fingerprint["versions"]
    versions["onnxruntime-gpu"] = _version("onnxruntime-gpu")
    versions["tensorrt"] = _tensorrt_version_text()
    versions["cuda"] = gpu["cuda"]
    versions["cudnn"] = None
    try:
        import torch

        versions["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except Exception:  # noqa: BLE001
        pass
    fingerprint.update(extra)
    return fingerprint


def _tensorrt_version_text() -> str | None:
    """Installed TensorRT version from package metadata (no import; Jetson installs carry no metadata)."""
    for dist in ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu11", "tensorrt_lean"):
        version = _version(dist)
        if version:
            return version
    return None


# ---------------------------------------------------------------------------------------------- GPU protocol
def _event_timer(torch_mod: Any, run: Callable[[], object], stream: Any) -> Callable[[], float]:
    """Wrap ``run`` (which enqueues work on ``stream``) into a function returning its CUDA-event time in ns."""
    start = torch_mod.cuda.Event(enable_timing=True)
    end = torch_mod.cuda.Event(enable_timing=True)

    def time_once() -> float:
        start.record(stream)
        run()
        end.record(stream)
        end.synchronize()
        return start.elapsed_time(end) * 1e6  # ms -> ns

    return time_once


# ---------------------------------------------------------------------------------------------------- checks
def _check_device(backend: str, device: object) -> int:
    if isinstance(device, bool) or not isinstance(device, int) or device < 0:
        raise ConfigError(f"{backend} device={device!r} is invalid; pass a CUDA device index >= 0")
    return device


def _require_cuda(backend: str, device: int, cpu_backend: str) -> Any:
    """Import torch and check that CUDA device ``device`` is usable.

    Raises:
        ConfigError: no CUDA device (or a CPU-only PyTorch build), or ``device`` out of range.
    """
    import torch

    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise ConfigError(
            f"{backend} needs an NVIDIA GPU, but torch.cuda.is_available() is False (no CUDA device; torch "
            f"{torch.__version__}, {build}); use backend='{cpu_backend}'"
        )
    count = torch.cuda.device_count()
    if device >= count:
        raise ConfigError(
            f"{backend} device={device} is out of range; this machine has {count} CUDA device(s)"
        )
    return torch


def _require_ort_provider(backend: str, provider: str) -> Any:
    """Import onnxruntime and check that it offers ``provider``.

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


def _float_dtype(model: torch.nn.Module) -> Any:
    """Floating dtype of the module's parameters (float32 if it has none)."""
    import torch

    dtype = torch.float32
    for param in model.parameters():
        if param.is_floating_point():
            dtype = param.dtype
    return dtype


# ---------------------------------------------------------------------------------------------- onnxruntime
class _OrtGpuProfiler(Profiler):
    """Shared code of the onnxruntime GPU backends (not registered)."""

    provider: str = ""

    def __init__(self, *, device: int = 0, io_binding: bool = True) -> None:
        self.device = _check_device(self.name, device)
        if not isinstance(io_binding, bool):
            raise ConfigError(f"{self.name} io_binding={io_binding!r} is invalid; pass True or False")
        self.io_binding = io_binding

    def _providers(self, path: Path) -> list[Any]:
        """The session's provider list, preferred first."""
        raise NotImplementedError

    def _check_graph(self, path: Path) -> None:
        """Refuse a graph the backend's options cannot run as asked (default: accept)."""

    def measure(
        self,
        model: str | Path | torch.nn.Module,
        *,
        input_shape: Sequence[int] | None = None,
        batch: int = 1,
        runs: int = 200,
        warmup: int = 20,
        threads: int = 1,
        max_cv: float = 0.1,
        max_remeasure: int = 2,
    ) -> LatencyResult:
        """Time ``run_with_iobinding`` (input and outputs on the GPU) on the ONNX file ``model``.

        With ``io_binding=False`` it times ``session.run`` instead, host-device copies included. The first
        warm-up run includes onnxruntime's lazy initialisation (and, for TensorRT, the engine build).
        See :meth:`Profiler.measure`.
        """
        from ._profilers import _onnx_shape, _random_array, _sample_shape

        check_measure_args(
            batch=batch, runs=runs, warmup=warmup, threads=threads, max_cv=max_cv, max_remeasure=max_remeasure
        )
        if not isinstance(model, (str, Path)):
            raise ConfigError(
                f"{self.name} measures an .onnx file, got {type(model).__name__}; export it with "
                "nasforge.export.export_onnx or use backend='torch-cuda' for an nn.Module"
            )
        path = Path(model)
        ort = _require_ort_provider(self.name, self.provider)
        spec = single_input_spec(load_onnx(path), path)
        self._check_graph(path)
        x = _random_array(_onnx_shape(spec, batch, _sample_shape(input_shape), path), spec.dtype)

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

        if self.io_binding:
            binding = session.io_binding()
            x_gpu = ort.OrtValue.ortvalue_from_numpy(x, "cuda", self.device)
            binding.bind_ortvalue_input(spec.name, x_gpu)
            for out in session.get_outputs():
                binding.bind_output(out.name, "cuda", self.device)

            def run_once() -> None:
                session.run_with_iobinding(binding)
                binding.synchronize_outputs()

        else:
            feed = {spec.name: x}

            def run_once() -> None:
                session.run(None, feed)

        try:
            samples, remeasured = timed_runs(
                run_once, runs=runs, warmup=warmup, max_cv=max_cv, max_remeasure=max_remeasure
            )
        except ort_errors() as err:
            raise ExportError(
                f"onnxruntime failed to run '{path}' on {self.provider}: {first_line(err)}"
            ) from err
        return LatencyResult.from_samples(
            self.name,
            samples,
            batch=batch,
            warmup=warmup,
            remeasured=remeasured,
            threads=threads,
            fingerprint=gpu_fingerprint(threads, self.device, providers=used, timer="wall-clock"),
        )


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


# -------------------------------------------------------------------------------------------------- PyTorch
@register_profiler("torch-cuda")
class TorchCudaProfiler(Profiler):
    """PyTorch eager on a CUDA device, each run timed with CUDA events on a dedicated stream.

    Options: ``cuda_graphs`` (capture the forward in a ``torch.cuda.CUDAGraph`` after warm-up and time its
    replays: no per-kernel launch overhead), ``device`` (CUDA device index).
    """

    def __init__(self, *, cuda_graphs: bool = False, device: int = 0) -> None:
        if not isinstance(cuda_graphs, bool):
            raise ConfigError(f"torch-cuda cuda_graphs={cuda_graphs!r} is invalid; pass True or False")
        self.cuda_graphs = cuda_graphs
        self.device = _check_device("torch-cuda", device)

    def measure(
        self,
        model: str | Path | torch.nn.Module,
        *,
        input_shape: Sequence[int] | None = None,
        batch: int = 1,
        runs: int = 200,
        warmup: int = 20,
        threads: int = 1,
        max_cv: float = 0.1,
        max_remeasure: int = 2,
    ) -> LatencyResult:
        """Time ``model(x)`` on the GPU, ``x`` random of shape ``(batch, *input_shape)``.

        A copy of the module is moved to the GPU and put in eval mode (``model`` itself is left untouched);
        the thread count is restored afterwards. See :meth:`Profiler.measure`.

        Raises:
            ConfigError: also when no CUDA device is visible, or the forward cannot be captured in a graph.
        """
        from ._profilers import _sample_shape

        check_measure_args(
            batch=batch, runs=runs, warmup=warmup, threads=threads, max_cv=max_cv, max_remeasure=max_remeasure
        )
        import torch

        if not isinstance(model, torch.nn.Module):
            raise ConfigError(
                f"{self.name} measures an nn.Module, got {type(model).__name__}; "
                "use backend='ort-cuda' or 'tensorrt' for .onnx files"
            )
        shape = _sample_shape(input_shape)
        if shape is None:
            raise ConfigError(f"{self.name} needs input_shape, the shape of one sample without the batch dim")
        _require_cuda(self.name, self.device, "torch-cpu")
        device = torch.device("cuda", self.device)
        net = copy.deepcopy(model).to(device).eval()
        x = torch.randn((batch, *shape), generator=torch.Generator().manual_seed(0), dtype=_float_dtype(net))
        x = x.to(device)
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with torch.cuda.device(device):
                stream = torch.cuda.Stream(device)
                stream.wait_stream(torch.cuda.current_stream(device))
                # inference_mode for eager runs; graph capture wants plain no_grad tensors
                grad_off = torch.no_grad() if self.cuda_graphs else torch.inference_mode()
                with torch.cuda.stream(stream), grad_off:
                    if self.cuda_graphs:
                        run = self._capture(torch, net, x, warmup, stream)
                    else:

                        def run() -> None:
                            net(x)

                    samples, remeasured = timed_runs(
                        _event_timer(torch, run, stream),
                        runs=runs,
                        warmup=warmup,
                        max_cv=max_cv,
                        max_remeasure=max_remeasure,
                        self_timed=True,
                    )
        finally:
            torch.set_num_threads(previous)
        return LatencyResult.from_samples(
            self.name,
            samples,
            batch=batch,
            warmup=warmup,
            remeasured=remeasured,
            threads=threads,
            fingerprint=gpu_fingerprint(
                threads, self.device, timer="cuda-events", cuda_graphs=self.cuda_graphs
            ),
        )

    def _capture(self, torch_mod: Any, net: Any, x: Any, warmup: int, stream: Any) -> Callable[[], object]:
        """Warm up eagerly on ``stream``, capture one forward in a CUDA graph, return its ``replay``."""
        graph = torch_mod.cuda.CUDAGraph()
        try:
            for _ in range(max(warmup, 3)):  # cuDNN autotuning and allocator warm-up before capture
                net(x)
            stream.synchronize()
            with torch_mod.cuda.graph(graph, stream=stream):
                net(x)
        except RuntimeError as err:
            raise ConfigError(
                f"{self.name} cannot capture the model in a CUDA graph ({first_line(err)}); "
                "measure with cuda_graphs=False"
            ) from err
        return graph.replay


# ------------------------------------------------------------------------------------------------- TensorRT
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
    into a temporary engine (:func:`~nasforge.export._tensorrt.build_engine`) whose batch profile is
    ``[1, batch]`` tuned for ``batch``. Buffers are PyTorch CUDA tensors.

    Options (for ONNX input): ``precision``, ``workspace_mb``, ``timing_cache`` (keep it across measurements
    to speed up rebuilds), ``builder_optimization_level``, ``strongly_typed`` (see ``TrtBuildConfig``);
    ``device`` (CUDA device index).
    """

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
        self.device = _check_device("tensorrt", device)

    def measure(
        self,
        model: str | Path | torch.nn.Module,
        *,
        input_shape: Sequence[int] | None = None,
        batch: int = 1,
        runs: int = 200,
        warmup: int = 20,
        threads: int = 1,
        max_cv: float = 0.1,
        max_remeasure: int = 2,
    ) -> LatencyResult:
        """Time one ``execute_async_v3`` of the engine (or of an engine built from the ONNX file ``model``).

        See :meth:`Profiler.measure`.

        Raises:
            ConfigError: also when no CUDA device is visible.
            MissingDependencyError: TensorRT is not installed.
            ExportError: the engine cannot be loaded (built by another TensorRT or for another GPU) or run.
        """
        from ._profilers import _onnx_shape, _sample_shape

        check_measure_args(
            batch=batch, runs=runs, warmup=warmup, threads=threads, max_cv=max_cv, max_remeasure=max_remeasure
        )
        if not isinstance(model, (str, Path)):
            raise ConfigError(
                f"{self.name} measures an engine or .onnx file, got {type(model).__name__}; export it with "
                "nasforge.export.export_onnx or use backend='torch-cuda' for an nn.Module"
            )
        path = Path(model)
        suffix = path.suffix.lower()
        if suffix != ".onnx" and suffix not in ENGINE_SUFFIXES:
            raise ConfigError(
                f"{self.name} measures a TensorRT engine ({', '.join(ENGINE_SUFFIXES)}) or an .onnx file, "
                f"got '{path}'"
            )
        sample = _sample_shape(input_shape)
        if suffix == ".onnx":  # refuse a batch the graph cannot take before a long build
            _onnx_shape(single_input_spec(load_onnx(path), path), batch, sample, path)
        torch_mod = _require_cuda(self.name, self.device, "ort-cpu")
        trt = require_tensorrt()
        with torch_mod.cuda.device(self.device):
            if suffix == ".onnx":
                with tempfile.TemporaryDirectory(prefix="nasforge-trt-") as tmp:
                    config = dataclasses.replace(
                        self.build_config, min_batch=1, opt_batch=batch, max_batch=batch, input_shape=sample
                    )
                    info = build_engine(path, Path(tmp) / (path.stem + ".engine"), config)
                    engine_data = info.engine_path.read_bytes()
                    engine_meta = info.to_dict()
            else:
                if not path.is_file():
                    raise ExportError(f"no TensorRT engine at '{path}'; build one with build_engine")
                engine_data = path.read_bytes()
                engine_meta = read_sidecar(path)
            samples, remeasured = self._time_engine(
                trt,
                torch_mod,
                engine_data,
                engine_meta,
                path,
                sample,
                batch,
                runs,
                warmup,
                max_cv,
                max_remeasure,
            )
        summary = None
        if engine_meta:
            summary = {k: engine_meta.get(k) for k in ("tensorrt", "precision", "plan", "gpu")}
        return LatencyResult.from_samples(
            self.name,
            samples,
            batch=batch,
            warmup=warmup,
            remeasured=remeasured,
            threads=threads,
            fingerprint=gpu_fingerprint(
                threads,
                self.device,
                timer="cuda-events",
                tensorrt_runtime=str(trt.__version__),
                engine=summary,
            ),
        )

    def _time_engine(
        self,
        trt: Any,
        torch_mod: Any,
        engine_data: bytes,
        engine_meta: dict[str, Any] | None,
        path: Path,
        sample: tuple[int, ...] | None,
        batch: int,
        runs: int,
        warmup: int,
        max_cv: float,
        max_remeasure: int,
    ) -> tuple[np.ndarray, int]:
        from ._profilers import _onnx_shape
        from ._tensorrt import _make_logger

        logger = _make_logger(trt)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(engine_data)
        if engine is None:
            built = f" (built with TensorRT {engine_meta.get('tensorrt')})" if engine_meta else ""
            reason = f": {first_line(Exception(logger.errors[0]))}" if logger.errors else ""
            raise ExportError(
                f"TensorRT {trt.__version__} cannot load the engine '{path}'{built}{reason}; an engine runs only "
                "on the TensorRT version and GPU it was built with, rebuild it with build_engine"
            )
        context = engine.create_execution_context()
        if context is None:
            raise ExportError(
                f"TensorRT cannot create an execution context for '{path}' (out of GPU memory?)"
            )
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise ExportError(
                f"'{path}' has {len(inputs)} inputs {inputs}; only single-input engines are supported"
            )
        name = inputs[0]
        dtype = _torch_dtype(torch_mod, engine.get_tensor_dtype(name), name)
        dims = tuple(None if d < 0 else int(d) for d in engine.get_tensor_shape(name))
        shape = _onnx_shape(InputSpec(name, np.dtype(np.float32), dims), batch, sample, path)  # dtype unused
        if dims and dims[0] is None:
            low, _, high = (tuple(s) for s in engine.get_tensor_profile_shape(name, 0))
            if not low[0] <= batch <= high[0]:
                raise ExportError(
                    f"'{path}' accepts batches {low[0]}..{high[0]} but batch={batch} was asked; rebuild it with "
                    f"TrtBuildConfig(max_batch={batch}) or measure with a batch in range"
                )
        if not context.set_input_shape(name, shape):
            raise ExportError(f"'{path}' does not accept input shape {shape} for '{name}'")

        device = torch_mod.device("cuda", self.device)
        if dtype.is_floating_point:
            x = torch_mod.randn(shape, generator=torch_mod.Generator().manual_seed(0)).to(
                device=device, dtype=dtype
            )
        else:
            x = torch_mod.zeros(shape, dtype=dtype, device=device)
        buffers = {name: x}
        for out in names:
            if out == name:
                continue
            out_shape = tuple(int(d) for d in context.get_tensor_shape(out))
            if any(d < 0 for d in out_shape):
                raise ExportError(
                    f"output '{out}' of '{path}' has a data-dependent shape {out_shape}; not supported"
                )
            out_dtype = _torch_dtype(torch_mod, engine.get_tensor_dtype(out), out)
            buffers[out] = torch_mod.empty(out_shape, dtype=out_dtype, device=device)
        for tensor_name, tensor in buffers.items():
            context.set_tensor_address(tensor_name, tensor.data_ptr())

        stream = torch_mod.cuda.Stream(device)
        handle = stream.cuda_stream

        def run() -> None:
            if not context.execute_async_v3(handle):
                raise ExportError(f"TensorRT failed to run '{path}' (execute_async_v3 returned False)")

        torch_mod.cuda.synchronize(device)  # inputs written on the default stream are ready
        samples, remeasured = timed_runs(
            _event_timer(torch_mod, run, stream),
            runs=runs,
            warmup=warmup,
            max_cv=max_cv,
            max_remeasure=max_remeasure,
            self_timed=True,
        )
        return samples, remeasured  # engine, context and buffers are freed with this frame
