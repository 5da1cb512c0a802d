"""Architecture search over a supernet's :class:`~nasforge.supernets.SearchSpace`.

The one verb is :func:`run_search`: give it a space, an evaluator (architecture -> metrics), objectives such as
``("accuracy", "macs")`` and constraints such as ``"latency_ms<=5"``; it returns every trial and the feasible
Pareto front. Searchers are plug-ins (:class:`Searcher`, :func:`register_searcher`); the built-in ``"optuna"``
searcher samples with TPE, NSGA-II or at random and resumes a study from a journal file or a database.
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

from ._base import Evaluator, Progress, Searcher, get_searcher, list_searchers, register_searcher
from ._nni import NNI_SAMPLERS, NniSearcher, nni_strategy
from ._objectives import Constraint, Objective, parse_constraint, parse_objective
from ._optuna import OPTUNA_SAMPLERS, OptunaSearcher, collect_result
from ._pareto import hypervolume_2d, pareto_front
from ._plot import PlotSeries, plot_pareto
from ._predictor_loop import PredictorLoopSearcher
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
from ._supervisor import SearchWorkerError, SupervisorReport, supervise_workers
from ._table_predictor import TableLatencyPredictor

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
    "TableLatencyPredictor",
    "Searcher",
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
]
