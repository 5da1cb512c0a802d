"""run_search with the Optuna searcher on a toy space and an analytic evaluator."""

from __future__ import annotations

import logging

import numpy as np
import optuna
import pytest

from nasforge.errors import ConfigError
from nasforge.nas import (
    OPTUNA_SAMPLERS,
    Objective,
    OptunaSearcher,
    Searcher,
    SearchResult,
    TrialRecord,
    get_searcher,
    list_searchers,
    register_searcher,
    run_search,
)
from nasforge.supernets.arch import Architecture, DepthGate, Dimension, SearchSpace

DIRS = ("maximize", "minimize")


def _dominates(a: TrialRecord, b: TrialRecord) -> bool:
    """``a`` dominates ``b`` on (accuracy: max, macs: min)."""
    va = np.array([-a.metrics["accuracy"], a.metrics["macs"]])
    vb = np.array([-b.metrics["accuracy"], b.metrics["macs"]])
    return bool(np.all(va <= vb) and np.any(va < vb))


def _assert_valid_front(result: SearchResult) -> None:
    pool = [t for t in result.trials if t.state == "complete" and t.feasible]
    assert result.front, "front is empty"
    for member in result.front:
        assert member.feasible and member.state == "complete"
        assert not any(_dominates(t, member) for t in pool), f"front member {member.number} is dominated"
    front_archs = {m.arch for m in result.front}
    assert len(front_archs) == len(result.front), "front repeats an architecture"
    for t in pool:  # every feasible trial is dominated by, or ties with, a front member
        assert t.arch in front_archs or any(
            _dominates(m, t) or m.metrics["accuracy"] == t.metrics["accuracy"] and m.metrics["macs"] == t.metrics["macs"]
            for m in result.front
        )
    macs = [m.metrics["macs"] for m in result.front]
    assert macs == sorted(macs), "front is not sorted by the second objective"


def test_registry() -> None:
    assert "optuna" in list_searchers()
    assert isinstance(get_searcher("optuna", sampler="nsga2"), OptunaSearcher)
    with pytest.raises(ConfigError, match="'nope'.*optuna"):
        get_searcher("nope")
    with pytest.raises(ConfigError, match="already registered"):
        register_searcher("optuna")(OptunaSearcher)
    with pytest.raises(ConfigError, match="'cmaes'.*tpe"):
        OptunaSearcher(sampler="cmaes")
    assert issubclass(OptunaSearcher, Searcher)


@pytest.mark.parametrize("sampler", OPTUNA_SAMPLERS)
def test_search_front_is_nondominated(sampler: str, toy_space: SearchSpace, counting_evaluator) -> None:
    progress: list[tuple[int, int, int]] = []
    result = run_search(
        toy_space,
        counting_evaluator,
        n_trials=30,
        sampler=sampler,
        seed=1,
        progress=lambda done, total, rec: progress.append((done, total, rec.number)),
    )
    assert [t.number for t in result.trials] == list(range(30))
    assert all(t.state == "complete" for t in result.trials)
    assert result.objectives == (Objective("accuracy", "maximize"), Objective("macs", "minimize"))
    assert counting_evaluator.calls == 30 - sum(t.duplicate_of is not None for t in result.trials)
    assert all(toy_space.canonical(t.arch) == t.arch for t in result.trials)
    assert progress == [(i + 1, 30, i) for i in range(30)]
    assert result.storage == "memory" and result.study_name == "nasforge"
    _assert_valid_front(result)


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "nsga3", "gp"])
def test_constraint_keeps_front_feasible(sampler: str, toy_space: SearchSpace, metrics_fn, random_macs) -> None:
    bound = float(np.quantile(random_macs, 0.3))
    result = run_search(toy_space, metrics_fn, constraints=[f"macs<={bound}"], n_trials=30, sampler=sampler)
    assert all(m.metrics["macs"] <= bound for m in result.front)
    assert {t.feasible for t in result.trials} == {True, False}
    for t in result.trials:
        assert t.feasible == (t.metrics["macs"] <= bound)
    _assert_valid_front(result)


