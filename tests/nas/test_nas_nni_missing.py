"""Without NNI, the NNI backend is one clear error naming the ``nasforge[nni]`` extra (runs with or without NNI)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from nasforge.errors import ConfigError, MissingDependencyError
from nasforge.nas import NNI_SAMPLERS, NniSearcher, list_searchers, run_search
from nasforge.nas._search import _make_searcher
from nasforge.supernets.arch import Dimension, SearchSpace

SPACE = SearchSpace("tiny", (Dimension("w", (1, 2), 2),))


@pytest.fixture
def no_nni(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None if name == "nni" or name.startswith("nni.") else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_missing_nni_names_the_extra(no_nni: None, tmp_path: Path) -> None:
    assert "nni" in list_searchers()  # registered without importing NNI
    with pytest.raises(ConfigError, match=r"needs NNI: pip install 'nasforge\[nni\]'") as info:
        NniSearcher()
    assert isinstance(info.value, MissingDependencyError)
    for sampler in ("nni", *NNI_SAMPLERS):
        with pytest.raises(ConfigError, match=r"nasforge\[nni\]"):
            run_search(SPACE, lambda a: {"accuracy": 1.0, "macs": 1.0}, n_trials=2, sampler=sampler,
                       storage=tmp_path / "study.journal")
    assert not (tmp_path / "study.journal").exists()  # refused before the study was created


def test_unknown_sampler_lists_the_nni_samplers() -> None:
    with pytest.raises(ConfigError, match=r"unknown sampler 'nni-bayes'.*'nni-evolution', 'nni-random', 'nni-grid'"):
        _make_searcher("nni-bayes")


def test_search_job_with_nni_needs_one_worker(tmp_path: Path) -> None:
    from nasforge.search import SearchJob, run_search_job

    job = SearchJob(checkpoint=str(tmp_path / "supernet.pt"), data="digits", out=str(tmp_path / "out"),
                    sampler="nni-evolution")
    with pytest.raises(ConfigError, match="one sequential worker; use --workers 1 or an Optuna sampler"):
        run_search_job(job, workers=2)
    assert not (tmp_path / "out").exists()
