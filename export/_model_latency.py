"""Latency callables for the lower layers: they receive one of these instead of importing timing code.

:func:`torch_cpu_latency` is a :data:`~nasforge.supernets.sorted.LatencyFn` for
:func:`~nasforge.supernets.sorted.select`; :func:`device_latency` builds the ``f(model) -> ms`` that
:func:`~nasforge.prune.prune` takes as ``latency``. PyTorch is imported when they run, not when this module loads.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._latency import measure_latency

if TYPE_CHECKING:
    import torch
    from torch import nn

    from nasforge.devices import Device

__all__ = ["device_latency", "layer_latency", "torch_cpu_latency"]


def torch_cpu_latency(module: nn.Module, input_shape: tuple[int, ...]) -> float:
    """Median latency in ms of one input of ``input_shape`` (no batch dim) in PyTorch on 1 CPU thread.

    A short protocol (5 warm-up and 30 timed runs, no re-measuring) with :func:`measure_latency` and the
    ``torch-cpu`` backend.
    """
    result = measure_latency(
        module, backend="torch-cpu", input_shape=tuple(input_shape), runs=30, warmup=5, threads=1, max_remeasure=0
    )
    return result.median_ms


def device_latency(device: str | Device, example: torch.Tensor, *, runs: int | None = None,
                   devices_file: str | Path | None = None) -> Callable[[nn.Module], float]:
    """``f(model) -> p50 ms`` on ``device`` (a name from ``devices.yaml``, a built-in such as ``cpu``, or a
    :class:`~nasforge.devices.Device`); the callable carries the device's name as ``device_name``.

    ONNX-file backends (ort-*, tensorrt, remote) get a parity-checked export at the device's batch size;
    ``torch-cpu`` measures the module itself.

    Raises:
        ConfigError: unknown device.
    """
    from nasforge.devices import get_device

    dev = get_device(device, devices_file) if isinstance(device, str) else device
    shape = (dev.batch, *example.shape[1:])
    options = dev.measure_options()
    if runs is not None:
        options["runs"] = runs

    def measure(model: nn.Module) -> float:
        was = model.training
        model.eval()
        try:
            return _measure_on(dev, model, shape, options)
        finally:
            model.train(was)

    measure.device_name = dev.name  # type: ignore[attr-defined]
    return measure


def layer_latency(device: str | Device, *, runs: int | None = None, devices_file: str | Path | None = None
                  ) -> Callable[[nn.Module, tuple[int, ...]], float]:
    """``f(layer, input_shape) -> p50 ms`` of one layer on ``device`` for inputs of ``input_shape`` (no batch
    dim; the device's batch size is used): the measure behind :class:`nasforge.prune.LayerLatencyTable`, which
    latency-aware pruning reads. Carries the device's name as ``device_name``.

    Raises:
        ConfigError: unknown device.
    """
    from nasforge.devices import get_device

    dev = get_device(device, devices_file) if isinstance(device, str) else device
    options = dev.measure_options()
    if runs is not None:
        options["runs"] = runs

    def measure(layer: nn.Module, input_shape: tuple[int, ...]) -> float:
        return _measure_on(dev, layer.eval(), (dev.batch, *input_shape), options)

    measure.device_name = dev.name  # type: ignore[attr-defined]
    return measure


def _measure_on(dev: Device, model: nn.Module, shape: tuple[int, ...], options: dict[str, Any]) -> float:
    """p50 ms of ``model`` (in eval mode) on ``dev``: the module itself on ``torch-cpu``, else its ONNX export."""
    if dev.backend == "torch-cpu":
        return float(dev.profiler().measure(model, batch=dev.batch, input_shape=shape[1:], **options).median_ms)
    import torch

    from ._onnx import export_onnx

    with tempfile.TemporaryDirectory(prefix="nasforge-prune-") as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, torch.randn(shape), path, exporter="torchscript")
        return float(dev.profiler().measure(str(path), batch=dev.batch, **options).median_ms)
