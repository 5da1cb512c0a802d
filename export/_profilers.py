"""Built-in CPU latency backends: ``ort-cpu`` (an ONNX file in onnxruntime) and ``torch-cpu`` (an nn.Module).

Each only prepares its model and says how to run it once; :class:`~nasforge.export.Profiler` runs the
protocol. :func:`onnx_input_shape` and :func:`random_array` are shared with the GPU backends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nasforge.errors import ConfigError, ExportError

from ._latency import MeasureSettings, ModelKind, PreparedRun, Profiler, register_profiler
from ._onnx_io import InputSpec, load_onnx, open_session, ort_errors, single_input_spec
from ._parity import eval_mode

if TYPE_CHECKING:  # torch is imported only when torch-cpu measures, so ort-cpu runs where torch is absent
    import torch

__all__ = ["OrtCpuProfiler", "TorchCpuProfiler"]


def onnx_input_shape(
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


def random_array(shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    """A seeded random float input, or zeros for integer / bool inputs (always-valid indices)."""
    if np.issubdtype(dtype, np.floating):
        return np.random.default_rng(0).standard_normal(shape).astype(dtype)
    return np.zeros(shape, dtype=dtype)


@register_profiler("ort-cpu")
class OrtCpuProfiler(Profiler):
    """onnxruntime on CPU: optimisation level ALL, ``threads`` intra-op threads, 1 inter-op, sequential.

    Times ``session.run`` on the ONNX file ``model``; see :meth:`Profiler.measure`.
    """

    model_kind = ModelKind.ONNX
    model_hint = "export it with nasforge.export.export_onnx or use backend='torch-cpu' for an nn.Module"

    @contextmanager
    def prepare(self, model: str | Path, settings: MeasureSettings) -> Iterator[PreparedRun]:
        """Open an onnxruntime session on ``model`` and feed it a seeded random input."""
        path = Path(model)
        spec = single_input_spec(load_onnx(path), path)
        shape = onnx_input_shape(spec, settings.batch, settings.input_shape, path)
        feed = {spec.name: random_array(shape, spec.dtype)}
        session = open_session(path, threads=settings.threads, optimization="all")
        yield PreparedRun(
            lambda: session.run(None, feed),
            errors=ort_errors(),
            error_message=f"onnxruntime failed to run '{path}'",
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
    """PyTorch eager on CPU under ``torch.inference_mode()``, ``torch.set_num_threads(threads)``.

    Times ``model(x)``, ``x`` random of shape ``(batch, *input_shape)``; see :meth:`Profiler.measure`. The
    module runs in eval mode; its modes and the thread count are restored afterwards.
    """

    model_kind = ModelKind.MODULE
    model_hint = "use backend='ort-cpu' for .onnx files"
    needs_input_shape = True

    @contextmanager
    def prepare(self, model: torch.nn.Module, settings: MeasureSettings) -> Iterator[PreparedRun]:
        """Make the seeded input, set the threads, put the module in eval mode under inference mode."""
        import torch

        assert settings.input_shape is not None  # needs_input_shape
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(
            (settings.batch, *settings.input_shape), generator=gen, dtype=_module_dtype(model, self.name)
        )
        previous = torch.get_num_threads()
        torch.set_num_threads(settings.threads)
        try:
            with eval_mode(model), torch.inference_mode():
                yield PreparedRun(lambda: model(x))
        finally:
            torch.set_num_threads(previous)