def test_tpe_uses_constraints(toy_space: SearchSpace, metrics_fn, random_macs) -> None:
    """Maximising accuracy alone drives MACs up; only the constraint can pull TPE back under the bound."""
    bound = float(np.quantile(random_macs, 0.2))  # a random sampler meets it 1 time in 5
    runs = {
        cons: run_search(toy_space, metrics_fn, objectives=["accuracy"], constraints=cons, n_trials=30, seed=3)
        for cons in [(), (f"macs<={bound}",)]
    }
    # Trials 10..29 are the ones TPE models (after 10 random start-up trials).
    late_feasible = {cons: sum(t.metrics["macs"] <= bound for t in r.trials[10:]) for cons, r in runs.items()}
    # Random sampling would give ~4 of 20; P(>= 8 of 20 at p=0.2) is 3%. (Seeds 0-9 give 8 to 13.)
    assert late_feasible[(f"macs<={bound}",)] >= 8
    assert late_feasible[()] <= 3
    assert runs[(f"macs<={bound}",)].front[0].metrics["macs"] <= bound


def test_constraints_reach_optuna_trials(tmp_path, toy_space: SearchSpace, metrics_fn) -> None:
    storage = tmp_path / "study.log"
    run_search(toy_space, metrics_fn, constraints=["macs<=4e7", "accuracy>=0.9"], n_trials=4, storage=storage)
    study = optuna.load_study(study_name="nasforge", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(storage))))
    for trial in study.trials:
        m = trial.user_attrs["metrics"]
        assert trial.constraints == pytest.approx(
            {"macs<=40000000": m["macs"] / 4e7 - 1, "accuracy>=0.9": (0.9 - m["accuracy"]) / 0.9}
        )
        assert toy_space.validate(trial.user_attrs["arch"])
        assert trial.params["ks_0"] in (3, 5, 7) and trial.params["d_1"] in (2, 3)
    assert study.metric_names == ["accuracy", "macs"]  # optuna trials / optuna-dashboard show the names


def test_failing_evaluator_fails_trials_not_the_job(toy_space: SearchSpace, metrics_fn) -> None:
    def flaky(arch):
        if arch["ks"][0] == 7:
            raise RuntimeError(f"out of memory for ks={arch['ks'][0]}")
        return metrics_fn(arch)

    result = run_search(toy_space, flaky, n_trials=30, sampler="random", seed=0)
    failed = [t for t in result.trials if t.state == "fail"]
    assert len(result.trials) == 30
    assert failed and len(failed) < 30
    for t in failed:
        assert t.arch["ks"][0] == 7
        assert t.error == "evaluator raised RuntimeError: out of memory for ks=7"
        assert not t.feasible and t.metrics == {}
    assert all(t.error is None for t in result.trials if t.state == "complete")
    assert all(m.arch["ks"][0] != 7 for m in result.front)


def test_missing_metrics_fail_trials_with_reason(toy_space: SearchSpace, metrics_fn) -> None:
    result = run_search(toy_space, metrics_fn, constraints=["latency_ms<=5"], n_trials=3, sampler="random")
    assert [t.state for t in result.trials] == ["fail"] * 3
    assert "needs metric 'latency_ms'" in result.trials[0].error
    assert result.front == []
    result = run_search(toy_space, metrics_fn, objectives=["accuracy", "energy:min"], n_trials=2)
    assert "no 'energy' (objective)" in result.trials[0].error


