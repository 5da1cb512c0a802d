"""The subnet evaluator of a search: an architecture in, its metrics out (accuracy, cost, latency, INT8).

Shared by ``nasforge search`` (:mod:`nasforge.search`) and ``nasforge run``'s search stage
(:mod:`nasforge.pipeline`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nasforge.data import DataSplits
from nasforge.supernets import Architecture, Supernet
from nasforge.supernets.evaluate import evaluate_arch, resize

if TYPE_CHECKING:
    import numpy as np

    from nasforge.quantize import QuantConfig

__all__ = ["make_subnet_evaluator"]


def make_subnet_evaluator(net: Supernet, data: DataSplits, *, calib_images: int = 500, latency: bool = False,
                          latency_runs: int = 50, latency_warmup: int = 10, scratch: Path | None = None,
                          backend: str = "ort-cpu", threads: int = 1, int8: bool = False,
                          int8_config: QuantConfig | None = None, max_cv: float = 0.1,
                          max_remeasure: int = 3) -> Callable[[Architecture], dict[str, float]]:
    """Architecture -> metrics of its BN-recalibrated static subnet.

    Always ``accuracy`` (validation split, after BN recalibration on ``calib_images`` training images), ``macs``
    and ``params``. With ``latency``, ``latency_ms``: the exported ONNX subnet's median on ``backend`` with a short
    protocol (``latency_warmup`` warm-up and ``latency_runs`` timed runs), timed again while the coefficient of
    variation exceeds ``max_cv``, at most ``max_remeasure`` more rounds (the steadiest round is kept). The metrics
    also get ``latency_cv`` (the kept round's CV) and ``latency_unstable`` (1.0 if that CV is still above
    ``max_cv``, else 0.0), so a number measured on a busy machine is flagged instead of trusted.

    With ``int8`` (quantize-in-the-loop), the same temporary ONNX export is also quantized to INT8 with
    ``int8_config`` (default: static, MinMax, per-channel), calibrated on up to 128 training images resized to
    the subnet's resolution, and the metrics get ``int8_accuracy``: top-1 of the INT8 file in onnxruntime (CPU)
    on the validation images the FP32 ``accuracy`` uses. ``int8_latency_ms`` (the INT8 file's median on
    ``backend``, same protocol, with ``int8_latency_cv`` and ``int8_latency_unstable``) is measured only when both
    ``int8`` and ``latency`` are on; then, with ``int8_config.policy`` ``selective`` (the default), the file is
    what the compress stage would ship: operator groups INT8 does not speed up on ``backend`` stay in float and,
    when no INT8 variant is faster, the FP32 model is kept (``int8_fp32_kept`` 1.0; ``int8_float_groups`` counts
    the groups in float), so the search sees the latency the user will ship. ``reduce_range`` is
    decided once, here, from this machine's CPU (:func:`nasforge.quantize.decide_range`), not per trial.
    """
    calib = data.train.head(calib_images)
    quantizer = _Int8Check.create(data, int8_config) if int8 else None
    timing = {"backend": backend, "runs": latency_runs, "warmup": latency_warmup, "threads": threads,
              "max_cv": max_cv, "max_remeasure": max_remeasure}

    def evaluate(arch: Architecture) -> dict[str, float]:
        acc, sub = evaluate_arch(net, arch, calib, data.val.x, data.val.y, calib_images)
        metrics = {"accuracy": acc, "macs": float(net.macs(arch)), "params": float(net.params(arch))}
        if not (latency or int8):
            return metrics
        from nasforge.export import export_onnx

        with tempfile.TemporaryDirectory(dir=scratch) as tmp:
            path = Path(tmp) / "trial.onnx"
            export_onnx(sub, torch.zeros(1, *net.input_shape(arch)), path, exporter="torchscript", atol=1e-3)
            if latency:
                metrics.update(_latency_metrics(path, "latency", **timing))
            if quantizer is not None:
                int8_path = Path(tmp) / "trial.int8.onnx"
                selected = quantizer.write(net, arch, path, int8_path, timing if latency else None)
                metrics["int8_accuracy"] = quantizer.accuracy(net, arch, data, int8_path, threads)
                if latency:
                    metrics.update(_latency_metrics(int8_path, "int8_latency", **timing), **selected)
        return metrics

    return evaluate


def _latency_metrics(path: Path, key: str, *, backend: str, runs: int, warmup: int, threads: int, max_cv: float,
                     max_remeasure: int) -> dict[str, float]:
    """``{key}_ms``, ``{key}_cv`` and ``{key}_unstable`` of the ONNX file ``path`` on ``backend``."""
    from nasforge.export import measure_latency

    lat = measure_latency(path, backend=backend, runs=runs, warmup=warmup, threads=threads,
                          max_cv=max_cv, max_remeasure=max_remeasure)
    return {f"{key}_ms": lat.median_ms, f"{key}_cv": lat.cv, f"{key}_unstable": float(lat.cv > max_cv)}


@dataclass
class _Int8Check:
    """Quantize-in-the-loop for :func:`make_subnet_evaluator`: settings decided once, applied per trial."""

    config: QuantConfig
    reduce_range: bool
    calib: torch.Tensor
    val_y: np.ndarray

    @classmethod
    def create(cls, data: DataSplits, config: QuantConfig | None) -> _Int8Check:
        """Decide ``reduce_range`` from this machine's CPU and pick the calibration images."""
        from nasforge.quantize import QuantConfig, decide_range

        qcfg = config or QuantConfig(method="static")
        reduce_range = decide_range(qcfg, None, None).reduce_range
        return cls(qcfg, reduce_range, data.train.head(min(128, qcfg.calib_samples)), data.val.y.numpy())

    def write(self, net: Supernet, arch: Architecture, path: Path, int8_path: Path,
              timing: dict[str, Any] | None) -> dict[str, float]:
        """Quantize the exported ``path`` to ``int8_path``. With ``timing`` and policy ``selective``, the way the
        compress stage does (:func:`nasforge.quantize.run_selection`, batch 1 on the search's backend): groups
        INT8 does not speed up stay in float, and the FP32 model is written when no variant pays; returns
        ``int8_fp32_kept`` and ``int8_float_groups`` (how many groups stayed in float) then, else nothing."""
        from nasforge.quantize import quantize_onnx, run_selection

        calib = resize(self.calib, net.resolution(net.space.canonical(arch))).numpy()

        def write(out: Path, config: QuantConfig) -> Any:
            return quantize_onnx(path, out, config, reduce_range=self.reduce_range, calib_x=calib)

        if timing is None or self.config.policy != "selective":
            write(int8_path, self.config)
            return {}

        def measure(candidate: Path, _screening: bool) -> dict[str, dict[str, float]]:
            fp32 = _latency_metrics(path, "fp32", **timing)["fp32_ms"]
            int8 = _latency_metrics(candidate, "int8", **timing)["int8_ms"]
            return {"1": {"fp32_ms": fp32, "int8_ms": int8, "speedup": fp32 / int8}}

        _, _, selection = run_selection(path, int8_path, self.config, write, measure)
        return {"int8_fp32_kept": float(selection.choice == "fp32"),
                "int8_float_groups": float(len(selection.float_groups))}

    def accuracy(self, net: Supernet, arch: Architecture, data: DataSplits, int8_path: Path, threads: int) -> float:
        """Top-1 of the written ``int8_path`` on the validation images."""
        from nasforge.quantize import run_onnx

        r = net.resolution(net.space.canonical(arch))
        out = run_onnx(int8_path, resize(data.val.x, r).numpy(), threads=threads)
        return float((out.argmax(1) == self.val_y).mean())
