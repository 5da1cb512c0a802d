"""The Optuna searcher: TPE, NSGA-II, NSGA-III, GP or random sampling over a :class:`SearchSpace`, resumable.

Each position of each dimension is one categorical parameter (``ks_0`` ... ``ks_11``, ``r``). Constraints are
reported per trial with ``Trial.set_constraint`` (Optuna 5; the value is the relative violation, ``<= 0`` is
feasible); TPE and NSGA-II read them back from ``FrozenTrial.constraints`` on their own (so do NSGA-III and the GP sampler), so no
``constraints_func`` (deprecated in Optuna 5) is passed.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from nasforge.errors import ConfigError
from nasforge.supernets.arch import Architecture, SearchSpace

from ._base import OPTUNA_SAMPLERS, Evaluator, Searcher, SearchSettings, register_searcher
from ._heartbeat import Heartbeat, failed_numbers, reap_dead_trials, used_budget
from ._objectives import Constraint, Objective
from ._result import SearchResult, TrialRecord, build_front
from ._storage import describe_storage, redact_storage, resolve_storage

__all__ = ["GP_MAX_TRIALS", "OPTUNA_SAMPLERS", "OptunaSearcher", "open_study", "param_name"]

#: the GP sampler refits a Gaussian process on every trial (cubic in the trials): more than this is refused
GP_MAX_TRIALS = 300
_ATTR_ARCH = "arch"
_ATTR_METRICS = "metrics"
_ATTR_ERROR = "error"
_ATTR_DUPLICATE = "duplicate_of"
_STUDY_OBJECTIVES = "nasforge:objectives"
_STUDY_SPACE = "nasforge:space"
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
_log = logging.getLogger(__name__)


class _TrialFailure(Exception):
    """Ends one trial as FAIL with a message for the user; never leaves the searcher."""


def param_name(dim_name: str, index: int | None) -> str:
    """Optuna parameter name of one position: ``"ks_3"``, or ``"r"`` for a scalar dimension."""
    return dim_name if index is None else f"{dim_name}_{index}"


@register_searcher("optuna")
class OptunaSearcher(Searcher):
    """Search with an Optuna sampler; the study is resumable from journal or database storage.

    Args:
        sampler: ``"tpe"`` (default; Optuna's multi-objective TPE), ``"nsga2"``, ``"nsga3"`` (reference-point
            NSGA-III, for 3 or more objectives), ``"gp"`` (Gaussian-process Bayesian optimisation; at most
            :data:`GP_MAX_TRIALS` trials, since each trial refits the GP) or ``"random"``.
        n_startup_trials: random trials before TPE or the GP starts modelling.
        population_size: NSGA-II/III generation size; ``None`` picks ``n_trials // 4`` clipped to [10, 50].
        heartbeat_interval: seconds between heartbeats of a running trial (:mod:`nasforge.nas._heartbeat`).
        grace: seconds without a heartbeat after which a RUNNING trial counts as dead, is failed and retried
            (default 6 intervals).

    Raises:
        ConfigError: on an unknown sampler or a non-positive size.
    """

    def __init__(self, *, sampler: str = "tpe", n_startup_trials: int = 10, population_size: int | None = None,
                 heartbeat_interval: float = 10.0, grace: float | None = None):
        if sampler not in OPTUNA_SAMPLERS:
            raise ConfigError(f"unknown Optuna sampler {sampler!r}; choose one of {list(OPTUNA_SAMPLERS)}")
        if n_startup_trials < 0:
            raise ConfigError(f"n_startup_trials={n_startup_trials} is negative; use 0 or more")
        if population_size is not None and population_size < 2:
            raise ConfigError(f"population_size={population_size} is too small; use 2 or more")
        if heartbeat_interval <= 0 or (grace is not None and grace <= heartbeat_interval):
            raise ConfigError(f"heartbeat_interval={heartbeat_interval} must be > 0 and grace={grace} larger than it")
        self.sampler = sampler
        self.n_startup_trials = n_startup_trials
        self.heartbeat_interval = heartbeat_interval
        self.grace = grace if grace is not None else 6 * heartbeat_interval
        self.population_size = population_size

    def make_sampler(self, seed: int, n_trials: int) -> optuna.samplers.BaseSampler:
        """A fresh, seeded Optuna sampler of the configured kind."""
        if self.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.n_startup_trials)
        size = self.population_size or int(np.clip(n_trials // 4, 10, 50))
        if self.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=size)
        if self.sampler == "nsga3":
            with warnings.catch_warnings():  # "experimental" in Optuna 5: a warning per study is noise for users
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.samplers.NSGAIIISampler(seed=seed, population_size=size)
        if self.sampler == "gp":
            if n_trials > GP_MAX_TRIALS:
                raise ConfigError(f"the gp sampler refits a Gaussian process every trial; {n_trials} trials is "
                                  f"more than its cap of {GP_MAX_TRIALS}: use fewer trials or sampler tpe/nsga2")
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=self.n_startup_trials,
                                             deterministic_objective=False, warn_independent_sampling=False)
        return optuna.samplers.RandomSampler(seed=seed)

    def run(self, space: SearchSpace, evaluate: Evaluator, settings: SearchSettings) -> SearchResult:
        """See :meth:`Searcher.search`. Runs trials until the study (shared with any other workers) has used
        ``n_trials``: finished or running trials and the trials that failed during this call (failures from
        before are retried, as a resume should); a trial failed because its worker died is retried."""
        s = settings
        with _quiet_optuna():
            study = self._open_study(space, s.objectives, s.storage, s.study_name, s.seed, s.n_trials)
            if not study.get_trials(deepcopy=False):
                for arch in s.initial:
                    study.enqueue_trial(architecture_params(space, arch), skip_if_exists=True)
            runner = _TrialRunner(study, space, evaluate, s.objectives, s.constraints, self.heartbeat_interval)
            # Several workers may share the study: each starts a trial only while the used budget (finished,
            # failed and running trials, its peers' included) is below n_trials, so together they stop there.
            reap_dead_trials(study, self.grace)
            failed_before = failed_numbers(study)
            while (left := self._remaining(study, s.n_trials, failed_before)) > 0:
                record = runner.run_one()
                if s.progress is not None:
                    s.progress(s.n_trials - left + 1, s.n_trials, record)
            return collect_result(study, s.objectives, s.constraints, describe_storage(s.storage))

    def _remaining(self, study: optuna.Study, n_trials: int, failed_before: frozenset[int]) -> int:
        """Trials still to start in ``study`` (shared by all its workers), after failing dead workers' trials."""
        reap_dead_trials(study, self.grace)
        return n_trials - used_budget(study, failed_before)

    def _open_study(
        self,
        space: SearchSpace,
        objectives: tuple[Objective, ...],
        storage: str | None,
        study_name: str,
        seed: int,
        n_trials: int,
    ) -> optuna.Study:
        study = open_study(space, objectives, storage, study_name, seed)
        # A resumed run gets a different sampler seed, so a random sampler does not replay the first run.
        n_existing = len(study.get_trials(deepcopy=False))
        run_seed = int(np.random.SeedSequence([seed, n_existing]).generate_state(1)[0])
        study.sampler = self.make_sampler(run_seed, n_trials)
        return study


