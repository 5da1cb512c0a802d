"""Cheap predictors for predictor-in-the-loop search, and an evolution that searches on their scores.

Measuring an architecture (evaluating it on validation data, timing it on a device) is slow; a predictor
fitted on a few hundred measured architectures scores thousands per second. The pieces:

* :class:`AccuracyPredictor`: Once-for-All's accuracy predictor, an MLP (3 hidden layers of 400, ReLU) on the
  space's one-hot :meth:`~nasforge.supernets.SearchSpace.encode` vector, regressing the accuracy.
* :class:`LatencyPredictor`: the latency plug-in family (:func:`register_latency_predictor`,
  :func:`get_latency_predictor`). The built-in ``"macs"`` predictor, :class:`MacsLatencyPredictor`, fits
  ``latency = a * macs + b`` by least squares. Per-device latency lookup tables (built from measurements of
  exported models) register as further predictors under their own names: ``"table"`` once
  :mod:`nasforge.export` is imported.
* :func:`evolve_on_predictors`: Once-for-All-style evolution (parents, mutants, crossovers) on predicted
  scores, single- or multi-objective, with bounded rejection sampling for a constraint.

Every ``fit`` returns a :class:`PredictorReport` with errors and rank correlations on a held-out split.
This module holds the latency family; the report lives in ``_predictor_base``, the accuracy predictor in
``_accuracy_predictor`` and the evolution in ``_evolution`` (all re-exported here).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from nasforge.errors import ConfigError
from nasforge.registry import Registry
from nasforge.supernets.arch import Architecture

from ._accuracy_predictor import ACCURACY_PREDICTOR_FORMAT, AccuracyPredictor
from ._evolution import ScoreFn, evolve_on_predictors
from ._predictor_base import MIN_SAMPLES, PredictorReport, rank_correlations

# the shared helpers stay importable from here, as before
from ._predictor_base import _check_targets as _check_targets
from ._predictor_base import _report as _report
from ._predictor_base import _split as _split

__all__ = [
    "ACCURACY_PREDICTOR_FORMAT",
    "MIN_SAMPLES",
    "AccuracyPredictor",
    "LatencyPredictor",
    "rank_correlations",
    "MacsLatencyPredictor",
    "PredictorReport",
    "ScoreFn",
    "evolve_on_predictors",
    "get_latency_predictor",
    "list_latency_predictors",
    "register_latency_predictor",
]


# ------------------------------------------------------------------------------------------------------------
# latency predictors
# ------------------------------------------------------------------------------------------------------------
_LatencyT = TypeVar("_LatencyT", bound="type[LatencyPredictor]")
_LATENCY: Registry[type[LatencyPredictor]] = Registry(
    "latency predictor", hints={"table": "import nasforge.export first (it registers the 'table' predictor)"})


class LatencyPredictor(ABC):
    """Predicts an architecture's latency in milliseconds on one target after fitting on measured ones.

    Plug-ins register with :func:`register_latency_predictor`; the built-in ``"macs"`` is a linear model of
    the MACs. Per-device latency tables (one measured cost per layer configuration, from the export and
    profiling tools) are meant to register as further predictors under their own names.
    """

    name: str = ""

    @abstractmethod
    def fit(self, archs: Sequence[Architecture], latencies_ms: Sequence[float], *, holdout: float = 0.2
            ) -> PredictorReport:
        """Fit on measured latencies, holding out ``holdout`` of them for the returned report."""

    @abstractmethod
    def predict(self, archs: Sequence[Architecture]) -> np.ndarray:
        """Predicted latencies in milliseconds, a float64 array with one value per architecture."""

    def __call__(self, archs: Sequence[Architecture]) -> np.ndarray:
        return self.predict(archs)

    @staticmethod
    def split_measurements(archs: Sequence[Architecture], latencies_ms: Sequence[float], holdout: float,
                           seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For a subclass's :meth:`fit`: the checked latencies and seeded ``(train, held-out)`` indices into them.

        Raises:
            ConfigError: fewer than 4 samples, lengths differ, non-finite values, or a bad ``holdout``.
        """
        y = _check_targets(archs, latencies_ms, "latencies")
        train, held = _split(len(y), holdout, seed)
        return y, train, held

    @staticmethod
    def holdout_report(n_train: int, predicted: np.ndarray, measured: np.ndarray) -> PredictorReport:
        """For a subclass's :meth:`fit`: the :class:`PredictorReport` of ``predicted`` against held-out ``measured``."""
        return _report(n_train, predicted, measured)


