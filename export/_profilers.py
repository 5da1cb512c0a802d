"""Built-in latency backends: ``ort-cpu`` (an ONNX file in onnxruntime) and ``torch-cpu`` (an nn.Module)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nasforge.errors import ConfigError, ExportError

from ._latency import (
    LatencyResult,
    Profiler,
    check_measure_args,
    environment_fingerprint,
    register_profiler,
    timed_runs,
)
from ._onnx_io import InputSpec, first_line, load_onnx, open_session, ort_errors, single_input_spec
from ._parity import eval_mode

if TYPE_CHECKING:  # torch is imported only when torch-cpu measures, so ort-cpu runs where torch is absent
    import torch

__all__ = ["OrtCpuProfiler", "TorchCpuProfiler"]


def _sample_shape(input_shape: Sequence[int] | None) -> tuple[int, ...] | None:
    """Validate a per-sample shape (no batch dim)."""
    if input_shape is None:
        return None
    shape = tuple(input_shape)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape):
        raise ConfigError(f"input_shape {input_shape!r} is invalid; pass positive ints without the batch dim")
    return shape


def _onnx_shape(
    spec: InputSpec, batch: int, input_shape: tuple[int, ...] | None, path: Path
) -> tuple[int, ...]:
    """The concrete input shape to time ``path`` with: dim 0 is ``batch``, the rest from the graph."""
    if not spec.dims:
        raise ExportError(
            f"input '{spec.name}' of '{path}' is a scalar; a batch dim is needed to measure latency"
        )
    first, rest = spec.dims[0], spec.dims[1:]
    if first is not None and first != batch:
        raise ExportError(
            f"'{path}' has a fixed batch size of {first} but batch={batch} was asked; measure with "
            f"batch={first} or re-export with export_onnx(..., dynamic_batch=True)"
        )
    if input_shape is not None:
        if len(input_shape) != len(rest) or any(
            d is not None and d != s for d, s in zip(rest, input_shape, strict=True)
        ):
            shown = tuple("?" if d is None else d for d in rest)
            raise ConfigError(
                f"input_shape {input_shape} does not fit the graph's {shown}; pass a matching shape"
            )
        return (batch, *input_shape)
    if any(d is None for d in rest):
        shown = tuple("?" if d is None else d for d in rest)
        raise ExportError(
            f"input '{spec.name}' of '{path}' has dynamic dims {shown}; "
            "pass input_shape=(...) without the batch dim"
        )
    return (batch, *rest)  # type: ignore[return-value]


def _random_array(shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    """A seeded random float input, or zeros for integer / bool inputs (always-valid indices)."""
    if np.issubdtype(dtype, np.floating):
        return np.random.default_rng(0).standard_normal(shape).astype(dtype)
    return np.zeros(shape, dtype=dtype)


def _onnx_path(model: object, backend: str) -> Path:
    """Check that ``model`` is a path to an ONNX file."""
    if not isinstance(model, (str, Path)):
        raise ConfigError(
            f"{backend} measures an .onnx file, got {type(model).__name__}; export it with "
            "nasforge.export.export_onnx or use backend='torch-cpu' for an nn.Module"
        )
    return Path(model)


@register_profiler("ort-cpu")
class OrtCpuProfiler(Profiler):
    """onnxruntime on CPU: optimisation level ALL, ``threads`` intra-op threads, 1 inter-op, sequential."""

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
        """Time ``session.run`` on the ONNX file ``model``; see :meth:`Profiler.measure`."""
        check_measure_args(
            batch=batch, runs=runs, warmup=warmup, threads=threads, max_cv=max_cv, max_remeasure=max_remeasure
        )
        path = _onnx_path(model, self.name)
        spec = single_input_spec(load_onnx(path), path)
        feed = {
            spec.name: _random_array(_onnx_shape(spec, batch, _sample_shape(input_shape), path), spec.dtype)
        }
        session = open_session(path, threads=threads, optimization="all")
        try:
            samples, remeasured = timed_runs(
                lambda: session.run(None, feed),
                runs=runs,
                warmup=warmup,
                max_cv=max_cv,
                max_remeasure=max_remeasure,
            )
        except ort_errors() as err:
            raise ExportError(f"onnxruntime failed to run '{path}': {first_line(err)}") from err
        return LatencyResult.from_samples(
            self.name,
            samples,
            batch=batch,
            warmup=warmup,
            remeasured=remeasured,
            threads=threads,
            fingerprint=environment_fingerprint(threads),
        )


def _module_dtype(model: torch.nn.Module, backend: str) -> torch.dtype:
    """Floating dtype of the module's parameters (float32 if it has none); they must be on the CPU."""
    import torch

    dtype = torch.float32
    for param in model.parameters():
        if param.device.type != "cpu":
            raise ConfigError(
                f"{backend} needs a CPU model, found a parameter on {param.device}; call model.cpu()"
            )
        if param.is_floating_point():
            dtype = param.dtype
    return dtype


@register_profiler("torch-cpu")
class TorchCpuProfiler(Profiler):
    """PyTorch eager on CPU under ``torch.inference_mode()``, ``torch.set_num_threads(threads)``."""

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
        """Time ``model(x)``, ``x`` random of shape ``(batch, *input_shape)``; see :meth:`Profiler.measure`.

        The module runs in eval mode; its modes and the thread count are restored afterwards.
        """
        import torch

        check_measure_args(
            batch=batch, runs=runs, warmup=warmup, threads=threads, max_cv=max_cv, max_remeasure=max_remeasure
        )
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(
                f"{self.name} measures an nn.Module, got {type(model).__name__}; "
                "use backend='ort-cpu' for .onnx files"
            )
        shape = _sample_shape(input_shape)
        if shape is None:
            raise ConfigError(f"{self.name} needs input_shape, the shape of one sample without the batch dim")
        gen = torch.Generator().manual_seed(0)
        x = torch.randn((batch, *shape), generator=gen, dtype=_module_dtype(model, self.name))
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with eval_mode(model), torch.inference_mode():
                samples, remeasured = timed_runs(
                    lambda: model(x), runs=runs, warmup=warmup, max_cv=max_cv, max_remeasure=max_remeasure
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
            fingerprint=environment_fingerprint(threads),
        )
