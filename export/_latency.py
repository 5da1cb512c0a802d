"""Latency measurement: Profiler interface, registry, timing protocol and environment fingerprint.

Protocol (every local backend follows it): ``warmup`` untimed runs, then ``runs`` runs timed one by one with
``time.perf_counter_ns``; if the coefficient of variation (std / mean) exceeds ``max_cv`` the ``runs`` are
timed again, up to ``max_remeasure`` more times, and the round with the lowest CV is kept.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from nasforge.errors import ConfigError
from nasforge.registry import Registry

if TYPE_CHECKING:
    import torch

__all__ = [
    "LatencyResult",
    "Profiler",
    "check_measure_args",
    "environment_fingerprint",
    "get_profiler",
    "list_profilers",
    "measure_latency",
    "register_profiler",
    "timed_runs",
]

_P = TypeVar("_P", bound="type[Profiler]")
_PROFILERS: Registry[type[Profiler]] = Registry("latency backend")
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


@dataclass(frozen=True)
class LatencyResult:
    """Latency of one model on one backend: per-run statistics in milliseconds.

    Attributes:
        backend: registered profiler name.
        batch, runs, warmup, threads: the measurement settings.
        median_ms, p90_ms, p99_ms, min_ms, mean_ms: statistics of the kept round of ``runs`` timings.
        cv: coefficient of variation (std / mean) of the kept round.
        remeasured: how many extra rounds were timed because the CV exceeded ``max_cv``.
        fingerprint: :func:`environment_fingerprint` of the machine that measured.
    """

    backend: str
    batch: int
    runs: int
    warmup: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    mean_ms: float
    cv: float
    remeasured: int
    threads: int
    fingerprint: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (a deep copy)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_samples(
        cls,
        backend: str,
        samples_ns: Sequence[int] | np.ndarray,
        *,
        batch: int,
        warmup: int,
        remeasured: int,
        threads: int,
        fingerprint: dict[str, Any],
    ) -> LatencyResult:
        """Summarise per-run timings in nanoseconds (``runs`` is their count)."""
        ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
        return cls(
            backend=backend,
            batch=batch,
            runs=int(ms.size),
            warmup=warmup,
            median_ms=float(np.median(ms)),
            p90_ms=float(np.percentile(ms, 90)),
            p99_ms=float(np.percentile(ms, 99)),
            min_ms=float(ms.min()),
            mean_ms=float(ms.mean()),
            cv=_cv(ms),
            remeasured=remeasured,
            threads=threads,
            fingerprint=fingerprint,
        )


def _cv(samples: np.ndarray) -> float:
    """Coefficient of variation std / mean (0 for a zero mean)."""
    mean = float(samples.mean())
    return float(samples.std() / mean) if mean > 0 else 0.0


class Profiler(ABC):
    """A latency backend (``ort-cpu``, ``torch-cpu``; later GPU, TensorRT or a remote board).

    Subclasses are registered with :func:`register_profiler`, which sets ``name``; their constructor takes
    only keyword options of the backend (none for the built-ins). Call order: construct (cheap, no model
    loaded), then :meth:`measure` any number of times; each call is independent and restores any global
    setting (thread counts, module modes) it changed. Local backends follow the protocol of
    :func:`timed_runs` and summarise with :meth:`LatencyResult.from_samples`.
    """

    name: ClassVar[str]
    #: whether the profiler may answer a repeated measurement from a cache (then ``measure`` takes ``fresh=True``)
    caches: ClassVar[bool] = False

    @abstractmethod
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
        """Measure the latency of one inference on a random input.

        Args:
            model: what the backend runs: a path to an ``.onnx`` file (ONNX backends) or an ``nn.Module``
                (PyTorch backends).
            input_shape: shape of one sample *without* the batch dim, e.g. ``(3, 224, 224)``; required by
                PyTorch backends, optional for ONNX ones (the graph's shape is used; if given it must match).
            batch: batch size of the timed input.
            runs: timed runs per round.
            warmup: untimed runs before the first round.
            threads: intra-op threads of the backend.
            max_cv: re-measure while the coefficient of variation exceeds this.
            max_remeasure: at most this many extra rounds.

        Returns:
            A :class:`LatencyResult`.

        Raises:
            ConfigError: an argument is out of range or the model is of the wrong kind for the backend.
            ExportError: an ONNX file is missing, invalid or cannot run at ``batch``.
        """


def check_measure_args(
    *, batch: int, runs: int, warmup: int, threads: int, max_cv: float, max_remeasure: int
) -> None:
    """Validate the common :meth:`Profiler.measure` settings.

    Raises:
        ConfigError: the first setting out of range, quoted, with the allowed range.
    """
    minimums = {
        "batch": (batch, 1),
        "runs": (runs, 1),
        "warmup": (warmup, 0),
        "threads": (threads, 1),
        "max_remeasure": (max_remeasure, 0),
    }
    for name, (value, low) in minimums.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name}={value!r} is invalid; pass an int >= {low}")
    if not (isinstance(max_cv, (int, float)) and max_cv >= 0):
        raise ConfigError(f"max_cv={max_cv!r} is invalid; pass a number >= 0 (e.g. 0.1)")


def _time_round(run_once: Callable[[], object], runs: int, self_timed: bool) -> np.ndarray:
    """``runs`` per-run durations in nanoseconds: timed around each call, or returned by it (``self_timed``)."""
    if self_timed:
        return np.fromiter((float(run_once()) for _ in range(runs)), dtype=np.float64, count=runs)  # type: ignore[arg-type]
    samples = np.empty(runs, dtype=np.int64)
    for i in range(runs):
        start = time.perf_counter_ns()
        run_once()
        samples[i] = time.perf_counter_ns() - start
    return samples


def timed_runs(
    run_once: Callable[[], object], *, runs: int, warmup: int, max_cv: float, max_remeasure: int,
    self_timed: bool = False,
) -> tuple[np.ndarray, int]:
    """Run the measurement protocol on ``run_once`` (one inference, blocking until done).

    Args:
        self_timed: ``run_once`` returns its own duration in nanoseconds (e.g. from CUDA events) instead of
            being timed with the host clock.

    Returns:
        The kept round's per-run timings in nanoseconds and how many extra rounds were timed.
    """
    for _ in range(warmup):
        run_once()
    best = _time_round(run_once, runs, self_timed)
    remeasured = 0
    while _cv(best) > max_cv and remeasured < max_remeasure:
        again = _time_round(run_once, runs, self_timed)
        remeasured += 1
        if _cv(again) < _cv(best):
            best = again
    return best, remeasured


def register_profiler(name: str) -> Callable[[_P], _P]:
    """Class decorator registering a :class:`Profiler` subclass under ``name`` (and setting its ``name``).

    Raises:
        ConfigError: ``name`` is empty or already registered, or the class is not a Profiler.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"profiler name {name!r} is invalid; pass a non-empty str such as 'ort-cpu'")

    def decorate(cls: _P) -> _P:
        if not (isinstance(cls, type) and issubclass(cls, Profiler)):
            raise ConfigError(f"@register_profiler({name!r}) decorates {cls!r}; decorate a Profiler subclass")
        cls.name = name
        return _PROFILERS.add(name, cls)

    return decorate


def list_profilers() -> list[str]:
    """Names of the registered profilers, sorted."""
    return _PROFILERS.names()


def get_profiler(name: str, **options: Any) -> Profiler:
    """Construct the profiler registered as ``name`` with backend ``options``.

    Raises:
        ConfigError: no profiler has that name (the message lists the known ones).
    """
    return _PROFILERS.get(name)(**options)


def measure_latency(
    model: str | Path | torch.nn.Module, *, backend: str = "ort-cpu", **kwargs: Any
) -> LatencyResult:
    """Measure ``model`` with the profiler named ``backend``; ``kwargs`` go to :meth:`Profiler.measure`."""
    return get_profiler(backend).measure(model, **kwargs)


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
