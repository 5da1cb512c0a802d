"""The :class:`Searcher` plug-in family: one abstract base, the settings of one study, and one registry.

Every way to search is one registry entry: a searcher class (``"optuna"``, ``"nni"``, ``"predictor"``) or a
class with preset options (``"optuna:tpe"``, ``"optuna:nsga2"``, ``"nni:evolution"``, ...). The built-in
entries name their class by import path, so listing and describing them (:func:`list_searchers`,
:func:`describe_searchers`) imports neither Optuna nor NNI. The sampler names of ``run_search`` and
``nasforge search --sampler`` (``"tpe"``, ``"nni-grid"``, ...) are aliases of these entries
(:func:`find_searcher`).
"""

from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from nasforge.errors import ConfigError
from nasforge.registry import Registry
from nasforge.supernets.arch import Architecture, SearchSpace

from ._objectives import Constraint, Objective
from ._result import SearchResult, TrialRecord

__all__ = [
    "NNI_SAMPLERS",
    "NNI_STRATEGIES",
    "OPTUNA_SAMPLERS",
    "Evaluator",
    "Progress",
    "SearchSettings",
    "Searcher",
    "SearcherEntry",
    "describe_searchers",
    "find_searcher",
    "get_searcher",
    "list_searchers",
    "nni_strategy",
    "register_searcher",
]

Evaluator = Callable[[Architecture], Mapping[str, float]]
"""Measures one architecture and returns its metrics, e.g. ``{"accuracy": 0.71, "macs": 2.3e8}``."""

Progress = Callable[[int, int, TrialRecord], None]
"""Called after each trial with ``(trials done, trials wanted, record of the trial just finished)``."""

#: Optuna samplers (``OptunaSearcher(sampler=...)``); each is also the searcher entry ``"optuna:<name>"``
OPTUNA_SAMPLERS = ("tpe", "nsga2", "nsga3", "gp", "random")
#: strategy option -> the NNI 3.0 class (``nni.nas.strategy``) that runs it; each is the entry ``"nni:<name>"``
NNI_STRATEGIES = {"random": "Random", "grid": "GridSearch", "evolution": "RegularizedEvolution"}
#: sampler names of ``run_search`` / ``nasforge search --sampler`` that pick the NNI searcher and its strategy
NNI_SAMPLERS = ("nni-evolution", "nni-random", "nni-grid")
_OPTUNA_SUMMARIES = {"tpe": "Optuna's multi-objective TPE sampler", "nsga2": "Optuna's NSGA-II sampler",
                     "nsga3": "Optuna's NSGA-III sampler (3 or more objectives)",
                     "gp": "Optuna's Gaussian-process sampler (at most 300 trials)",
                     "random": "Optuna's random sampler"}

_SearcherT = TypeVar("_SearcherT", bound="type[Searcher]")


