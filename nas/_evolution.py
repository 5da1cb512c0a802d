"""Once-for-All-style evolution (parents, mutants, crossovers) on cheap predicted scores, single- or
multi-objective, with bounded rejection sampling for a constraint."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from functools import partial

import numpy as np

from nasforge.errors import ConfigError
from nasforge.supernets.arch import Architecture, SearchSpace

from ._pareto import pareto_front

__all__ = ["ScoreFn", "evolve_on_predictors"]

_log = logging.getLogger("nasforge.nas._predictors")  # the logger this evolution has always used

ScoreFn = Callable[[list[Architecture]], np.ndarray]
"""Scores a batch of architectures: an ``(n, k)`` (or ``(n,)`` for ``k = 1``) array of objectives to maximise."""


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
    space: SearchSpace, score_fn: ScoreFn, *, population: int = 100, generations: int = 50, parents: int = 25,
    mutants: int = 50, crossovers: int = 50, mutate_prob: float = 0.1,
    constraint: Callable[[Architecture], bool] | None = None, seed: int = 0, max_tries: int = 50,
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
    population, generations, parents, mutants, crossovers, max_tries = _check_options(
        population, generations, parents, mutants, crossovers, max_tries, mutate_prob, score_fn)
    rng = random.Random(seed)
    feasible: Callable[[Architecture], bool] = (lambda a: True) if constraint is None else constraint
    scores = _ScoreCache(score_fn)
    pop = _initial_population(space, rng, feasible, population, max_tries)
    breed = _Breeder(space, rng, feasible, mutate_prob, max_tries)
    for _ in range(generations):
        distinct = list(dict.fromkeys(pop))
        keep = [distinct[i] for i in _select(scores(distinct), parents)]
        pop = keep + breed.children(keep, mutants, crossovers)
    if breed.dropped:
        _log.info("evolve_on_predictors: dropped %d children that stayed infeasible after %d tries each",
                  breed.dropped, max_tries)
    scores(list(dict.fromkeys(pop)))
    return scores.best(parents)


def _check_options(population: int, generations: int, parents: int, mutants: int, crossovers: int, max_tries: int,
                   mutate_prob: float, score_fn: object) -> tuple[int, int, int, int, int, int]:
    """The sizes of :func:`evolve_on_predictors` as ints, after checking them, the probability and ``score_fn``."""
    sizes = (_check_int("population", population, 1), _check_int("generations", generations, 0),
             _check_int("parents", parents, 1), _check_int("mutants", mutants, 0),
             _check_int("crossovers", crossovers, 0), _check_int("max_tries", max_tries, 1))
    if sizes[2] > sizes[0]:
        raise ConfigError(f"parents={sizes[2]} cannot exceed population={sizes[0]}")
    if not 0.0 <= float(mutate_prob) <= 1.0:
        raise ConfigError(f"mutate_prob={mutate_prob!r} must be a probability in [0, 1]")
    if not callable(score_fn):
        raise ConfigError(f"score_fn must be callable (list of architectures -> scores), got {score_fn!r}")
    return sizes


class _ScoreCache:
    """``score_fn`` called once per distinct architecture; the scores in the order they were first asked for."""

    def __init__(self, score_fn: ScoreFn) -> None:
        self.score_fn = score_fn
        self.cache: dict[Architecture, np.ndarray] = {}
        self.n_obj: int | None = None

    def __call__(self, archs: list[Architecture]) -> np.ndarray:
        fresh = list(dict.fromkeys(a for a in archs if a not in self.cache))
        if fresh:
            raw = np.asarray(self.score_fn(fresh), dtype=np.float64)
            if raw.ndim == 1:
                raw = raw[:, None]
            if raw.ndim != 2 or raw.shape[0] != len(fresh) or raw.shape[1] == 0:
                raise ConfigError(f"score_fn returned shape {raw.shape} for {len(fresh)} architectures; "
                                  "it must return (n,) or (n, k) objectives to maximise")
            if self.n_obj is not None and raw.shape[1] != self.n_obj:
                raise ConfigError(f"score_fn returned {raw.shape[1]} objectives after {self.n_obj} before")
            self.n_obj = raw.shape[1]
            raw = np.where(np.isnan(raw), -np.inf, raw)
            for a, row in zip(fresh, raw, strict=True):
                self.cache[a] = row
        return np.stack([self.cache[a] for a in archs])

    def best(self, parents: int) -> list[Architecture]:
        """For one objective the top ``parents`` architectures seen; for several, the seen non-dominated ones
        sorted by the first objective (best first)."""
        seen = list(self.cache)  # insertion order: deterministic
        table = np.stack([self.cache[a] for a in seen])
        if table.shape[1] == 1:
            return [seen[i] for i in _select(table, parents)]
        front = pareto_front(table, ("maximize",) * table.shape[1])
        order = np.lexsort((front, *(-table[front, j] for j in reversed(range(table.shape[1])))))
        return [seen[i] for i in front[order]]


def _initial_population(space: SearchSpace, rng: random.Random, feasible: Callable[[Architecture], bool],
                        population: int, max_tries: int) -> list[Architecture]:
    """``population`` random feasible architectures by bounded rejection sampling."""
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
    return pop


class _Breeder:
    """Mutants and crossover children of the kept parents, each retried until feasible (``max_tries`` times)."""

    def __init__(self, space: SearchSpace, rng: random.Random, feasible: Callable[[Architecture], bool],
                 mutate_prob: float, max_tries: int) -> None:
        self.space, self.rng, self.feasible = space, rng, feasible
        self.mutate_prob, self.max_tries = mutate_prob, max_tries
        self.dropped = 0

    def children(self, keep: list[Architecture], mutants: int, crossovers: int) -> list[Architecture]:
        """``mutants`` mutated parents, then ``crossovers`` crossed ones; a child still infeasible is dropped."""
        children: list[Architecture] = []
        for make, count in ((self._mutant, mutants), (self._crossed, crossovers)):
            for _ in range(count):
                made = self._child(partial(make, keep))
                if made is None:
                    self.dropped += 1
                else:
                    children.append(made)
        return children

    def _child(self, make: Callable[[], Architecture]) -> Architecture | None:
        for _ in range(self.max_tries):
            arch = make()
            if self.feasible(arch):
                return arch
        return None

    def _mutant(self, keep: list[Architecture]) -> Architecture:
        return self.space.mutate(self.rng.choice(keep), self.rng, self.mutate_prob)

    def _crossed(self, keep: list[Architecture]) -> Architecture:
        a, b = self.rng.sample(keep, 2) if len(keep) >= 2 else (keep[0], keep[0])
        return self.space.crossover(a, b, self.rng)
