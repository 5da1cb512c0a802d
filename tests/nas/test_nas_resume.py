"""Resuming a study from a journal file or a SQLite database: only the missing trials run."""

from __future__ import annotations

from pathlib import Path

import pytest

from nasforge.errors import ConfigError
from nasforge.nas import journal_storage_url, run_search
from nasforge.supernets.arch import SearchSpace


def _storages(tmp_path: Path) -> dict[str, str]:
    return {
        "journal-suffix": str(tmp_path / "study.log"),
        "journal-url": journal_storage_url(tmp_path / "sub" / "study.jsonl"),
        "sqlite": f"sqlite:///{tmp_path / 'study.db'}",
    }


@pytest.mark.parametrize(("kind", "sampler"), [("journal-suffix", "random"), ("journal-url", "tpe"), ("sqlite", "random")])
def test_resume_runs_only_missing_trials(
    kind: str, sampler: str, tmp_path: Path, wide_space: SearchSpace, wide_counter
) -> None:
    storage = _storages(tmp_path)[kind]

    def search(n_trials: int):
        return run_search(wide_space, wide_counter, n_trials=n_trials, sampler=sampler, storage=storage, study_name="s")

    first = search(10)
    assert wide_counter.calls == 10 and len(first.trials) == 10

    second = search(15)
    assert [t.number for t in second.trials] == list(range(15))
    assert second.trials[:10] == first.trials
    new_duplicates = sum(t.duplicate_of is not None for t in second.trials[10:])
    assert wide_counter.calls == 15 - new_duplicates
    if sampler == "random":  # 131072 architectures: the resumed sampler must not replay the first run
        assert new_duplicates == 0 and wide_counter.calls == 15

    calls = wide_counter.calls
    third = search(15)
    assert wide_counter.calls == calls
    assert third.trials == second.trials and third.front == second.front
    assert third.storage.startswith("sqlite:///" if kind == "sqlite" else "journal:/")


def test_failed_trials_do_not_count_as_done(tmp_path: Path, wide_space: SearchSpace, wide_counter) -> None:
    storage = tmp_path / "study.journal"

    def flaky(arch):
        if arch["w"][0] < 30:
            raise ValueError("too narrow")
        return wide_counter(arch)

    first = run_search(wide_space, flaky, n_trials=12, storage=storage, sampler="random")
    n_failed = sum(t.state == "fail" for t in first.trials)
    assert n_failed > 0
    again = run_search(wide_space, wide_counter, n_trials=12, storage=storage, sampler="random")
    assert len(again.trials) == 12 + n_failed
    assert again.n_complete == 12


def test_resume_with_other_objectives_is_refused(tmp_path: Path, toy_space: SearchSpace, metrics_fn) -> None:
    storage = str(tmp_path / "study.log")
    run_search(toy_space, metrics_fn, n_trials=2, storage=storage)
    with pytest.raises(ConfigError, match="created for objectives.*new study_name"):
        run_search(toy_space, metrics_fn, objectives=["accuracy", "macs:max"], n_trials=2, storage=storage)
    with pytest.raises(ConfigError, match=r"\['accuracy:max', 'macs:min'\].*\['accuracy:max', 'params:min'\]"):
        run_search(toy_space, metrics_fn, objectives=["accuracy", "params"], n_trials=2, storage=storage)
    other_space = SearchSpace("other", toy_space.dims, toy_space.gates)
    with pytest.raises(ConfigError, match="space 'toy'"):
        run_search(other_space, metrics_fn, n_trials=2, storage=storage)
    # A new study name in the same file is fine.
    assert len(run_search(toy_space, metrics_fn, n_trials=2, storage=storage, study_name="b").trials) == 2