def register_latency_predictor(name: str) -> Callable[[_LatencyT], _LatencyT]:
    """Class decorator that makes a :class:`LatencyPredictor` subclass available as ``get_latency_predictor(name)``.

    Raises:
        ConfigError: if ``name`` is already registered or the class is not a LatencyPredictor.
    """

    return _LATENCY.class_decorator(name, LatencyPredictor, "register_latency_predictor")


def list_latency_predictors() -> list[str]:
    """Names of the registered latency predictors, sorted."""
    return _LATENCY.names()


def get_latency_predictor(name: str, **options: Any) -> LatencyPredictor:
    """Instantiate the latency predictor registered as ``name`` with ``options``.

    Raises:
        ConfigError: if ``name`` is not registered (the message lists the registered names).
    """
    return _LATENCY.get(name)(**options)


@register_latency_predictor("macs")
class MacsLatencyPredictor(LatencyPredictor):
    """``latency_ms = slope * macs + intercept``, fitted by least squares.

    Args:
        cost_fn: the MACs of an architecture, e.g. ``net.macs`` of a supernet.
        seed: seeds the held-out split.
    """

    def __init__(self, cost_fn: Callable[[Architecture], float], *, seed: int = 0) -> None:
        if not callable(cost_fn):
            raise ConfigError(f"cost_fn must be callable (architecture -> MACs), got {cost_fn!r}")
        self.cost_fn = cost_fn
        self.seed = int(seed)
        self.slope = math.nan
        self.intercept = math.nan

    def _macs(self, archs: Sequence[Architecture]) -> np.ndarray:
        if isinstance(archs, (Architecture, str)):
            raise ConfigError("pass a list of architectures, not a single one")
        return np.array([float(self.cost_fn(a)) for a in archs], dtype=np.float64)

    def fit(self, archs: Sequence[Architecture], latencies_ms: Sequence[float], *, holdout: float = 0.2
            ) -> PredictorReport:
        """Least-squares fit on the training split; see :class:`PredictorReport` for the held-out scores.

        Raises:
            ConfigError: fewer than 4 samples, lengths differ, non-finite values, or all training MACs equal.
        """
        archs = list(archs) if not isinstance(archs, (Architecture, str)) else archs
        y = _check_targets(archs, latencies_ms, "latencies")
        macs = self._macs(archs)
        train, held = _split(len(y), holdout, self.seed)
        if np.ptp(macs[train]) == 0:
            raise ConfigError("all training architectures have the same MACs; a slope cannot be fitted")
        scale = float(np.abs(macs[train]).max())
        design = np.stack([macs[train] / scale, np.ones(len(train))], axis=1)
        (a, b), *_ = np.linalg.lstsq(design, y[train], rcond=None)
        self.slope, self.intercept = float(a) / scale, float(b)
        return _report(len(train), self.slope * macs[held] + self.intercept, y[held])

    def predict(self, archs: Sequence[Architecture]) -> np.ndarray:
        """Predicted latencies in milliseconds.

        Raises:
            ConfigError: before :meth:`fit`.
        """
        if math.isnan(self.slope):
            raise ConfigError("MacsLatencyPredictor.predict called before fit; call fit(archs, latencies_ms)")
        return self.slope * self._macs(archs) + self.intercept