def open_study(
    space: SearchSpace, objectives: Sequence[Objective], storage: str | None, study_name: str, seed: int
) -> optuna.Study:
    """Create or load ``study_name`` in ``storage`` (one direction per objective, a seeded random sampler) and
    check that a loaded study was made for the same objectives and space (a new one is tagged with them; the
    values are named after the objectives' metrics).

    Raises:
        ConfigError: if the stored study has other objectives or another space.
    """
    objectives = tuple(objectives)
    study = optuna.create_study(
        storage=resolve_storage(storage),
        sampler=optuna.samplers.RandomSampler(seed=seed),
        study_name=study_name,
        directions=[o.direction for o in objectives],
        load_if_exists=True,
    )
    _check_study(study, space, objectives, describe_storage(storage))
    _name_metrics(study, objectives)
    return study


def _name_metrics(study: optuna.Study, objectives: tuple[Objective, ...]) -> None:
    """Give the study's values their metric names (``optuna trials``, ``optuna-dashboard`` show them)."""
    names = [o.name for o in objectives]
    if study.metric_names != names:
        with warnings.catch_warnings():  # set_metric_names is marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Hide Optuna's per-trial INFO lines for the duration of the block, then restore the verbosity."""
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(max(previous, optuna.logging.WARNING))
    try:
        yield
    finally:
        optuna.logging.set_verbosity(previous)


