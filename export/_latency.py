"""Latency measurement: the Profiler base, its registry and the timing protocol.

The protocol, written once here and followed by every local backend: :meth:`Profiler.measure` checks the
settings and the model's kind, asks the backend to :meth:`~Profiler.prepare` (load the model, make a seeded
random input, set threads), then :func:`timed_runs` does ``warmup`` untimed runs and ``runs`` runs timed one
by one (with ``time.perf_counter_ns``, or by the run itself, e.g. CUDA events); if the coefficient of
variation (std / mean) exceeds ``max_cv`` the ``runs`` are timed again, up to ``max_remeasure`` more times,
and the round with the lowest CV is kept and summarised in a :class:`LatencyResult` with the machine's
:func:`environment_fingerprint`.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from abc import ABC
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from nasforge.errors import ConfigError, ExportError
from nasforge.registry import Registry

from ._fingerprint import environment_fingerprint
from ._onnx_io import first_line

if TYPE_CHECKING:
    import torch

__all__ = [
    "LatencyResult",
    "MeasureSettings",
    "ModelKind",
    "PreparedRun",
    "Profiler",
    "check_measure_args",
    "environment_fingerprint",
    "get_profiler",
    "list_profilers",
    "measure_latency",
    "register_profiler",
    "sample_shape",
    "timed_runs",
]

_P = TypeVar("_P", bound="type[Profiler]")
_PROFILERS: Registry[type[Profiler]] = Registry("latency backend")
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


class ModelKind(enum.Enum):
    """What a backend's :meth:`Profiler.measure` takes as ``model`` (the value is how messages name it)."""

    ONNX = "an .onnx file"
    MODULE = "an nn.Module"
    ENGINE_OR_ONNX = "an engine or .onnx file"

    def accepts(self, model: object) -> bool:
        """Whether ``model`` is of this kind (imports torch only for :attr:`MODULE`)."""
        if self is ModelKind.MODULE:
            if isinstance(model, (str, Path)):  # refused without importing torch
                return False
            import torch

            return isinstance(model, torch.nn.Module)
        return isinstance(model, (str, Path))


@dataclass(frozen=True)
class MeasureSettings:
    """The checked settings of one :meth:`Profiler.measure` call (``input_shape`` without the batch dim)."""

    input_shape: tuple[int, ...] | None
    batch: int
    runs: int
    warmup: int
    threads: int
    max_cv: float
    max_remeasure: int


@dataclass(frozen=True)
class PreparedRun:
    """What a backend's :meth:`Profiler.prepare` hands to the protocol.

    Attributes:
        run_once: one inference, blocking until it is done (or, ``self_timed``, returning its duration in ns).
        self_timed: ``run_once`` times itself (e.g. with CUDA events) instead of being timed with the host clock.
        fingerprint: called after the timing; ``None``: :func:`environment_fingerprint` of the threads.
        errors: exception types of the runtime that become an :class:`ExportError` reading
            ``"<error_message>: <first line of the error>"``.
        error_message: the start of that message, e.g. ``"onnxruntime failed to run 'm.onnx'"``.
    """

    run_once: Callable[[], object]
    self_timed: bool = False
    fingerprint: Callable[[], dict[str, Any]] | None = None
    errors: tuple[type[BaseException], ...] = ()
    error_message: str = ""


