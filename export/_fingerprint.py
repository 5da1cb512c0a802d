"""What a latency number depends on besides the model: the CPU, its kernel-relevant flags, OS and runtime versions.

:func:`environment_fingerprint` is recorded with every :class:`~nasforge.export.LatencyResult`.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["environment_fingerprint"]

_VERSIONED = ("numpy", "torch", "onnxruntime", "onnx")
# CPU features that change which kernels ORT / PyTorch pick (x86 from "flags", Arm from "Features").
_CPU_FLAGS = frozenset(
    {
        "sse4_1",
        "sse4_2",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx_vnni",
        "avx_vnni_int8",
        "neon",
        "asimd",
        "asimdhp",
        "asimddp",
        "asimdfhm",
        "sve",
        "sve2",
        "i8mm",
        "bf16",
        "sme",
        "fphp",
    }
)
_CPU_FLAG_PREFIXES = ("avx512", "amx")


def _read_cpuinfo() -> dict[str, str]:
    """Key/value pairs of the first processor block of /proc/cpuinfo, plus Arm's trailing "Hardware" line."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in info:
            info[key.strip()] = value.strip()
    return info


def _cpu(info: dict[str, str]) -> dict[str, Any]:
    """CPU model and the kernel-relevant feature flags."""
    model = info.get("model name") or info.get("Hardware") or info.get("Processor") or info.get("CPU part")
    flags = (info.get("flags") or info.get("Features") or "").split()
    relevant = sorted(f for f in set(flags) if f in _CPU_FLAGS or f.startswith(_CPU_FLAG_PREFIXES))
    return {
        "model": model or platform.processor() or platform.machine() or "unknown",
        "flags": relevant,
        "logical_cores": os.cpu_count(),
    }


def _version(package: str) -> str | None:
    """Installed version of ``package`` (``None`` if absent)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment_fingerprint(threads: int) -> dict[str, Any]:
    """Describe what a latency number depends on besides the model.

    Returns:
        ``{"cpu": {"model", "flags", "logical_cores"}, "machine", "os", "python", "versions": {numpy, torch,
        onnxruntime, onnx}, "threads"}``; CPU data comes from /proc/cpuinfo where present, else ``platform``.
    """
    return {
        "cpu": _cpu(_read_cpuinfo()),
        "machine": platform.machine(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in _VERSIONED},
        "threads": threads,
    }
