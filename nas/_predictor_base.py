"""What every predictor shares: the held-out :class:`PredictorReport`, rank correlations, and the checks and
seeded split of a fit's inputs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nasforge.errors import ConfigError
from nasforge.supernets.arch import Architecture

__all__ = ["MIN_SAMPLES", "PredictorReport", "rank_correlations"]

MIN_SAMPLES = 4


# ------------------------------------------------------------------------------------------------------------
# report and shared checks
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PredictorReport:
    """How well a predictor fits, measured on the held-out split (NaN errors when nothing was held out).

    Attributes:
        n_train: samples the predictor was fitted on.
        n_holdout: samples held out and scored below.
        rmse: root mean squared error, in the target's units.
        mae: mean absolute error, in the target's units.
        mape: mean absolute percentage error (``|error| / |target|``, as a fraction; targets equal to 0 are
            skipped).
        kendall_tau: Kendall rank correlation between predictions and targets (NaN if either is constant).
        spearman: Spearman rank correlation between predictions and targets (NaN if either is constant).
    """

    n_train: int
    n_holdout: int
    rmse: float
    mae: float
    mape: float
    kendall_tau: float
    spearman: float


def rank_correlations(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """``(Kendall tau, Spearman rho)`` of predictions against true values (NaN when either is constant)."""
    if len(pred) < 2 or np.ptp(pred) == 0 or np.ptp(true) == 0:
        return math.nan, math.nan
    try:
        from scipy.stats import kendalltau, spearmanr
    except ImportError:  # pragma: no cover - scipy is a dependency of optuna's extras, but stay usable without
        return _kendall_tau(pred, true), _spearman(pred, true)
    return float(kendalltau(pred, true)[0]), float(spearmanr(pred, true)[0])


def _kendall_tau(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b, O(n^2) (used only without scipy)."""
    dx = np.sign(x[:, None] - x[None, :])
    dy = np.sign(y[:, None] - y[None, :])
    iu = np.triu_indices(len(x), k=1)
    dx, dy = dx[iu], dy[iu]
    denom = math.sqrt(float(np.count_nonzero(dx)) * float(np.count_nonzero(dy)))
    return float(np.sum(dx * dy) / denom) if denom else math.nan


def _ranks(v: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank)."""
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v), dtype=np.float64)
    ranks[order] = np.arange(len(v), dtype=np.float64)
    for value in np.unique(v):
        tied = v == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(_ranks(x), _ranks(y))[0, 1])


def _report(n_train: int, pred: np.ndarray, true: np.ndarray) -> PredictorReport:
    if len(true) == 0:
        return PredictorReport(n_train, 0, math.nan, math.nan, math.nan, math.nan, math.nan)
    err = pred - true
    nonzero = true != 0
    mape = float(np.mean(np.abs(err[nonzero]) / np.abs(true[nonzero]))) if nonzero.any() else math.nan
    tau, rho = rank_correlations(pred, true)
    return PredictorReport(
        n_train=n_train,
        n_holdout=len(true),
        rmse=float(np.sqrt(np.mean(err**2))),
        mae=float(np.mean(np.abs(err))),
        mape=mape,
        kendall_tau=tau,
        spearman=rho,
    )


def _check_targets(archs: Sequence[Architecture], targets: Any, what: str) -> np.ndarray:
    y = np.asarray(targets, dtype=np.float64)
    if y.ndim != 1:
        raise ConfigError(f"{what} must be a flat sequence of numbers, got shape {y.shape}")
    if len(archs) != len(y):
        raise ConfigError(f"got {len(archs)} architectures but {len(y)} {what}; pass one value per architecture")
    if len(y) < MIN_SAMPLES:
        raise ConfigError(f"need at least {MIN_SAMPLES} measured architectures to fit a predictor, got {len(y)}")
    if not np.isfinite(y).all():
        raise ConfigError(f"{what} contain NaN or infinite values; drop failed or unmeasured architectures first")
    return y


def _split(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded ``(train indices, held-out indices)``; at least 2 of each when ``holdout > 0``."""
    if isinstance(holdout, bool) or not (0.0 <= float(holdout) < 1.0):
        raise ConfigError(f"holdout={holdout!r} must be a fraction in [0, 1); use 0 to train on everything")
    perm = np.random.default_rng(seed).permutation(n)
    if holdout == 0:
        return np.sort(perm), np.empty(0, dtype=np.int64)
    n_hold = min(max(2, int(round(holdout * n))), n - 2)
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])