def _check_study(study: optuna.Study, space: SearchSpace, objectives: tuple[Objective, ...], where: str) -> None:
    """Raise if a resumed study was made for other objectives or another space; tag a new one."""
    wanted = [str(o) for o in objectives]
    directions = [d.name.lower() for d in study.directions]
    attrs = study.user_attrs
    stored = attrs.get(_STUDY_OBJECTIVES)
    if directions != [o.direction for o in objectives] or (stored is not None and stored != wanted):
        raise ConfigError(
            f"study {study.study_name!r} in storage {where!r} was created for objectives "
            f"{stored or directions} but this search asks for {wanted}; use a new study_name or storage, "
            "or the study's original objectives"
        )
    if attrs.get(_STUDY_SPACE, space.name) != space.name:
        raise ConfigError(
            f"study {study.study_name!r} in storage {where!r} searches space {attrs[_STUDY_SPACE]!r}, "
            f"not {space.name!r}; use a new study_name or storage"
        )
    if stored is None:
        study.set_user_attr(_STUDY_OBJECTIVES, wanted)
        study.set_user_attr(_STUDY_SPACE, space.name)


class _TrialRunner:
    """Runs one ask -> suggest -> evaluate (or reuse) -> tell cycle at a time."""

    def __init__(
        self,
        study: optuna.Study,
        space: SearchSpace,
        evaluate: Evaluator,
        objectives: tuple[Objective, ...],
        constraints: tuple[Constraint, ...],
        heartbeat_interval: float = 10.0,
    ) -> None:
        self.study, self.space, self.evaluate = study, space, evaluate
        self.heartbeat_interval = heartbeat_interval
        self.objectives, self.constraints = objectives, constraints
        self._known: dict[str, tuple[int, dict[str, float]]] = {}
        self._indexed: set[int] = set()

    def run_one(self) -> TrialRecord:
        """Run one trial to its end (COMPLETE or FAIL) and return its record."""
        trial = self.study.ask()
        try:
            with Heartbeat(self.study, trial._trial_id, self.heartbeat_interval):
                frozen = self._complete(trial)
        except _TrialFailure as exc:
            _log.warning("trial %d failed: %s", trial.number, exc)
            trial.set_user_attr(_ATTR_ERROR, str(exc))
            frozen = self.study.tell(trial, state=TrialState.FAIL)
        except BaseException as exc:  # Ctrl-C, or a supervisor's SIGTERM (see _supervisor): FAIL, with the reason
            trial.set_user_attr(_ATTR_ERROR, f"worker stopped mid-trial: {type(exc).__name__} {exc}".strip())
            self.study.tell(trial, state=TrialState.FAIL)
            raise
        return trial_record(frozen, self.objectives, self.constraints)

    def _complete(self, trial: Trial) -> FrozenTrial:
        arch = suggest_architecture(trial, self.space)
        key = arch.to_json()
        trial.set_user_attr(_ATTR_ARCH, key)
        metrics = self._reuse(trial, key)
        if metrics is None:
            metrics = self._evaluate(arch)
        trial.set_user_attr(_ATTR_METRICS, metrics)
        values = self._objective_values(metrics)
        for constraint in self.constraints:
            try:
                trial.set_constraint(str(constraint), constraint.violation(metrics))
            except ConfigError as exc:
                raise _TrialFailure(str(exc)) from None
        frozen = self.study.tell(trial, values)
        self._known.setdefault(key, (frozen.number, metrics))
        return frozen

    def _reuse(self, trial: Trial, key: str) -> dict[str, float] | None:
        """Metrics of an earlier complete trial of the same architecture, or None."""
        self._index_complete_trials()
        if key not in self._known:
            return None
        number, metrics = self._known[key]
        trial.set_user_attr(_ATTR_DUPLICATE, number)
        return dict(metrics)

    def _index_complete_trials(self) -> None:
        # Also picks up trials that other workers finished in the same storage.
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.number in self._indexed:
                continue
            self._indexed.add(t.number)
            arch, metrics = t.user_attrs.get(_ATTR_ARCH), t.user_attrs.get(_ATTR_METRICS)
            if isinstance(arch, str) and isinstance(metrics, dict):
                self._known.setdefault(arch, (t.number, {k: float(v) for k, v in metrics.items()}))

    def _evaluate(self, arch: Architecture) -> dict[str, float]:
        try:
            # Any error of the user's evaluator fails this trial only; the search goes on.
            raw = self.evaluate(arch)
        except Exception as exc:
            raise _TrialFailure(f"evaluator raised {type(exc).__name__}: {exc}") from exc
        return _as_metrics(raw)

    def _objective_values(self, metrics: Mapping[str, float]) -> list[float]:
        return _objective_values(metrics, self.objectives)


