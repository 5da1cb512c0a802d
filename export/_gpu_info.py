"""What a GPU latency depends on: the GPU, its driver and the CUDA / TensorRT / onnxruntime-gpu versions.

Also the small CUDA helpers the GPU backends share: the device-index check, :func:`require_cuda` (the
one-line error without a GPU) and :func:`event_timer` (a run timed with CUDA events on its stream).
torch is imported only inside functions.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nasforge.errors import ConfigError

from ._fingerprint import _version, environment_fingerprint

__all__ = ["check_device", "event_timer", "gpu_fingerprint", "gpu_info", "require_cuda"]

_DRIVER = re.compile(r"Kernel Module(?: for [\w-]+)?\s+([0-9][0-9.]*)")
_TENSORRT_DISTS = ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu11", "tensorrt_lean")


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
    for dist in _TENSORRT_DISTS:
        version = _version(dist)
        if version:
            return version
    return None


# ---------------------------------------------------------------------------------------------- CUDA helpers
def check_device(backend: str, device: object) -> int:
    """Validate a CUDA device index option.

    Raises:
        ConfigError: not an int >= 0.
    """
    if isinstance(device, bool) or not isinstance(device, int) or device < 0:
        raise ConfigError(f"{backend} device={device!r} is invalid; pass a CUDA device index >= 0")
    return device


def require_cuda(backend: str, device: int, cpu_backend: str) -> Any:
    """Import torch and check that CUDA device ``device`` is usable; returns the torch module.

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


def event_timer(torch_mod: Any, run: Callable[[], object], stream: Any) -> Callable[[], float]:
    """Wrap ``run`` (which enqueues work on ``stream``) into a function returning its CUDA-event time in ns.

    Each call records a start and an end event on ``stream`` around the work and waits for the end event,
    so runs never overlap.
    """
    start = torch_mod.cuda.Event(enable_timing=True)
    end = torch_mod.cuda.Event(enable_timing=True)

    def time_once() -> float:
        start.record(stream)
        run()
        end.record(stream)
        end.synchronize()
        return start.elapsed_time(end) * 1e6  # ms -> ns

    return time_once
