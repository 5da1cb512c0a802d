"""Cheap predictors for predictor-in-the-loop search, and an evolution that searches on their scores.

Measuring an architecture (evaluating it on validation data, timing it on a device) is slow; a predictor
fitted on a few hundred measured architectures scores thousands per second. The pieces:

* :class:`AccuracyPredictor`: Once-for-All's accuracy predictor, an MLP (3 hidden layers of 400, ReLU) on the
  space's one-hot :meth:`~nasforge.supernets.SearchSpace.encode` vector, regressing the accuracy.
* :class:`LatencyPredictor`: the latency plug-in family (:func:`register_latency_predictor`,
  :func:`get_latency_predictor`). The built-in ``"macs"`` predictor, :class:`MacsLatencyPredictor`, fits
  ``latency = a * macs + b`` by least squares. Per-device latency lookup tables (built from measurements of
  exported models) register as further predictors under their own names.
* :func:`evolve_on_predictors`: Once-for-All-style evolution (parents, mutants, crossovers) on predicted
  scores, single- or multi-objective, with bounded rejection sampling for a constraint.

Every ``fit`` returns a :class:`PredictorReport` with errors and rank correlations on a held-out split.
"""

from __future__ import annotations

import logging
import math
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from nasforge.errors import ArchitectureError, ConfigError
from nasforge.io import TORCH_LOAD_ERRORS, atomic_torch_save, load_torch_file
from nasforge.registry import Registry
from nasforge.supernets.arch import Architecture, SearchSpace

from ._pareto import pareto_front

