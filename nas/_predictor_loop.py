"""The predictor-in-the-loop searcher (Once-for-All / hardware-aware NAS style), registered as ``"predictor"``.

Measuring an architecture is slow; predicting it is cheap. The searcher alternates the two:

1. Warm-up: the ``initial`` architectures, then random ones, until ``n_initial`` distinct architectures are
   measured (complete trials).
2. Rounds: fit one small :class:`AccuracyPredictor` per objective or constraint metric that has no cheap exact
   cost function (``cost_fns``, e.g. ``{"macs": net.macs, "params": net.params}``), run
   :func:`evolve_on_predictors` on the predicted / exact objectives with the constraints as a filter, and
   measure up to ``batch`` not-yet-measured architectures spread along the predicted front. Repeat.

Every trial lives in the same Optuna study (and storage) as the ``"optuna"`` searcher's, so storage, resume,
heartbeats, reaping dead workers' trials, duplicate reuse and the returned :class:`SearchResult` behave alike:
a proposed architecture is enqueued (``study.enqueue_trial``) and run by the same trial runner.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import optuna
from optuna.trial import TrialState

from nasforge.errors import ConfigError
from nasforge.supernets.arch import Architecture, SearchSpace

from ._base import Evaluator, SearchSettings, register_searcher
from ._heartbeat import failed_numbers, reap_dead_trials
from ._objectives import Constraint, Objective
from ._optuna import (
    _ATTR_ARCH,
    _ATTR_METRICS,
    OptunaSearcher,
    _quiet_optuna,
    _TrialRunner,
    architecture_params,
    collect_result,
)
from ._predictors import MIN_SAMPLES, AccuracyPredictor, PredictorReport, evolve_on_predictors
from ._result import SearchResult, TrialRecord
from ._storage import describe_storage

__all__ = ["PROPOSED_ATTR", "PredictorLoopSearcher"]

#: user attribute of a trial proposed from the predicted front: the round number that proposed it
PROPOSED_ATTR = "nasforge:predictor_round"
#: below this many complete trials a round's predictors train on everything (no held-out report)
MIN_HOLDOUT_SAMPLES = 20
_MAX_TRIES = 50  # evolve_on_predictors' rejection-sampling bound (its default)
_log = logging.getLogger(__name__)

CostFn = Callable[[Architecture], float]


@register_searcher("predictor")
class PredictorLoopSearcher(OptunaSearcher):
    """Predictor-in-the-loop search: fit cheap predictors on measured trials, evolve on them, measure the front.

    Args:
        cost_fns: exact, cheap metrics by name (``{"macs": net.macs, "params": net.params}``); objectives and
            constraints on these names are computed, not predicted. Any other objective or constraint metric
            gets its own :class:`AccuracyPredictor` (a regression MLP, fine for any scalar metric).
        n_initial: distinct architectures measured in complete trials (``initial`` first, then random ones)
            before the first round; ``None`` picks ``n_trials // 4`` clipped to [10, 30] (a long search should
            spend its budget in predictor rounds, not on random warm-up). At least 4.
        batch: architectures measured per round, spread evenly (by the first objective) along the predicted
            front.
        population: initial population of each round's evolution.
        generations: generations of each round's evolution.
        hidden: hidden layer widths of the predictors.
        epochs: training epochs of the predictors.
        holdout: fraction held out to report each predictor's error (used from 20 complete trials on; the
            predictor used for the search is then refitted on all of them).
        heartbeat_interval: seconds between heartbeats of a running trial (as in :class:`OptunaSearcher`).
        grace: seconds without a heartbeat after which a RUNNING trial counts as dead (default 6 intervals).

    Attributes:
        last_reports: held-out :class:`PredictorReport` per predicted metric of the last round of the last
            :meth:`search` (empty before the first round; NaN errors when nothing was held out).

    Raises:
        ConfigError: on a bad size, fraction or cost function.
    """

    def __init__(
        self,
        *,
        cost_fns: Mapping[str, CostFn] | None = None,
        n_initial: int | None = None,
        batch: int = 10,
        population: int = 60,
        generations: int = 20,
        hidden: Sequence[int] = (128, 128),
        epochs: int = 60,
        holdout: float = 0.2,
        heartbeat_interval: float = 10.0,
        grace: float | None = None,
    ) -> None:
        super().__init__(sampler="random", heartbeat_interval=heartbeat_interval, grace=grace)
        cost_fns = dict(cost_fns or {})
        bad = [name for name, fn in cost_fns.items() if not isinstance(name, str) or not callable(fn)]
        if bad:
            raise ConfigError(f"cost_fns entries {bad} are not 'metric name' -> callable(architecture) -> float")
        if n_initial is not None and (_not_int(n_initial) or n_initial < MIN_SAMPLES):
            raise ConfigError(f"n_initial={n_initial!r} must be an integer >= {MIN_SAMPLES} (predictors need "
                              f"{MIN_SAMPLES} measured architectures), or None")
        for name, value, low in (("batch", batch, 1), ("population", population, 2), ("generations", generations, 0),
                                 ("epochs", epochs, 1)):
            if _not_int(value) or value < low:
                raise ConfigError(f"{name}={value!r} must be an integer >= {low}")
        if isinstance(holdout, bool) or not 0.0 <= float(holdout) < 1.0:
            raise ConfigError(f"holdout={holdout!r} must be a fraction in [0, 1)")
        self.cost_fns: dict[str, CostFn] = cost_fns
        self.n_initial = n_initial
        self.batch = int(batch)
        self.population = int(population)
        self.generations = int(generations)
        self.hidden = tuple(int(h) for h in hidden)
        if not self.hidden or any(h <= 0 for h in self.hidden):
            raise ConfigError(f"hidden={tuple(hidden)!r} must be one or more positive layer widths")
        self.epochs = int(epochs)
        self.holdout = float(holdout)
        self.last_reports: dict[str, PredictorReport] = {}

    def run(self, space: SearchSpace, evaluate: Evaluator, settings: SearchSettings) -> SearchResult:
        """See :meth:`Searcher.search`. Shares the study's trial budget with any other workers exactly as the
        Optuna searcher does (finished, running and this call's failed trials count; dead workers' trials retry).

        Random trials come from a seeded random sampler until ``n_initial`` distinct architectures are measured;
        after that, each round proposes up to ``batch`` architectures from the predicted front (seeded from
        ``seed`` and the round). If a round proposes nothing new (every front member is measured), one random
        trial runs.
        """
        s = settings
        n_initial = self.n_initial if self.n_initial is not None else int(np.clip(s.n_trials // 4, 10, 30))
        self.last_reports = {}
        with _quiet_optuna():
            study = self._open_study(space, s.objectives, s.storage, s.study_name, s.seed, s.n_trials)
            if not study.get_trials(deepcopy=False):
                for arch in s.initial:
                    study.enqueue_trial(architecture_params(space, arch), skip_if_exists=True)
            reap_dead_trials(study, self.grace)
            failed_before = failed_numbers(study)
            runner = _TrialRunner(study, space, evaluate, s.objectives, s.constraints, self.heartbeat_interval)

            def run(left: int, params: dict[str, int] | None = None, round_no: int = 0) -> None:
                if params is not None:
                    study.enqueue_trial(params, user_attrs={PROPOSED_ATTR: round_no})
                record: TrialRecord = runner.run_one()
                if s.progress is not None:
                    s.progress(s.n_trials - left + 1, s.n_trials, record)

            while (left := self._remaining(study, s.n_trials, failed_before)) > 0:
                measured = _measured(study)
                if len(measured) < max(n_initial, MIN_SAMPLES):
                    run(left)  # warm-up: enqueued initial architectures first, then the random sampler
                    continue
                round_no = len(study.get_trials(deepcopy=False))
                proposals = self._propose(space, s.objectives, s.constraints, study, measured, s.seed, round_no)
                if not proposals:
                    _log.info("predictor round at trial %d proposed nothing new; running a random trial", round_no)
                    run(left)
                    continue
                for arch in proposals:
                    if (left := self._remaining(study, s.n_trials, failed_before)) <= 0:
                        break
                    run(left, architecture_params(space, arch), round_no)
            return collect_result(study, s.objectives, s.constraints, describe_storage(s.storage))

    # -- one round -------------------------------------------------------------------------------------------
    def _propose(
        self,
        space: SearchSpace,
        objectives: tuple[Objective, ...],
        constraints: tuple[Constraint, ...],
        study: optuna.Study,
        measured: dict[Architecture, dict[str, float]],
        seed: int,
        round_no: int,
    ) -> list[Architecture]:
        """Fit the predictors on ``measured``, evolve on them and pick up to ``batch`` unmeasured front members."""
        wanted = list(dict.fromkeys([o.name for o in objectives] + [c.metric for c in constraints]))
        models = self._fit_models(space, measured, wanted, seed, round_no)
        missing = [o.name for o in objectives if o.name not in models]
        if missing:
            _log.warning("no predictor for objectives %s (too few measured values); running random trials", missing)
            return []
        scores = _RoundScores(models, objectives, constraints)
        skipped = [str(c) for c in constraints if c.metric not in models]
        if skipped:
            _log.info("constraints %s have no predictor or cost function yet; the evolution ignores them", skipped)
        front = self._evolve(space, scores, measured, _seed(seed, round_no, len(wanted)), round_no)
        taken = _taken(study)
        fresh = [a for a in front if a not in taken]
        if len(objectives) == 1 or len(fresh) <= self.batch:
            return fresh[: self.batch]
        return _spread(fresh, scores.score(fresh)[:, 0], self.batch)

    def _fit_models(
        self, space: SearchSpace, measured: dict[Architecture, dict[str, float]], wanted: list[str], seed: int,
        round_no: int,
    ) -> dict[str, Callable[[list[Architecture]], np.ndarray]]:
        """One model per ``wanted`` metric: its exact cost function, else a predictor fitted on ``measured``
        (none when too few values are measured); sets :attr:`last_reports` and logs them."""
        models: dict[str, Callable[[list[Architecture]], np.ndarray]] = {}
        reports: dict[str, PredictorReport] = {}
        for j, name in enumerate(wanted):
            if name in self.cost_fns:
                fn = self.cost_fns[name]
                models[name] = lambda archs, fn=fn: np.array([float(fn(a)) for a in archs], dtype=np.float64)
                continue
            fitted = self._fit(space, measured, name, _seed(seed, round_no, j))
            if fitted is not None:
                models[name], reports[name] = fitted
        self.last_reports = reports
        for name, rep in reports.items():
            _log.info("predictor round at trial %d: %s predictor on %d architectures, held-out rmse=%.4g mae=%.4g "
                      "kendall_tau=%.3f (%d held out)", round_no, name, rep.n_train + rep.n_holdout, rep.rmse,
                      rep.mae, rep.kendall_tau, rep.n_holdout)
        return models

    def _evolve(self, space: SearchSpace, scores: _RoundScores, measured: dict[Architecture, dict[str, float]],
                evolve_seed: int, round_no: int) -> list[Architecture]:
        """The predicted front of one round: constraints as a filter if enough random architectures are predicted
        to meet them, else as a penalty."""
        options: dict[str, int] = {
            "population": self.population, "generations": self.generations, "parents": max(2, self.population // 4),
            "mutants": self.population // 2, "crossovers": self.population // 2, "max_tries": _MAX_TRIES,
            "seed": evolve_seed,
        }
        usable = scores.usable
        if usable and _enough_feasible(space, scores.feasible_all, self.population, evolve_seed):
            return evolve_on_predictors(space, scores.score, constraint=scores.feasible, **options)
        if not usable:
            return evolve_on_predictors(space, scores.score, **options)
        _log.warning("predictor round at trial %d: fewer than %d of %d random architectures are predicted to "
                     "meet the constraints %s; evolving with the constraints as a penalty instead", round_no,
                     self.population, self.population * _MAX_TRIES, [str(c) for c in usable])
        # An infeasible architecture scores far below any feasible one in every objective, and the more it
        # violates the lower: the front is feasible if evolution found a feasible one, else least violating.
        offsets = np.array([1e3 * (1.0 + max(abs(m[o.name]) for m in measured.values() if o.name in m))
                            for o in scores.objectives])
        return evolve_on_predictors(space, scores.penalised(offsets), **options)

    def _fit(
        self, space: SearchSpace, measured: dict[Architecture, dict[str, float]], name: str, seed: int
    ) -> tuple[AccuracyPredictor, PredictorReport] | None:
        """A predictor of metric ``name`` fitted on the measured architectures that have it, or None if too few."""
        pairs = [(a, m[name]) for a, m in measured.items() if name in m and math.isfinite(m[name])]
        if len(pairs) < MIN_SAMPLES:
            return None
        archs, targets = [a for a, _ in pairs], [y for _, y in pairs]
        holdout = self.holdout if len(pairs) >= MIN_HOLDOUT_SAMPLES else 0.0
        predictor = AccuracyPredictor(space, self.hidden, epochs=self.epochs, seed=seed)
        report = predictor.fit(archs, targets, holdout=holdout)
        if holdout > 0:  # the held-out fit only measures the error; search with a predictor of all the data
            predictor.fit(archs, targets, holdout=0.0)
        return predictor, report


class _RoundScores:
    """One round's metric models (predictors or exact costs) behind a per-architecture cache: each model runs
    once per architecture, batched, and only where needed."""

    def __init__(self, models: dict[str, Callable[[list[Architecture]], np.ndarray]],
                 objectives: tuple[Objective, ...], constraints: tuple[Constraint, ...]) -> None:
        self.models, self.objectives = models, objectives
        self.cache: dict[str, dict[Architecture, float]] = {name: {} for name in models}
        self.sign = np.array([1.0 if o.direction == "maximize" else -1.0 for o in objectives])
        self.objective_names = [o.name for o in objectives]
        self.usable = [c for c in constraints if c.metric in models]
        self.constraint_names = list(dict.fromkeys(c.metric for c in self.usable))

    def values(self, archs: list[Architecture], names: Sequence[str]) -> list[dict[str, float]]:
        """The ``names`` metrics of each architecture."""
        for name in names:
            known = self.cache[name]
            fresh = list(dict.fromkeys(a for a in archs if a not in known))
            if fresh:
                known.update(zip(fresh, np.asarray(self.models[name](fresh), dtype=np.float64).tolist(), strict=True))
        return [{name: self.cache[name][a] for name in names} for a in archs]

    def score(self, archs: list[Architecture]) -> np.ndarray:
        """The objectives to maximise (minimised ones negated), one row per architecture."""
        return np.array([[v[n] for n in self.objective_names] for v in self.values(archs, self.objective_names)]
                        ) * self.sign

    def feasible_all(self, archs: list[Architecture]) -> list[bool]:
        """Whether each architecture is predicted to meet the usable constraints."""
        return [all(c.is_satisfied(v) for c in self.usable) for v in self.values(archs, self.constraint_names)]

    def feasible(self, arch: Architecture) -> bool:
        return self.feasible_all([arch])[0]

    def penalised(self, offsets: np.ndarray) -> Callable[[list[Architecture]], np.ndarray]:
        """:meth:`score` minus ``offsets`` times (1 + summed violation) for a predicted-infeasible architecture."""

        def penalised(archs: list[Architecture]) -> np.ndarray:
            excess = np.array([sum(max(0.0, c.violation(v)) for c in self.usable)
                               for v in self.values(archs, self.constraint_names)])
            return self.score(archs) - np.where(excess > 0, 1.0 + excess, 0.0)[:, None] * offsets

        return penalised


def _not_int(value: object) -> bool:
    return isinstance(value, bool) or not isinstance(value, (int, np.integer))


def _seed(seed: int, round_no: int, index: int) -> int:
    """A 31-bit seed derived from the search seed, the round (trial count at its start) and a per-use index."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, round_no, index]).generate_state(1)[0] >> 1)


