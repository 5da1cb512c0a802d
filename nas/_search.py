"""``run_search``: the one verb that parses objectives/constraints, picks a searcher and runs it."""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence

from nasforge.errors import ConfigError
from nasforge.supernets.arch import Architecture, SearchSpace

from ._base import (
    NNI_SAMPLERS,
    OPTUNA_SAMPLERS,
    Evaluator,
    Progress,
    Searcher,
    SearchSettings,
    find_searcher,
    list_searchers,
)
from ._objectives import Constraint, Objective, parse_constraints, parse_objectives
from ._result import SearchResult
from ._storage import describe_storage

__all__ = ["SUBNET_METRICS", "check_search_settings", "run_search"]

#: The metrics nasforge's subnet evaluator returns (:func:`nasforge.search.make_subnet_evaluator`).
SUBNET_METRICS: tuple[str, ...] = ("accuracy", "macs", "params", "latency_ms", "int8_accuracy", "int8_latency_ms")


def run_search(
    space: SearchSpace,
    evaluate: Evaluator,
    *,
    objectives: Sequence[str | Objective] = ("accuracy", "macs"),
    constraints: Sequence[str | Constraint] = (),
    n_trials: int = 40,
    sampler: str | Searcher = "tpe",
    storage: str | os.PathLike[str] | None = None,
    study_name: str = "nasforge",
    seed: int = 0,
    progress: Progress | None = None,
    initial: Sequence[Architecture] = (),
    heartbeat: float | None = None,
) -> SearchResult:
    """Search ``space`` for architectures on the Pareto front of ``objectives`` that meet ``constraints``.

    Args:
        space: the search space; every evaluated architecture is canonical in it.
        evaluate: returns the metrics of one architecture, e.g. ``{"accuracy": 0.7, "macs": 2e8}``. An
            exception fails that trial (its text is kept) and the search goes on; an architecture seen before
            in the study reuses the earlier metrics instead of calling ``evaluate`` again.
        objectives: ``"accuracy"``, ``"macs"``, ``"name:max"`` / ``"name:min"`` or :class:`Objective` values.
        constraints: ``"latency_ms<=5"``-style texts or :class:`Constraint` values.
        n_trials: wanted number of finished trials in the study; a resumed study runs only the missing ones.
        sampler: ``"tpe"``, ``"nsga2"``, ``"nsga3"``, ``"gp"`` or ``"random"`` (Optuna), ``"nni-evolution"``,
            ``"nni-random"`` or ``"nni-grid"`` (an NNI strategy, see :class:`NniSearcher`; needs
            ``nasforge[nni]``), the name of a registered searcher (``"predictor"``: predictor-in-the-loop,
            ``"nni"``: NNI's evolution, ``"optuna:nsga2"``, ``"nni:grid"``, ...; see :func:`describe_searchers`),
            or a configured :class:`Searcher`.
        storage: ``None`` (in memory), a ``.log`` / ``.journal`` file or ``"journal:PATH"`` (Optuna journal
            file), or a database URL such as ``"sqlite:///study.db"``. Existing studies are resumed.
        study_name: the study to create or resume.
        seed: seeds the sampler.
        progress: called after each trial with ``(done, total, record)``.
        initial: architectures to evaluate first when the study is new, e.g. ``(space.largest(),
            space.smallest())`` so the front's ends are known from the start.
        heartbeat: seconds between heartbeats of a running trial (Optuna samplers; default 10). A trial whose
            worker stopped beating for 6 intervals is failed and its architecture retried by the next worker.

    Returns:
        A :class:`SearchResult` with every trial of the study and the feasible Pareto front.

    Raises:
        ConfigError: on malformed objectives/constraints, an unknown sampler, a bad ``n_trials`` or storage,
            or a stored study that was created for other objectives.
    """
    parsed_objectives, parsed_constraints = parse_objectives(objectives), parse_constraints(constraints)
    _check_n_trials(n_trials)
    if not isinstance(study_name, str) or not study_name:
        raise ConfigError(f"study_name {study_name!r} must be a non-empty string")
    settings = SearchSettings(
        objectives=parsed_objectives, constraints=parsed_constraints, n_trials=n_trials,
        storage=None if storage is None else describe_storage(storage), study_name=study_name, seed=seed,
        progress=progress, initial=tuple(initial))
    return _make_searcher(sampler, heartbeat).search(space, evaluate, **settings.as_kwargs())


def check_search_settings(
    objectives: Sequence[str | Objective],
    constraints: Sequence[str | Constraint] = (),
    sampler: str | Searcher = "tpe",
    *,
    metrics: Collection[str] = SUBNET_METRICS,
) -> tuple[tuple[Objective, ...], tuple[Constraint, ...]]:
    """Check a search's settings before any work: objectives and constraints parse and name metrics the
    evaluator returns (``metrics``; nasforge's subnet evaluator by default), and the sampler exists (with its
    extra installed). Returns the parsed objectives and constraints.

    Raises:
        ConfigError: one line naming the bad value and what to pass instead.
    """
    parsed_objectives = parse_objectives(objectives)
    parsed_constraints = parse_constraints(constraints)
    known = ", ".join(metrics)
    for o in parsed_objectives:
        if o.name not in metrics:
            raise ConfigError(f"objective {o.name!r} is not a metric the search measures; use one of {known}")
    for c in parsed_constraints:
        if c.metric not in metrics:
            raise ConfigError(f"constraint '{c}' is on {c.metric!r}, which the search does not measure; "
                              f"constrain one of {known}")
    _make_searcher(sampler)
    return parsed_objectives, parsed_constraints


def _check_n_trials(n_trials: int) -> None:
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ConfigError(f"n_trials={n_trials!r} must be a positive integer")


def _make_searcher(sampler: str | Searcher, heartbeat: float | None = None) -> Searcher:
    """The searcher a ``sampler`` names: a registered entry (``"optuna:nsga2"``, ``"predictor"``) or an older name
    of one (``"nsga2"``, ``"nni-grid"``); a :class:`Searcher` is used as it is."""
    if isinstance(sampler, Searcher):
        return sampler
    entry = find_searcher(sampler)
    if entry is None:
        raise ConfigError(
            f"unknown sampler {sampler!r}; choose one of {list(OPTUNA_SAMPLERS)} (Optuna), {list(NNI_SAMPLERS)} "
            f"(NNI, needs nasforge[nni]) or a registered searcher {list_searchers()}"
        )
    extra = {} if heartbeat is None or not entry.takes_heartbeat else {"heartbeat_interval": heartbeat}
    return entry.create(**extra)