__all__ = [
    "ACCURACY_PREDICTOR_FORMAT",
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

ACCURACY_PREDICTOR_FORMAT = "nasforge-accuracy-predictor/1"
MIN_SAMPLES = 4
_log = logging.getLogger(__name__)

ScoreFn = Callable[[list[Architecture]], np.ndarray]
"""Scores a batch of architectures: an ``(n, k)`` (or ``(n,)`` for ``k = 1``) array of objectives to maximise."""


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


# ------------------------------------------------------------------------------------------------------------
# accuracy predictor
# ------------------------------------------------------------------------------------------------------------
class AccuracyPredictor:
    """An MLP on :meth:`SearchSpace.encode` that predicts accuracy (Once-for-All's predictor by default).

    Training is Adam on mini-batches of the standardised targets (mean 0, std 1 on the training split),
    seeded: the same data and ``seed`` give the same weights on the same machine and thread count. With the
    defaults, ~250 samples train in a few tenths of a second on one CPU thread.

    Args:
        space: the search space whose architectures are scored.
        hidden: widths of the hidden layers (ReLU after each).
        epochs: passes over the training split.
        lr: Adam learning rate.
        weight_decay: Adam weight decay (L2).
        batch_size: mini-batch size; ``None`` trains full-batch (one step per epoch).
        seed: seeds the split, the weight initialisation and the batch order.

    Raises:
        ConfigError: on a non-positive width, epoch count, learning rate or batch size.
    """

    def __init__(
        self,
        space: SearchSpace,
        hidden: Sequence[int] = (400, 400, 400),
        *,
        epochs: int = 20,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int | None = 32,
        seed: int = 0,
    ) -> None:
        hidden = tuple(int(h) for h in hidden)
        if any(h <= 0 for h in hidden):
            raise ConfigError(f"hidden layer widths {hidden} must all be positive")
        if int(epochs) <= 0:
            raise ConfigError(f"epochs={epochs} must be positive")
        if not float(lr) > 0:
            raise ConfigError(f"lr={lr} must be positive")
        if float(weight_decay) < 0:
            raise ConfigError(f"weight_decay={weight_decay} must be >= 0")
        if batch_size is not None and int(batch_size) <= 0:
            raise ConfigError(f"batch_size={batch_size} must be positive, or None for full-batch training")
        self.space = space
        self.hidden = hidden
        self.epochs = int(epochs)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.seed = int(seed)
        self._model: Any = None
        self._y_mean = 0.0
        self._y_std = 1.0

    # -- helpers ---------------------------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return self._model is not None

    def _build(self) -> Any:
        import torch

        layers: list[torch.nn.Module] = []
        width = self.space.encoding_size
        for h in self.hidden:
            layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
            width = h
        layers.append(torch.nn.Linear(width, 1))
        return torch.nn.Sequential(*layers)

    def _encode(self, archs: Sequence[Architecture]) -> np.ndarray:
        if isinstance(archs, (Architecture, str)):
            raise ConfigError("pass a list of architectures, not a single one")
        rows = []
        for i, arch in enumerate(archs):
            try:
                rows.append(self.space.encode(arch))
            except ArchitectureError as exc:
                raise ConfigError(f"architecture #{i} is not in space {self.space.name!r}: {exc}") from None
        if not rows:
            return np.zeros((0, self.space.encoding_size), dtype=np.float32)
        return np.stack(rows)

    # -- fit / predict ---------------------------------------------------------------------------------------
    def fit(self, archs: Sequence[Architecture], accuracies: Sequence[float], *, holdout: float = 0.2
            ) -> PredictorReport:
        """Train from scratch on ``archs`` -> ``accuracies`` and score the held-out part.

        Args:
            archs: measured architectures of the space.
            accuracies: their accuracies (any scale; targets are standardised internally).
            holdout: fraction held out of training and used for the report (at least 2 samples when > 0);
                ``0`` trains on everything and reports NaN errors.

        Returns:
            The held-out :class:`PredictorReport`.

        Raises:
            ConfigError: fewer than 4 samples, lengths differ, a value is not finite, an architecture is not
                in the space, or ``holdout`` is not in [0, 1).
        """
        import torch

        archs = list(archs) if not isinstance(archs, (Architecture, str)) else archs
        x_all = self._encode(archs)
        y_all = _check_targets(archs, accuracies, "accuracies")
        train, held = _split(len(y_all), holdout, self.seed)
        y_train = y_all[train]
        self._y_mean = float(y_train.mean())
        std = float(y_train.std())
        self._y_std = std if std > 1e-12 else 1.0

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = self._build()
        gen = torch.Generator().manual_seed(self.seed)
        xt = torch.from_numpy(x_all[train])
        yt = torch.from_numpy(((y_train - self._y_mean) / self._y_std).astype(np.float32))
        opt = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        n = len(yt)
        bs = n if self.batch_size is None else min(self.batch_size, n)
        model.train()
        for _ in range(self.epochs):
            order = torch.randperm(n, generator=gen) if bs < n else torch.arange(n)
            for start in range(0, n, bs):
                idx = order[start:start + bs]
                opt.zero_grad(set_to_none=True)
                loss = torch.nn.functional.mse_loss(model(xt[idx]).squeeze(1), yt[idx])
                loss.backward()
                opt.step()
        model.eval()
        self._model = model
        pred = self._predict_encoded(x_all[held]) if len(held) else np.empty(0)
        return _report(len(train), pred, y_all[held])

    def _predict_encoded(self, x: np.ndarray) -> np.ndarray:
        import torch

        if len(x) == 0:
            return np.empty(0, dtype=np.float64)
        with torch.no_grad():
            out = self._model(torch.from_numpy(x)).squeeze(1).double().numpy()
        return out * self._y_std + self._y_mean

    def predict(self, archs: Sequence[Architecture]) -> np.ndarray:
        """Predicted accuracies, a float64 array with one value per architecture.

        Raises:
            ConfigError: before :meth:`fit` / :meth:`load_state_dict`, or for an architecture not in the space.
        """
        if not self.is_fitted:
            raise ConfigError("AccuracyPredictor.predict called before fit; call fit(archs, accuracies) or load one")
        return self._predict_encoded(self._encode(archs))

    def __call__(self, archs: Sequence[Architecture]) -> np.ndarray:
        """Same as :meth:`predict` (so a fitted predictor is a single-objective ``score_fn``)."""
        return self.predict(archs)

    # -- persistence -----------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """JSON-able constructor options plus the space's fingerprint."""
        return {
            "space": self.space.name,
            "encoding_size": self.space.encoding_size,
            "dims": [[d.name, list(d.choices), d.positions] for d in self.space.dims],
            "hidden": list(self.hidden),
            "epochs": self.epochs,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "batch_size": self.batch_size,
            "seed": self.seed,
        }

    def state_dict(self) -> dict[str, Any]:
        """Tensors and JSON-able values only (loadable with ``torch.load(..., weights_only=True)``).

        Raises:
            ConfigError: before :meth:`fit`.
        """
        if not self.is_fitted:
            raise ConfigError("nothing to save: the AccuracyPredictor has not been fitted")
        return {
            "format": ACCURACY_PREDICTOR_FORMAT,
            "config": self.config(),
            "y_mean": self._y_mean,
            "y_std": self._y_std,
            "model": {k: v.detach().clone() for k, v in self._model.state_dict().items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore weights written by :meth:`state_dict`; the space and layer widths must match.

        Raises:
            ConfigError: if ``state`` is not a predictor state, or was fitted on another space or widths.
        """
        if not isinstance(state, dict) or state.get("format") != ACCURACY_PREDICTOR_FORMAT:
            raise ConfigError(f"not an accuracy predictor state (expected format {ACCURACY_PREDICTOR_FORMAT})")
        cfg = state.get("config", {})
        mine = self.config()
        if cfg.get("dims") != mine["dims"] or cfg.get("encoding_size") != mine["encoding_size"]:
            raise ConfigError(f"the predictor was fitted on space {cfg.get('space')!r}, which differs from space "
                              f"{self.space.name!r}; load it with the space it was trained on")
        if list(cfg.get("hidden", [])) != list(self.hidden):
            raise ConfigError(f"the predictor has hidden widths {cfg.get('hidden')}, this one {list(self.hidden)}")
        model = self._build()
        try:
            model.load_state_dict(state["model"])
        except (KeyError, RuntimeError) as exc:
            raise ConfigError(f"predictor weights do not fit the network: {str(exc).splitlines()[0][:200]}") from None
        model.eval()
        self._model = model
        self._y_mean, self._y_std = float(state["y_mean"]), float(state["y_std"])

    def save(self, path: str | Path) -> Path:
        """Atomically write :meth:`state_dict` to ``path`` with ``torch.save``."""
        return atomic_torch_save(path, self.state_dict())

    @classmethod
    def load(cls, path: str | Path, space: SearchSpace) -> AccuracyPredictor:
        """Read a predictor written by :meth:`save` (``weights_only``: nothing is unpickled).

        Raises:
            ConfigError: the file is missing, corrupt, not a predictor, or was fitted on another space.
        """

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"predictor file {path} does not exist")
        try:
            state = load_torch_file(path)
        except TORCH_LOAD_ERRORS as exc:
            raise ConfigError(f"predictor file {path} is corrupt or not a predictor ({type(exc).__name__})") from None
        if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
            raise ConfigError(f"{path} is not a nasforge accuracy predictor")
        cfg = state["config"]
        try:
            pred = cls(space, cfg["hidden"], epochs=cfg["epochs"], lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                       batch_size=cfg["batch_size"], seed=cfg["seed"])
        except KeyError as exc:
            raise ConfigError(f"{path} is a damaged predictor: its config lacks {exc}") from None
        pred.load_state_dict(state)
        return pred


# ------------------------------------------------------------------------------------------------------------
# latency predictors
# ------------------------------------------------------------------------------------------------------------
_LatencyT = TypeVar("_LatencyT", bound="type[LatencyPredictor]")
_LATENCY: Registry[type[LatencyPredictor]] = Registry("latency predictor")


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


def register_latency_predictor(name: str) -> Callable[[_LatencyT], _LatencyT]:
    """Class decorator that makes a :class:`LatencyPredictor` subclass available as ``get_latency_predictor(name)``.

    Raises:
        ConfigError: if ``name`` is already registered or the class is not a LatencyPredictor.
    """

    def decorate(cls: _LatencyT) -> _LatencyT:
        if not (isinstance(cls, type) and issubclass(cls, LatencyPredictor)):
            raise ConfigError(f"@register_latency_predictor({name!r}) needs a LatencyPredictor subclass, got {cls!r}")
        cls.name = name
        return _LATENCY.add(name, cls)

    return decorate


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


# ------------------------------------------------------------------------------------------------------------
# evolution on predicted scores
# ------------------------------------------------------------------------------------------------------------
def _non_dominated_ranks(scores: np.ndarray) -> np.ndarray:
    """Front number per row (0 = non-dominated) for objectives to maximise."""
    n = len(scores)
    ge = np.all(scores[:, None, :] >= scores[None, :, :], axis=2)
    gt = np.any(scores[:, None, :] > scores[None, :, :], axis=2)
    dominates = ge & gt  # dominates[i, j]: i dominates j
    counts = dominates.sum(axis=0)
    ranks = np.full(n, -1, dtype=np.int64)
    current = np.flatnonzero(counts == 0)
    rank = 0
    while len(current):
        ranks[current] = rank
        counts = counts - dominates[current].sum(axis=0)
        counts[ranks >= 0] = -1
        current = np.flatnonzero(counts == 0)
        rank += 1
    return ranks


def _crowding(scores: np.ndarray) -> np.ndarray:
    n, k = scores.shape
    dist = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(k):
        order = np.argsort(scores[:, j], kind="stable")
        col = scores[order, j]
        span = col[-1] - col[0]
        dist[order[0]] = dist[order[-1]] = np.inf
        if span > 0:
            dist[order[1:-1]] += (col[2:] - col[:-2]) / span
    return dist


def _select(scores: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` best rows: by score for one objective, else by front then crowding distance."""
    n, k = scores.shape
    count = min(count, n)
    idx = np.arange(n)
    if k == 1:
        return np.lexsort((idx, -scores[:, 0]))[:count]
    ranks = _non_dominated_ranks(scores)
    chosen: list[int] = []
    for rank in range(int(ranks.max()) + 1):
        members = np.flatnonzero(ranks == rank)
        if len(chosen) + len(members) <= count:
            chosen.extend(members.tolist())
            continue
        crowd = _crowding(scores[members])
        order = np.lexsort((members, -scores[members, 0], -crowd))
        chosen.extend(members[order][: count - len(chosen)].tolist())
        break
    return np.array(chosen, dtype=np.int64)


def _check_int(name: str, value: int, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"{name}={value!r} must be an integer >= {low}")
    return int(value)


def evolve_on_predictors(
    space: SearchSpace,
    score_fn: ScoreFn,
    *,
    population: int = 100,
    generations: int = 50,
    parents: int = 25,
    mutants: int = 50,
    crossovers: int = 50,
    mutate_prob: float = 0.1,
    constraint: Callable[[Architecture], bool] | None = None,
    seed: int = 0,
    max_tries: int = 50,
) -> list[Architecture]:
    """Once-for-All-style evolution on cheap predicted scores.

    A random feasible initial population of ``population`` architectures is scored; each generation keeps
    the best ``parents`` distinct architectures and adds ``mutants`` mutated parents (each position resampled
    with ``mutate_prob``) and ``crossovers`` children of two random parents, so later generations hold
    ``parents + mutants + crossovers`` members. With one objective "best" is the highest score; with several,
    parents are chosen by non-dominated front, then by crowding distance within the last front (NSGA-II).

    ``score_fn`` is called only on architectures it has not scored yet (scores are cached per canonical
    architecture), so it must be deterministic, as a fitted predictor is.

    Args:
        space: where architectures come from; all returned ones are canonical in it.
        score_fn: ``list[Architecture] -> (n, k)`` array of objectives to MAXIMISE (negate costs such as MACs
            or latency); a 1-D array means ``k = 1``. NaN scores rank last.
        population: size of the initial population.
        generations: rounds of selection and variation.
        parents: architectures kept per generation (and returned for one objective).
        mutants: mutated children per generation.
        crossovers: crossover children per generation.
        mutate_prob: per-position resampling probability of a mutation.
        constraint: ``arch -> bool``; only architectures for which it is true are scored or returned.
        seed: seeds every random choice; the same seed gives the same result.
        max_tries: rejection-sampling bound: a child that is still infeasible after ``max_tries`` attempts is
            dropped, and the initial population may draw at most ``population * max_tries`` samples.

    Returns:
        For one objective, the top ``parents`` distinct architectures seen, best first. For several, every
        distinct architecture seen that no other seen architecture dominates, sorted by the first objective
        (best first).

    Raises:
        ConfigError: a bad size or probability, ``score_fn`` returns the wrong shape, or the constraint is so
            strict that the initial population cannot be filled within ``population * max_tries`` samples.
    """
    population = _check_int("population", population, 1)
    generations = _check_int("generations", generations, 0)
    parents = _check_int("parents", parents, 1)
    mutants = _check_int("mutants", mutants, 0)
    crossovers = _check_int("crossovers", crossovers, 0)
    max_tries = _check_int("max_tries", max_tries, 1)
    if parents > population:
        raise ConfigError(f"parents={parents} cannot exceed population={population}")
    if not 0.0 <= float(mutate_prob) <= 1.0:
        raise ConfigError(f"mutate_prob={mutate_prob!r} must be a probability in [0, 1]")
    if not callable(score_fn):
        raise ConfigError(f"score_fn must be callable (list of architectures -> scores), got {score_fn!r}")

    rng = random.Random(seed)
    feasible: Callable[[Architecture], bool] = (lambda a: True) if constraint is None else constraint
    cache: dict[Architecture, np.ndarray] = {}
    n_obj: list[int] = []

    def score(archs: list[Architecture]) -> np.ndarray:
        fresh = list(dict.fromkeys(a for a in archs if a not in cache))
        if fresh:
            raw = np.asarray(score_fn(fresh), dtype=np.float64)
            if raw.ndim == 1:
                raw = raw[:, None]
            if raw.ndim != 2 or raw.shape[0] != len(fresh) or raw.shape[1] == 0:
                raise ConfigError(f"score_fn returned shape {raw.shape} for {len(fresh)} architectures; "
                                  "it must return (n,) or (n, k) objectives to maximise")
            if n_obj and raw.shape[1] != n_obj[0]:
                raise ConfigError(f"score_fn returned {raw.shape[1]} objectives after {n_obj[0]} before")
            n_obj[:] = [raw.shape[1]]
            raw = np.where(np.isnan(raw), -np.inf, raw)
            for a, row in zip(fresh, raw, strict=True):
                cache[a] = row
        return np.stack([cache[a] for a in archs])

    # initial population: bounded rejection sampling
    pop: list[Architecture] = []
    budget = population * max_tries
    draws = 0
    while len(pop) < population and draws < budget:
        draws += 1
        arch = space.sample(rng)
        if feasible(arch):
            pop.append(arch)
    if len(pop) < population:
        raise ConfigError(
            f"the constraint is too strict: only {len(pop)} of {draws} random architectures of space "
            f"{space.name!r} satisfy it, {population} are needed for the initial population; relax the "
            "constraint, lower population or raise max_tries"
        )

    def child(make: Callable[[], Architecture]) -> Architecture | None:
        for _ in range(max_tries):
            arch = make()
            if feasible(arch):
                return arch
        return None

    def mutant(keep: list[Architecture]) -> Architecture:
        return space.mutate(rng.choice(keep), rng, mutate_prob)

    def crossed(keep: list[Architecture]) -> Architecture:
        a, b = rng.sample(keep, 2) if len(keep) >= 2 else (keep[0], keep[0])
        return space.crossover(a, b, rng)

    dropped = 0
    for _ in range(generations):
        distinct = list(dict.fromkeys(pop))
        keep = [distinct[i] for i in _select(score(distinct), parents)]
        children: list[Architecture] = []
        for make, count in ((mutant, mutants), (crossed, crossovers)):
            for _ in range(count):
                made = child(partial(make, keep))
                if made is None:
                    dropped += 1
                else:
                    children.append(made)
        pop = keep + children
    if dropped:
        _log.info("evolve_on_predictors: dropped %d children that stayed infeasible after %d tries each",
                  dropped, max_tries)

    score(list(dict.fromkeys(pop)))
    seen = list(cache)  # insertion order: deterministic
    table = np.stack([cache[a] for a in seen])
    if table.shape[1] == 1:
        return [seen[i] for i in _select(table, parents)]
    front = pareto_front(table, ("maximize",) * table.shape[1])
    order = np.lexsort((front, *(-table[front, j] for j in reversed(range(table.shape[1])))))
    return [seen[i] for i in front[order]]