class Profiler(ABC):
    """A latency backend (``ort-cpu``, ``torch-cpu``, the GPU backends, or a remote board).

    Subclasses are registered with :func:`register_profiler`, which sets ``name``; their constructor takes
    only keyword options of the backend (none needed by the built-ins). Call order: construct (cheap, no
    model loaded), then :meth:`measure` any number of times; each call is independent and restores any global
    setting (thread counts, module modes) it changed.

    The measurement protocol lives here, once. :meth:`measure` checks the settings
    (:func:`check_measure_args`), the kind of ``model`` (:attr:`model_kind`, with :attr:`model_hint` in the
    message) and ``input_shape`` (required when :attr:`needs_input_shape`); then it enters the backend's
    :meth:`prepare` (load the model, make the input, set threads), runs :func:`timed_runs` on what it returns
    (``warmup`` untimed runs, ``runs`` timed runs, re-measured while the CV exceeds ``max_cv``), and summarises
    with :meth:`LatencyResult.from_samples`. A backend only says how to prepare and run once; one that
    measures elsewhere (``remote``) overrides :meth:`_measure_checked` instead.
    """

    name: ClassVar[str]
    #: whether the profiler may answer a repeated measurement from a cache (then ``measure`` takes ``fresh=True``)
    caches: ClassVar[bool] = False
    #: what ``measure`` takes as ``model`` (``None``: anything; the backend checks it)
    model_kind: ClassVar[ModelKind | None] = None
    #: what to do instead, for the wrong-kind message, e.g. ``"use backend='ort-cpu' for .onnx files"``
    model_hint: ClassVar[str] = ""
    #: ``measure`` refuses ``input_shape=None``
    needs_input_shape: ClassVar[bool] = False

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
            model: what the backend runs: a path to an ``.onnx`` file (ONNX backends), an engine file
                (``tensorrt``) or an ``nn.Module`` (PyTorch backends).
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
        settings = self._check(
            model, input_shape=input_shape, batch=batch, runs=runs, warmup=warmup, threads=threads,
            max_cv=max_cv, max_remeasure=max_remeasure,
        )
        return self._measure_checked(model, settings)

    def _check(
        self, model: object, *, input_shape: Sequence[int] | None, batch: int, runs: int, warmup: int,
        threads: int, max_cv: float, max_remeasure: int,
    ) -> MeasureSettings:
        """The checks :meth:`measure` makes before any work: settings, model kind, ``input_shape``."""
        check_measure_args(
            batch=batch, runs=runs, warmup=warmup, threads=threads, max_cv=max_cv, max_remeasure=max_remeasure
        )
        kind = self.model_kind
        if kind is not None and not kind.accepts(model):
            raise ConfigError(
                f"{self._subject()} measures {kind.value}, got {type(model).__name__}; {self.model_hint}"
            )
        shape = sample_shape(input_shape)
        if shape is None and self.needs_input_shape:
            raise ConfigError(f"{self.name} needs input_shape, the shape of one sample without the batch dim")
        return MeasureSettings(shape, batch, runs, warmup, threads, max_cv, max_remeasure)

    def _subject(self) -> str:
        """How messages name this backend."""
        return self.name

    def _measure_checked(self, model: Any, settings: MeasureSettings) -> LatencyResult:
        """Run the protocol on what :meth:`prepare` returns (``model`` and ``settings`` are checked)."""
        with self.prepare(model, settings) as prepared:
            try:
                samples, remeasured = timed_runs(
                    prepared.run_once,
                    runs=settings.runs,
                    warmup=settings.warmup,
                    max_cv=settings.max_cv,
                    max_remeasure=settings.max_remeasure,
                    self_timed=prepared.self_timed,
                )
            except prepared.errors as err:
                raise ExportError(f"{prepared.error_message}: {first_line(err)}") from err
        fingerprint = prepared.fingerprint() if prepared.fingerprint else environment_fingerprint(settings.threads)
        return LatencyResult.from_samples(
            self.name,
            samples,
            batch=settings.batch,
            warmup=settings.warmup,
            remeasured=remeasured,
            threads=settings.threads,
            fingerprint=fingerprint,
        )

    def prepare(self, model: Any, settings: MeasureSettings) -> AbstractContextManager[PreparedRun]:
        """Get ready to run ``model`` once per call: load it, make the input, set the threads.

        Returns:
            A context manager whose value is a :class:`PreparedRun`; the protocol runs inside it, and its exit
            frees the model and restores what was changed.
        """
        raise NotImplementedError(f"{type(self).__name__} implements neither prepare() nor measure()")


def sample_shape(input_shape: Sequence[int] | None) -> tuple[int, ...] | None:
    """Validate a per-sample shape (no batch dim).

    Raises:
        ConfigError: not a sequence of positive ints.
    """
    if input_shape is None:
        return None
    shape = tuple(input_shape)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape):
        raise ConfigError(f"input_shape {input_shape!r} is invalid; pass positive ints without the batch dim")
    return shape


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

    return _PROFILERS.class_decorator(name, Profiler, "register_profiler")


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
