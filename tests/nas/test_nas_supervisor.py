"""The supervisor of local search workers: a dead worker's trial is failed and retried at once, the worker is
replaced a bounded number of times, and every way a worker ends is one line, never a hang."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
from optuna.trial import TrialState

from nasforge.nas._heartbeat import REAPED_ATTR, RETRY_ATTR, WORKER_ATTR, fail_worker_trials, worker_id
from nasforge.nas._storage import resolve_storage

DRIVER = Path(__file__).with_name("supervised_search.py")


def _supervise(tmp_path: Path, mode: str) -> tuple[subprocess.CompletedProcess[str], list[optuna.trial.FrozenTrial]]:
    storage = str(tmp_path / "study.journal")
    # a hard timeout: a supervisor that hangs fails the test instead of the suite
    res = subprocess.run([sys.executable, str(DRIVER), storage, mode, str(tmp_path)], capture_output=True,
                         text=True, timeout=90, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        trials = optuna.load_study(study_name="nasforge", storage=resolve_storage(storage)).get_trials()
    except KeyError:  # the study was never created
        trials = []
    return res, trials


def test_killed_worker_trial_is_retried_at_once(tmp_path: Path) -> None:
    res, trials = _supervise(tmp_path, "kill-once")
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout)
    assert report["restarts"] == 1 and report["gave_up"] is None and len(report["deaths"]) == 1
    assert "killed by SIGKILL" in report["deaths"][0] and "queued for a retry" in report["deaths"][0]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs[REAPED_ATTR]
    assert "worker died (killed by SIGKILL)" in failed[0].user_attrs["error"]
    retry = [t for t in trials if t.user_attrs.get(RETRY_ATTR) == failed[0].number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == failed[0].params
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert 8 <= len(complete) <= 9 and report["finished"] == len(complete)  # the budget, dead trial not counted
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def test_worker_that_keeps_dying_stops_the_search(tmp_path: Path) -> None:
    res, trials = _supervise(tmp_path, "die")
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout)
    assert report["restarts"] == 2 and len(report["deaths"]) == 3  # at most `workers` replacements
    done = len([t for t in trials if t.state == TrialState.COMPLETE])
    assert "kept dying" in report["gave_up"] and f"stopped with {done} of 8 trials finished" in report["gave_up"]
    assert "\n" not in report["gave_up"]
    assert not [t for t in trials if t.state == TrialState.RUNNING]  # stopped workers' trials failed too


def test_worker_exception_is_one_line_with_a_traceback_file(tmp_path: Path) -> None:
    res, trials = _supervise(tmp_path, "raise")
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout)
    assert report["gave_up"] and report["finished"] == -1 and not trials
    line = re.compile(r"worker (\d+) \(pid \d+\) died \(exit code 1: RuntimeError: worker \1 cannot start; "
                      r"traceback in .*worker-\1\.traceback\.txt\)")
    assert len(report["deaths"]) == 3 and all(line.fullmatch(d) for d in report["deaths"]), report["deaths"]
    assert "second line" not in res.stderr and "Traceback" not in res.stderr
    assert "second line" in (tmp_path / "worker-0.traceback.txt").read_text()


def test_worker_config_error_stops_the_search_with_it(tmp_path: Path) -> None:
    res, _ = _supervise(tmp_path, "user")
    assert res.returncode == 2, res.stderr[-3000:]
    assert res.stdout.strip() == "error: ConfigError: data spec 'nope' is unknown; pass a real one"
    assert "Traceback" not in res.stderr and "replacement" not in res.stderr  # not restarted: it would repeat


def test_fail_worker_trials_only_fails_that_workers_trials(tmp_path: Path) -> None:
    study = optuna.create_study(storage=resolve_storage(tmp_path / "s.journal"), study_name="s")
    mine, other, unnamed = study.ask(), study.ask(), study.ask()
    for trial in (mine, other, unnamed):
        trial.suggest_int("x", 0, 3)
    study._storage.set_trial_user_attr(mine._trial_id, WORKER_ATTR, worker_id(4242))
    study._storage.set_trial_user_attr(other._trial_id, WORKER_ATTR, worker_id(4343))
    assert fail_worker_trials(study, worker_id(4242), "worker died (killed by SIGKILL); retried") == [mine.number]
    assert fail_worker_trials(study, worker_id(4242), "again") == []  # not twice
    states = {t.number: t.state for t in study.get_trials()}
    assert states[mine.number] == TrialState.FAIL
    assert states[other.number] == states[unnamed.number] == TrialState.RUNNING
    waiting = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].user_attrs[RETRY_ATTR] == mine.number