def test_duplicates_reuse_metrics() -> None:
    # 8 parameter combinations but only 6 networks: with d=1 the second kernel size is inactive.
    tiny = SearchSpace("tiny", (Dimension("ks", (3, 5), 2), Dimension("d", (1, 2), 1)), (DepthGate("d", ("ks",), 2),))
    assert tiny.size() == 6
    calls: list[Architecture] = []

    def evaluate(arch: Architecture) -> dict[str, float]:
        calls.append(arch)
        active = arch["ks"][: arch["d"][0]]
        return {"accuracy": sum(active) / 10, "macs": float(sum(k * k for k in active))}

    result = run_search(tiny, evaluate, n_trials=20, sampler="random", seed=0)
    distinct = {t.arch for t in result.trials}
    assert len(distinct) <= 6 < 20
    assert len(calls) == len(distinct) == len(set(calls))
    duplicates = [t for t in result.trials if t.duplicate_of is not None]
    assert len(duplicates) == 20 - len(distinct)
    by_number = {t.number: t for t in result.trials}
    for t in duplicates:
        original = by_number[t.duplicate_of]
        assert original.arch == t.arch and original.metrics == t.metrics and original.number < t.number
        assert original.duplicate_of is None
    assert len({m.arch for m in result.front}) == len(result.front)


def test_single_objective_front_and_ties(metrics_fn) -> None:
    def flat(arch):
        return {"accuracy": 0.5}

    tiny = SearchSpace("tiny", (Dimension("ks", (3, 5), 2),))
    result = run_search(tiny, flat, objectives=["accuracy"], n_trials=8, sampler="random")
    # All distinct architectures tie on the single objective, so each appears once on the front.
    assert sorted(str(m.arch) for m in result.front) == sorted({str(t.arch) for t in result.trials})


def test_bad_arguments(toy_space: SearchSpace, metrics_fn) -> None:
    with pytest.raises(ConfigError, match="'sobol'"):
        run_search(toy_space, metrics_fn, sampler="sobol")
    with pytest.raises(ConfigError, match="n_trials=0"):
        run_search(toy_space, metrics_fn, n_trials=0)
    with pytest.raises(ConfigError, match="'study.db'"):
        run_search(toy_space, metrics_fn, storage="study.db")
    with pytest.raises(ConfigError, match="'speed'"):
        run_search(toy_space, metrics_fn, objectives=["speed"])
    with pytest.raises(ConfigError, match="twice"):
        run_search(toy_space, metrics_fn, objectives=["macs", "macs:max"])


def test_optuna_logging_restored(toy_space: SearchSpace, metrics_fn) -> None:
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.INFO)
    seen: list[int] = []
    try:
        run_search(
            toy_space,
            metrics_fn,
            n_trials=2,
            progress=lambda *_: seen.append(optuna.logging.get_verbosity()),
        )
        assert seen == [logging.WARNING, logging.WARNING]
        assert optuna.logging.get_verbosity() == optuna.logging.INFO
    finally:
        optuna.logging.set_verbosity(previous)


def test_initial_architectures_run_first_and_only_once(tmp_path, toy_space: SearchSpace) -> None:
    initial = (toy_space.largest(), toy_space.smallest())

    class CountingEvaluator:
        def __init__(self) -> None:
            self.seen: list[Architecture] = []
            self.calls = 0

        def __call__(self, arch: Architecture) -> dict[str, float]:
            self.seen.append(arch)
            self.calls += 1
            return {"accuracy": float(sum(arch["ks"])), "macs": float(sum(arch["e"]))}

    evaluator = CountingEvaluator()
    storage = tmp_path / "study.journal"
    run_search(toy_space, evaluator, n_trials=5, sampler="random", storage=storage, initial=initial)
    assert evaluator.seen[:2] == list(initial)
    again = CountingEvaluator()
    run_search(toy_space, again, n_trials=7, sampler="random", storage=storage, initial=initial)
    assert again.calls == 2 and not set(again.seen) & set(initial)


def test_gp_sampler_has_a_trial_cap(toy_space: SearchSpace, metrics_fn) -> None:
    from nasforge.nas._optuna import GP_MAX_TRIALS

    with pytest.raises(ConfigError, match="gp"):
        run_search(toy_space, metrics_fn, n_trials=GP_MAX_TRIALS + 1, sampler="gp")