def _objective_values(metrics: Mapping[str, float], objectives: Sequence[Objective]) -> list[float]:
    """The objectives' values in ``metrics``, in order; raises :class:`_TrialFailure` if one is missing or NaN."""
    values = []
    for o in objectives:
        if o.name not in metrics:
            raise _TrialFailure(
                f"the evaluator returned no {o.name!r} (objective) but only {sorted(metrics)}; "
                f"return {o.name!r} or change the objectives"
            )
        if math.isnan(metrics[o.name]):
            raise _TrialFailure(f"the evaluator returned NaN for objective {o.name!r}")
        values.append(metrics[o.name])
    return values


def _as_metrics(raw: object) -> dict[str, float]:
    if not isinstance(raw, Mapping):
        raise _TrialFailure(f"the evaluator returned {type(raw).__name__}, not a mapping of metric name -> number")
    metrics: dict[str, float] = {}
    for name, value in raw.items():
        try:
            metrics[str(name)] = float(value)
        except (TypeError, ValueError):
            raise _TrialFailure(f"the evaluator returned {value!r} for metric {name!r}, not a number") from None
    return metrics


def architecture_params(space: SearchSpace, arch: Architecture) -> dict[str, int]:
    """The Optuna parameters (see :func:`suggest_architecture`) that encode ``arch``."""
    arch = space.canonical(arch)
    params: dict[str, int] = {}
    for dim in space.dims:
        value = arch[dim.name]
        if isinstance(value, int):
            params[param_name(dim.name, None)] = value
        else:
            params.update({param_name(dim.name, i): v for i, v in enumerate(value)})
    return params


def suggest_architecture(trial: Trial, space: SearchSpace) -> Architecture:
    """Suggest one categorical parameter per position and return the canonical architecture."""
    genes: dict[str, int | list[int]] = {}
    for dim in space.dims:
        if dim.is_scalar:
            genes[dim.name] = trial.suggest_categorical(param_name(dim.name, None), list(dim.choices))
        else:
            genes[dim.name] = [
                trial.suggest_categorical(param_name(dim.name, i), list(dim.choices)) for i in range(dim.positions)
            ]
    return space.canonical(genes)


def trial_record(
    trial: FrozenTrial, objectives: Sequence[Objective], constraints: Sequence[Constraint]
) -> TrialRecord:
    """The :class:`TrialRecord` of an Optuna trial; feasibility is judged against ``constraints``."""
    attrs = trial.user_attrs
    arch = Architecture.from_json(attrs[_ATTR_ARCH]) if _ATTR_ARCH in attrs else Architecture(())
    metrics = {str(k): float(v) for k, v in attrs.get(_ATTR_METRICS, {}).items()}
    if not metrics and trial.values is not None:
        metrics = {o.name: float(v) for o, v in zip(objectives, trial.values, strict=True)}
    state = trial.state.name.lower()
    feasible = state == "complete" and all(c.is_satisfied(metrics) for c in constraints)
    return TrialRecord(
        number=trial.number,
        arch=arch,
        metrics=metrics,
        state=state,
        feasible=feasible,
        error=attrs.get(_ATTR_ERROR),
        duplicate_of=attrs.get(_ATTR_DUPLICATE),
    )


def collect_result(
    study: optuna.Study, objectives: Sequence[Objective], constraints: Sequence[Constraint], storage: str
) -> SearchResult:
    """All trials of ``study`` as records, plus the feasible Pareto front."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    records = [trial_record(t, objectives, constraints) for t in trials]
    return SearchResult(
        objectives=tuple(objectives),
        constraints=tuple(constraints),
        trials=records,
        front=build_front(records, objectives),
        study_name=study.study_name,
        storage=redact_storage(storage),
    )
