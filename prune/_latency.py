"""Measured latency of a (pruned) PyTorch model on a named device: export to ONNX, then that device's profiler."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from nasforge.devices import Device

__all__ = ["device_latency"]


def device_latency(device: str | Device, example: torch.Tensor, *, runs: int | None = None,
                   devices_file: str | Path | None = None) -> Callable[[nn.Module], float]:
    """``f(model) -> p50 ms`` on ``device`` (a name from ``devices.yaml``, a built-in such as ``cpu``, or a
    :class:`~nasforge.devices.Device`).

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
            if dev.backend == "torch-cpu":
                return float(dev.profiler().measure(model, batch=dev.batch, input_shape=shape[1:],
                                                    **options).median_ms)
            from nasforge.export import export_onnx

            with tempfile.TemporaryDirectory(prefix="nasforge-prune-") as tmp:
                path = Path(tmp) / "model.onnx"
                export_onnx(model, torch.randn(shape), path, exporter="torchscript")
                return float(dev.profiler().measure(str(path), batch=dev.batch, **options).median_ms)
        finally:
            model.train(was)

    measure.device_name = dev.name  # type: ignore[attr-defined]
    return measure
