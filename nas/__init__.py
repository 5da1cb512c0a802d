"""Architecture search over a supernet's :class:`~nasforge.supernets.SearchSpace`.

The one verb is :func:`run_search`: give it a space, an evaluator (architecture -> metrics), objectives such as
``("accuracy", "macs")`` and constraints such as ``"latency_ms<=5"``; it returns every trial and the feasible
Pareto front. Searchers are plug-ins (:class:`Searcher`, :func:`register_searcher`), one registry holding every
way to search (:func:`describe_searchers`: ``"optuna"``, ``"optuna:tpe"``, ``"nni:evolution"``, ``"predictor"``,
...); the built-in ``"optuna"`` searcher samples with TPE, NSGA-II or at random and resumes a study from a
journal file or a database.
The ``"nni"`` searcher (:class:`NniSearcher`, extra ``nasforge[nni]``) runs NNI's Random, GridSearch or
RegularizedEvolution strategy on one reward folded from the objectives, storing its trials in the same kind of study.

For predictor-in-the-loop search, fit an :class:`AccuracyPredictor` (and a :class:`LatencyPredictor`, e.g.
``get_latency_predictor("macs", cost_fn=net.macs)``) on a few hundred measured architectures, then run
:func:`evolve_on_predictors` on their cheap predicted scores.

Several local worker processes on one study run under :func:`supervise_workers`: a worker that dies has its
running trial failed and retried at once and is replaced a bounded number of times (:class:`SearchWorkerError`
when they keep dying).
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

from ._base import (
    NNI_SAMPLERS,
    OPTUNA_SAMPLERS,
    Evaluator,
    Progress,
    Searcher,
    SearcherEntry,
    SearchSettings,
    describe_searchers,
    find_searcher,
    get_searcher,
    list_searchers,
    nni_strategy,
    register_searcher,
)
from ._objectives import Constraint, Objective, parse_constraint, parse_objective
from ._pareto import hypervolume_2d, pareto_front
from ._plot import PlotSeries, plot_pareto
from ._predictors import (
    AccuracyPredictor,
    LatencyPredictor,
    MacsLatencyPredictor,
    PredictorReport,
    evolve_on_predictors,
    get_latency_predictor,
    list_latency_predictors,
    rank_correlations,
    register_latency_predictor,
)
from ._result import SearchResult, TrialRecord
from ._search import SUBNET_METRICS, check_search_settings, run_search
from ._storage import describe_storage, journal_storage_url, redact_storage, resolve_storage

if TYPE_CHECKING:
    from ._nni import NniSearcher
    from ._optuna import OptunaSearcher, collect_result
    from ._predictor_loop import PredictorLoopSearcher
    from ._supervisor import SearchWorkerError, SupervisorReport, supervise_workers

#: names whose modules import Optuna, loaded on first use (so listing searchers or parsing settings does not)
_LAZY = {
    "NniSearcher": "._nni",
    "OptunaSearcher": "._optuna",
    "collect_result": "._optuna",
    "PredictorLoopSearcher": "._predictor_loop",
    "SearchWorkerError": "._supervisor",
    "SupervisorReport": "._supervisor",
    "supervise_workers": "._supervisor",
}

#: names that moved to a higher layer, still importable from here with a DeprecationWarning
_MOVED = {"TableLatencyPredictor": "nasforge.export"}

__all__ = [
    "NNI_SAMPLERS",
    "OPTUNA_SAMPLERS",
    "AccuracyPredictor",
    "Constraint",
    "Evaluator",
    "LatencyPredictor",
    "MacsLatencyPredictor",
    "NniSearcher",
    "Objective",
    "OptunaSearcher",
    "PredictorLoopSearcher",
    "PredictorReport",
    "Progress",
    "SUBNET_METRICS",
    "SearchResult",
    "SearchWorkerError",
    "SupervisorReport",
    "Searcher",
    "SearcherEntry",
    "SearchSettings",
    "TrialRecord",
    "check_search_settings",
    "evolve_on_predictors",
    "get_latency_predictor",
    "get_searcher",
    "hypervolume_2d",
    "journal_storage_url",
    "list_latency_predictors",
    "list_searchers",
    "parse_constraint",
    "parse_objective",
    "pareto_front",
    "rank_correlations",
    "plot_pareto",
    "register_latency_predictor",
    "register_searcher",
    "run_search",
    "supervise_workers",
    "PlotSeries",
    "nni_strategy",
    "redact_storage",
    "resolve_storage",
    "describe_storage",
    "collect_result",
    "describe_searchers",
    "find_searcher",
]


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        warnings.warn(f"nasforge.nas.{name} moved to {_MOVED[name]}.{name}; import it from there",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(_MOVED[name]), name)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