@dataclass(frozen=True)
class SearchSettings:
    """What one study asks of a searcher: every argument of :meth:`Searcher.search` but the space and evaluator.

    Attributes:
        objectives: metrics to optimise, in order.
        n_trials: wanted number of finished trials in the study, counting ones from earlier runs.
        storage: ``None`` (in memory), ``"journal:PATH"`` or a database URL (see :func:`run_search`).
        study_name: the study to create or resume.
        seed: seeds the sampler.
        constraints: bounds a front member must meet; the sampler is told each trial's violations.
        progress: called after each trial.
        initial: architectures evaluated first when the study is new (e.g. the space's corners).
    """

    objectives: tuple[Objective, ...]
    n_trials: int
    storage: str | None
    study_name: str
    seed: int
    constraints: tuple[Constraint, ...] = ()
    progress: Progress | None = None
    initial: tuple[Architecture, ...] = ()

    def __post_init__(self) -> None:
        for name in ("objectives", "constraints", "initial"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def as_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :meth:`Searcher.search` that these settings stand for."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


class Searcher(ABC):
    """Explores a :class:`SearchSpace` for architectures that trade off several metrics.

    Call order: construct with backend options (``get_searcher(name, **options)``), then call
    :meth:`search` once per study. A searcher keeps no state between calls; resuming is done through the
    ``storage`` / ``study_name`` pair, so a second :meth:`search` with the same pair continues the study.
    A plug-in implements :meth:`run`, which gets the study's :class:`SearchSettings` in one object (a plug-in
    written against the older interface, which overrides :meth:`search` itself, keeps working).
    """

    name: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "search" in cls.__dict__ and "run" not in cls.__dict__:  # an older plug-in: search() is its entry
            cls.run = _run_through_search  # type: ignore[method-assign]

    def search(
        self,
        space: SearchSpace,
        evaluate: Evaluator,
        *,
        objectives: Sequence[Objective],
        constraints: Sequence[Constraint] = (),
        n_trials: int,
        storage: str | None,
        study_name: str,
        seed: int,
        progress: Progress | None = None,
        initial: Sequence[Architecture] = (),
    ) -> SearchResult:
        """Run trials until the study holds ``n_trials`` finished (complete or pruned) ones.

        Args:
            space: where architectures come from; every evaluated architecture is canonical in it.
            evaluate: returns the metrics of an architecture; an exception fails that trial only.
            objectives, constraints, n_trials, storage, study_name, seed, progress, initial: the fields of
                :class:`SearchSettings`.

        Returns:
            All trials of the study and the feasible Pareto front.

        Raises:
            ConfigError: on a bad option, or an existing study with different objectives.
        """
        settings = SearchSettings(objectives=tuple(objectives), constraints=tuple(constraints), n_trials=n_trials,
                                  storage=storage, study_name=study_name, seed=seed, progress=progress,
                                  initial=tuple(initial))
        return self.run(space, evaluate, settings)

    @abstractmethod
    def run(self, space: SearchSpace, evaluate: Evaluator, settings: SearchSettings) -> SearchResult:
        """Run one study as :meth:`search` describes, with its arguments gathered in ``settings``."""


def _run_through_search(self: Searcher, space: SearchSpace, evaluate: Evaluator,
                        settings: SearchSettings) -> SearchResult:
    """:meth:`Searcher.run` of a plug-in that overrides :meth:`Searcher.search` instead."""
    return self.search(space, evaluate, **settings.as_kwargs())


@dataclass(frozen=True)
class SearcherEntry:
    """One registered way to search: a searcher class (or its import path) and preset options.

    Attributes:
        name: the registry name, e.g. ``"optuna:nsga2"``.
        target: the :class:`Searcher` subclass, or ``"module:Class"`` under ``nasforge.nas`` (imported on use).
        options: constructor options preset by this entry (``{"sampler": "nsga2"}``); callers' options win.
        summary: one line for listings.
        aliases: older names that pick this entry (``run_search``'s ``sampler="nsga2"``).
        extra: the pip extra it needs (``"nni"``), if any.
        takes_heartbeat: ``run_search``'s ``heartbeat`` becomes the ``heartbeat_interval`` option.
    """

    name: str
    target: type[Searcher] | str
    options: Mapping[str, Any] = field(default_factory=dict)
    summary: str = ""
    aliases: tuple[str, ...] = ()
    extra: str | None = None
    takes_heartbeat: bool = False

    def load(self) -> type[Searcher]:
        """The searcher class (importing its module, and so its backend, on first use)."""
        if not isinstance(self.target, str):
            return self.target
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module, __package__), attr)

    def create(self, **options: Any) -> Searcher:
        """An instance with this entry's preset options, overridden by ``options``."""
        return self.load()(**{**self.options, **options})


_REGISTRY: Registry[SearcherEntry] = Registry("searcher")
_BOUND: set[str] = set()  # built-in entries whose class has registered itself


