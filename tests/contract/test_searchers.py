"""Contract of the searcher family: every registered entry (``optuna``, ``optuna:tpe``, ``nni:grid``,
``predictor``, ...) runs a tiny study on a toy objective and returns it whole; listing and describing the
family imports no search backend."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from nasforge.nas import (
    NNI_SAMPLERS,
    OPTUNA_SAMPLERS,
    Searcher,
    SearchSettings,
    describe_searchers,
    find_searcher,
    get_searcher,
    list_searchers,
    nni_strategy,
    parse_objective,
    run_search,
)
from nasforge.supernets.arch import Architecture, Dimension, SearchSpace

SPACE = SearchSpace("contract", (Dimension("w", (1, 2, 3), 2), Dimension("r", (8, 16))))
TRIALS = 3
HAS_NNI = all(importlib.util.find_spec(m) is not None for m in ("nni", "pytorch_lightning"))


def toy_metrics(arch: Architecture) -> dict[str, float]:
    """Wider and larger is more accurate and costs more."""
    size = sum(arch["w"]) * arch["r"]
    return {"accuracy": size / (size + 20.0), "macs": float(size * size)}


def _skip_without_backend(name: str) -> None:
    entry = find_searcher(name)
    assert entry is not None
    if entry.extra == "nni" and not HAS_NNI:
        pytest.skip(f"searcher {name!r} needs NNI (pip install 'nasforge[nni]'), which is not installed")


@pytest.mark.parametrize("name", list_searchers())
def test_entry_runs_a_tiny_study(name: str, tmp_path: Path) -> None:
    _skip_without_backend(name)
    searcher = get_searcher(name)
    assert isinstance(searcher, Searcher)
    done: list[int] = []
    settings = SearchSettings(objectives=(parse_objective("accuracy"), parse_objective("macs")), n_trials=TRIALS,
                              storage=f"journal:{tmp_path / 'study.journal'}", study_name="contract", seed=0,
                              progress=lambda n, total, record: done.append(n),
                              initial=(SPACE.largest(),))
    result = searcher.search(SPACE, toy_metrics, **settings.as_kwargs())
    assert len(result.trials) == TRIALS and done == list(range(1, TRIALS + 1))
    assert all(t.state == "complete" and t.arch == SPACE.canonical(t.arch) for t in result.trials)
    assert result.trials[0].arch == SPACE.largest()
    assert result.front and {t.arch for t in result.front} <= {t.arch for t in result.trials}
    again = searcher.run(SPACE, toy_metrics, settings)  # the study is complete: resuming runs nothing
    assert [t.arch for t in again.trials] == [t.arch for t in result.trials]


@pytest.mark.parametrize("sampler", [*OPTUNA_SAMPLERS, *NNI_SAMPLERS, "nni"])
def test_every_sampler_name_is_an_entry(sampler: str) -> None:
    entry = find_searcher(sampler)
    assert entry is not None and entry.name in list_searchers()
    if sampler in OPTUNA_SAMPLERS:
        assert entry.name == f"optuna:{sampler}" and entry.options == {"sampler": sampler}
    else:
        assert entry.name.startswith("nni") and nni_strategy(entry.name) == nni_strategy(sampler)


def test_run_search_takes_registered_names(tmp_path: Path) -> None:
    result = run_search(SPACE, toy_metrics, n_trials=2, sampler="optuna:random", seed=3)
    same = run_search(SPACE, toy_metrics, n_trials=2, sampler="random", seed=3)
    assert [t.arch for t in result.trials] == [t.arch for t in same.trials]


def test_every_entry_is_described() -> None:
    described = describe_searchers()
    assert sorted(described) == list_searchers()
    assert all(text.strip() for text in described.values())
    assert {"optuna", "optuna:tpe", "optuna:nsga2", "nni:evolution", "predictor"} <= set(described)


def test_listing_imports_no_backend() -> None:
    code = ("import sys, nasforge.nas as n; n.list_searchers(); n.describe_searchers(); n.find_searcher('tpe'); "
            "print(sorted(m for m in ('optuna', 'nni') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_plugin_overriding_search_still_works() -> None:
    """A searcher written against the older interface (it overrides ``search``) is still a complete plug-in."""

    class Old(Searcher):
        def search(self, space, evaluate, *, objectives, constraints=(), n_trials, storage, study_name, seed,
                   progress=None, initial=()):  # type: ignore[no-untyped-def]
            return ("old", n_trials, tuple(initial))

    settings = SearchSettings(objectives=(parse_objective("accuracy"),), n_trials=2, storage=None,
                              study_name="x", seed=0, initial=[SPACE.smallest()])
    assert Old().run(SPACE, toy_metrics, settings) == ("old", 2, (SPACE.smallest(),))
