"""Architecture search over a supernet's :class:`~nasforge.supernets.SearchSpace`.

The one verb is :func:`run_search`: give it a space, an evaluator (architecture -> metrics), objectives such as
``("accuracy", "macs")`` and constraints such as ``"latency_ms<=5"``; it returns every trial and the feasible
Pareto front. Searchers are plug-ins (:class:`Searcher`, :func:`register_searcher`); the built-in ``"optuna"``
searcher samples with TPE, NSGA-II or at random and resumes a study from a journal file or a database.
"""

from __future__ import annotations

from ._base import Evaluator, Progress, Searcher, get_searcher, list_searchers, register_searcher
from ._objectives import Constraint, Objective, parse_constraint, parse_objective
from ._optuna import OPTUNA_SAMPLERS, OptunaSearcher
from ._pareto import hypervolume_2d, pareto_front
from ._plot import plot_pareto
from ._result import SearchResult, TrialRecord
from ._search import run_search
from ._storage import journal_storage_url

__all__ = [
    "OPTUNA_SAMPLERS",
    "Constraint",
    "Evaluator",
    "Objective",
    "OptunaSearcher",
    "Progress",
    "SearchResult",
    "Searcher",
    "TrialRecord",
    "get_searcher",
    "hypervolume_2d",
    "journal_storage_url",
    "list_searchers",
    "parse_constraint",
    "parse_objective",
    "pareto_front",
    "plot_pareto",
    "register_searcher",
    "run_search",
]