def _builtin_entries() -> list[SearcherEntry]:
    optuna = [SearcherEntry("optuna", "._optuna:OptunaSearcher",
                            summary="Optuna sampling (option sampler: tpe by default), resumable studies")]
    optuna += [SearcherEntry(f"optuna:{s}", "._optuna:OptunaSearcher", {"sampler": s},
                             summary=_OPTUNA_SUMMARIES[s], aliases=(s,), takes_heartbeat=True)
               for s in OPTUNA_SAMPLERS]
    nni = [SearcherEntry("nni", "._nni:NniSearcher", summary="NNI multi-trial strategy (evolution by default)",
                         extra="nni")]
    nni += [SearcherEntry(f"nni:{s}", "._nni:NniSearcher", {"strategy": s}, summary=f"NNI's {cls} strategy",
                          aliases=(f"nni-{s}",), extra="nni") for s, cls in NNI_STRATEGIES.items()]
    loop = SearcherEntry("predictor", "._predictor_loop:PredictorLoopSearcher",
                         summary="predictor-in-the-loop: fit predictors, evolve on them, measure the front")
    return [*optuna, *nni, loop]


for _entry in _builtin_entries():
    _REGISTRY.add(_entry.name, _entry)


def register_searcher(name: str) -> Callable[[_SearcherT], _SearcherT]:
    """Class decorator that makes a :class:`Searcher` subclass available as ``get_searcher(name)``.

    Raises:
        ConfigError: if ``name`` is already registered (to another class).
    """

    def decorate(cls: _SearcherT) -> _SearcherT:
        if not (isinstance(cls, type) and issubclass(cls, Searcher)):
            raise ConfigError(f"@register_searcher({name!r}) needs a Searcher subclass, got {cls!r}")
        cls.name = name
        if name in _REGISTRY and name not in _BOUND and _declares(_REGISTRY.get(name), cls):
            _BOUND.add(name)  # a built-in entry's own class, imported at last (once: a second time raises)
            return cls
        _REGISTRY.add(name, SearcherEntry(name, cls, summary=_first_line(cls.__doc__)))
        return cls

    return decorate


def _declares(entry: SearcherEntry, cls: type) -> bool:
    """Whether ``entry`` names ``cls`` by its import path."""
    if not isinstance(entry.target, str):
        return entry.target is cls
    module, _, attr = entry.target.partition(":")
    return attr == cls.__qualname__ and cls.__module__ == importlib.util.resolve_name(module, __package__)


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n", 1)[0]


def list_searchers() -> list[str]:
    """Names of the registered searchers (``"optuna"``, ``"optuna:tpe"``, ``"nni:evolution"``, ...), sorted."""
    return _REGISTRY.names()


def describe_searchers() -> dict[str, str]:
    """Registered name -> one-line description (with the extra it needs, and its older names); imports no backend."""
    out = {}
    for name in _REGISTRY.names():
        entry = _REGISTRY.get(name)
        notes = [f"needs nasforge[{entry.extra}]"] * bool(entry.extra)
        notes += [f"also {', '.join(entry.aliases)}"] * bool(entry.aliases)
        out[name] = entry.summary + (f" ({'; '.join(notes)})" if notes else "")
    return out


def find_searcher(name: object) -> SearcherEntry | None:
    """The entry registered as ``name`` or having it as an older name (``"tpe"``, ``"nni-grid"``), or None."""
    if not isinstance(name, str):
        return None
    if name in _REGISTRY:
        return _REGISTRY.get(name)
    return next((e for e in map(_REGISTRY.get, _REGISTRY.names()) if name in e.aliases), None)


def get_searcher(name: str, **options: Any) -> Searcher:
    """Instantiate the searcher registered as ``name`` (or an older name of it) with backend ``options``.

    Raises:
        ConfigError: if ``name`` is not registered (the message lists the registered names).
    """
    entry = find_searcher(name)
    return (entry if entry is not None else _REGISTRY.get(name)).create(**options)


def nni_strategy(sampler: object) -> str | None:
    """The NNI strategy a sampler name picks (``"nni"`` -> ``"evolution"``, ``"nni-grid"`` / ``"nni:grid"`` ->
    ``"grid"``), or None."""
    if sampler == "nni":
        return "evolution"
    if sampler in NNI_SAMPLERS:
        return str(sampler)[len("nni-") :]
    if isinstance(sampler, str) and sampler.startswith("nni:") and sampler[len("nni:") :] in NNI_STRATEGIES:
        return sampler[len("nni:") :]
    return None
