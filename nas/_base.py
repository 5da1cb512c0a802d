"""The :class:`Searcher` plug-in family: one abstract base and a name -> class registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from nasforge.errors import ConfigError
from nasforge.registry import Registry
from nasforge.supernets.arch import Architecture, SearchSpace

from ._objectives import Constraint, Objective
from ._result import SearchResult, TrialRecord

__all__ = ["Evaluator", "Progress", "Searcher", "get_searcher", "list_searchers", "register_searcher"]

Evaluator = Callable[[Architecture], Mapping[str, float]]
"""Measures one architecture and returns its metrics, e.g. ``{"accuracy": 0.71, "macs": 2.3e8}``."""

Progress = Callable[[int, int, TrialRecord], None]
"""Called after each trial with ``(trials done, trials wanted, record of the trial just finished)``."""

_SearcherT = TypeVar("_SearcherT", bound="type[Searcher]")
_REGISTRY: Registry[type[Searcher]] = Registry("searcher")


class Searcher(ABC):
    """Explores a :class:`SearchSpace` for architectures that trade off several metrics.

    Call order: construct with backend options (``get_searcher(name, **options)``), then call
    :meth:`search` once per study. A searcher keeps no state between calls; resuming is done through the
    ``storage`` / ``study_name`` pair, so a second :meth:`search` with the same pair continues the study.
    """

    name: str = ""

    @abstractmethod
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
            objectives: metrics to optimise, in order.
            constraints: bounds a front member must meet; the sampler is told each trial's violations.
            n_trials: wanted number of finished trials in the study, counting ones from earlier runs.
            storage: ``None`` (in memory), ``"journal:PATH"`` or a database URL (see :func:`run_search`).
            study_name: the study to create or resume.
            seed: seeds the sampler.
            progress: called after each trial.
            initial: architectures evaluated first when the study is new (e.g. the space's corners).

        Returns:
            All trials of the study and the feasible Pareto front.

        Raises:
            ConfigError: on a bad option, or an existing study with different objectives.
        """


def register_searcher(name: str) -> Callable[[_SearcherT], _SearcherT]:
    """Class decorator that makes a :class:`Searcher` subclass available as ``get_searcher(name)``.

    Raises:
        ConfigError: if ``name`` is already registered.
    """

    def decorate(cls: _SearcherT) -> _SearcherT:
        if not (isinstance(cls, type) and issubclass(cls, Searcher)):
            raise ConfigError(f"@register_searcher({name!r}) needs a Searcher subclass, got {cls!r}")
        cls.name = name
        return _REGISTRY.add(name, cls)

    return decorate


def list_searchers() -> list[str]:
    """Names of the registered searchers, sorted."""
    return _REGISTRY.names()


def get_searcher(name: str, **options: Any) -> Searcher:
    """Instantiate the searcher registered as ``name`` with backend ``options``.

    Raises:
        ConfigError: if ``name`` is not registered (the message lists the registered names).
    """
    return _REGISTRY.get(name)(**options)