def _enough_feasible(
    space: SearchSpace, feasible: Callable[[list[Architecture]], list[bool]], population: int, seed: int
) -> bool:
    """Whether ``population`` of at most ``population * _MAX_TRIES`` random architectures are feasible.

    Mirrors the rejection sampling of :func:`evolve_on_predictors`' initial population (same seeded draws, so
    the predictions land in the round's cache) but predicts in batches; False means that evolution would fail.
    """
    rng = random.Random(seed)
    found = drawn = 0
    while found < population and drawn < population * _MAX_TRIES:
        chunk = [space.sample(rng) for _ in range(min(4 * population, population * _MAX_TRIES - drawn))]
        drawn += len(chunk)
        found += sum(feasible(chunk))
    return found >= population


def _measured(study: optuna.Study) -> dict[Architecture, dict[str, float]]:
    """Metrics of each distinct architecture of the study's complete trials (the earliest trial stands for it)."""
    out: dict[Architecture, dict[str, float]] = {}
    for t in sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number):
        arch, metrics = t.user_attrs.get(_ATTR_ARCH), t.user_attrs.get(_ATTR_METRICS)
        if isinstance(arch, str) and isinstance(metrics, dict):
            out.setdefault(Architecture.from_json(arch), {str(k): float(v) for k, v in metrics.items()})
    return out


def _taken(study: optuna.Study) -> set[Architecture]:
    """Architectures some trial of the study already holds (complete, failed or running)."""
    return {Architecture.from_json(a) for t in study.get_trials(deepcopy=False)
            if isinstance(a := t.user_attrs.get(_ATTR_ARCH), str)}


def _spread(archs: list[Architecture], key: np.ndarray, count: int) -> list[Architecture]:
    """``count`` of ``archs`` whose ``key`` values are closest to evenly spaced targets over the key's range."""
    targets = np.linspace(float(key.min()), float(key.max()), count)
    free = np.ones(len(archs), dtype=bool)
    picked: list[int] = []
    for target in targets:
        candidates = np.flatnonzero(free)
        best = int(candidates[np.argmin(np.abs(key[candidates] - target))])
        free[best] = False
        picked.append(best)
    return [archs[i] for i in sorted(picked)]
