"""Crash safety of a shared study: SIGKILL a worker mid-trial, start it again; heartbeats and reaping."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nasforge.nas._heartbeat import HEARTBEAT_ATTR, RETRY_ATTR, reap_dead_trials
from nasforge.nas._storage import resolve_storage

WORKER = Path(__file__).with_name("search_worker.py")


def _worker(storage: str, marker: Path, mode: str, study: str = "nasforge", seed: int = 0) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(WORKER), storage, str(marker), mode, study, str(seed)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(params=["journal", "postgresql"])
def shared_study(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """``(storage, study name)``: a journal file, or a fresh study on the test PostgreSQL server."""
    if request.param == "journal":
        return str(tmp_path / "study.journal"), "nasforge"
    return request.getfixturevalue("postgres_study")


def test_sigkill_mid_trial_then_restart(shared_study: tuple[str, str], tmp_path: Path) -> None:
    storage, name = shared_study
    marker = tmp_path / "marker"
    proc = _worker(storage, marker, "hang", name)
    deadline = time.time() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.time() < deadline, "the worker never reached its 4th evaluation"
        time.sleep(0.05)
    time.sleep(0.5)  # a few heartbeats of the hanging trial
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    study = optuna.load_study(study_name=name, storage=resolve_storage(storage))
    before = {t.number: t for t in study.get_trials()}
    running = [t for t in before.values() if t.state == TrialState.RUNNING]
    assert len(running) == 1 and HEARTBEAT_ATTR in running[0].user_attrs
    dead = running[0]
    done_before = sorted(n for n, t in before.items() if t.state == TrialState.COMPLETE)
    assert len(done_before) == 3

    time.sleep(1.5)  # longer than the grace (6 heartbeats of 0.2 s)
    again = _worker(storage, marker, "ok", name)
    out, err = again.communicate(timeout=180)
    assert again.returncode == 0, err[-3000:]

    study = optuna.load_study(study_name=name, storage=resolve_storage(storage))
    trials = study.get_trials()
    assert len({t.number for t in trials}) == len(trials)  # no duplicated numbers
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 8  # the wanted count, nothing counted twice
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [dead.number]
    assert "worker died" in failed[0].user_attrs["error"]
    for n in done_before:  # finished trials are kept as they were
        kept = next(t for t in trials if t.number == n)
        assert kept.state == TrialState.COMPLETE and kept.values == before[n].values
    retry = [t for t in complete if t.user_attrs.get(RETRY_ATTR) == dead.number]
    assert len(retry) == 1 and retry[0].params == dead.params
    assert not [t for t in trials if t.state == TrialState.RUNNING]


def test_two_workers_share_one_study(shared_study: tuple[str, str], tmp_path: Path) -> None:
    """Two worker processes started together on one storage run the study's budget once, between them."""
    storage, name = shared_study
    procs = [_worker(storage, tmp_path / "unused", "ok", name, seed) for seed in (1, 2)]
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
    trials = optuna.load_study(study_name=name, storage=resolve_storage(storage)).get_trials()
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials)))  # unique, gap-free trial numbers
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert 8 <= len(complete) <= 9  # both may start the last trial at the same moment
    assert all(t.state == TrialState.COMPLETE for t in trials)


def test_reaper_leaves_live_trials_alone(tmp_path: Path) -> None:
    study = optuna.create_study(storage=resolve_storage(tmp_path / "s.journal"), study_name="s")
    live, stale = study.ask(), study.ask()
    live.suggest_int("x", 0, 3)
    stale.suggest_int("x", 0, 3)
    now = time.time()
    study._storage.set_trial_user_attr(live._trial_id, HEARTBEAT_ATTR, now - 1)
    study._storage.set_trial_user_attr(stale._trial_id, HEARTBEAT_ATTR, now - 100)
    assert reap_dead_trials(study, grace=60, now=now) == [stale.number]
    assert reap_dead_trials(study, grace=60, now=now) == []  # not twice
    states = {t.number: t.state for t in study.get_trials()}
    assert states[live.number] == TrialState.RUNNING and states[stale.number] == TrialState.FAIL
    waiting = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].user_attrs[RETRY_ATTR] == stale.number


@pytest.mark.parametrize("bad", [{"heartbeat_interval": 0}, {"heartbeat_interval": 5, "grace": 5}])
def test_bad_heartbeat_settings(bad: dict[str, float]) -> None:
    from nasforge.errors import ConfigError
    from nasforge.nas import OptunaSearcher

    with pytest.raises(ConfigError):
        OptunaSearcher(**bad)
