"""Crash safety for studies shared by workers: heartbeats of running trials, and retrying dead workers' trials.

While a trial runs, a daemon thread stamps ``nasforge:heartbeat`` (Unix time) into it every ``interval``
seconds, in any storage (journal file, database, memory). A worker that dies (SIGKILL, power loss) leaves its
trial RUNNING with an old stamp; any worker of the study that starts or begins a trial later marks such a trial
FAIL (``nasforge:error`` says why) and enqueues the same architecture again (``nasforge:retry_of``), so finished
trials are kept, the dead one is retried, and nothing is counted twice (only COMPLETE trials count).

Each running trial also names its process in ``nasforge:worker`` (``host:pid``), so a parent that started the
worker fails its trial as soon as the process is gone (:func:`fail_worker_trials`), without waiting for the grace.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from datetime import datetime
from types import TracebackType

import optuna
from optuna.trial import FrozenTrial, TrialState

__all__ = ["HEARTBEAT_ATTR", "REAPED_ATTR", "RETRY_ATTR", "WORKER_ATTR", "Heartbeat", "fail_and_retry",
           "fail_worker_trials", "failed_numbers", "reap_dead_trials", "used_budget", "worker_id"]

HEARTBEAT_ATTR = "nasforge:heartbeat"
WORKER_ATTR = "nasforge:worker"  # "host:pid" of the process that runs the trial
RETRY_ATTR = "nasforge:retry_of"
REAPED_ATTR = "nasforge:reaped"  # on a trial failed because its worker died (it does not use up the budget)
ERROR_ATTR = "error"  # the key nasforge's searcher uses for a failed trial's reason


def worker_id(pid: int | None = None) -> str:
    """``"host:pid"`` of this process (or of process ``pid`` on this host), as stored in ``nasforge:worker``."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


class Heartbeat:
    """Context manager that stamps a running trial every ``interval`` seconds from a daemon thread."""

    def __init__(self, study: optuna.Study, trial_id: int, interval: float) -> None:
        self._storage = study._storage  # Optuna has no public accessor; the storage is thread-safe
        self._trial_id, self._interval = trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nasforge-heartbeat", daemon=True)

    def _beat(self) -> bool:
        try:
            self._storage.set_trial_user_attr(self._trial_id, HEARTBEAT_ATTR, time.time())
            return True
        except Exception:  # the trial finished meanwhile, or the storage went away: stop beating
            return False

    def _run(self) -> None:
        while not self._stop.wait(self._interval) and self._beat():
            pass

    def __enter__(self) -> Heartbeat:
        # who runs the trial: a supervising parent fails it the moment this process dies
        self._storage.set_trial_user_attr(self._trial_id, WORKER_ATTR, worker_id())
        self._beat()
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()


def reap_dead_trials(study: optuna.Study, grace: float, now: float | None = None) -> list[int]:
    """Fail the RUNNING trials whose last heartbeat (or start, if none) is older than ``grace`` seconds and
    enqueue their architectures again; returns the numbers of the trials it failed."""
    now = time.time() if now is None else now
    reaped = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = t.user_attrs.get(HEARTBEAT_ATTR)
        if beat is None:
            start: datetime | None = t.datetime_start
            beat = start.timestamp() if start is not None else None
        if beat is None or now - float(beat) < grace:
            continue
        if fail_and_retry(study, t, f"worker died: no heartbeat for {now - float(beat):.0f} s; retried"):
            reaped.append(t.number)
    return reaped


def fail_worker_trials(study: optuna.Study, worker: str, reason: str) -> list[int]:
    """Fail the RUNNING trials that ``worker`` (``"host:pid"``, see :func:`worker_id`) runs and enqueue their
    architectures again (``reason`` is kept in the trial's ``error``); returns their numbers. For a parent
    that saw the worker process end: no heartbeat grace to wait for."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return [t.number for t in running if t.user_attrs.get(WORKER_ATTR) == worker and fail_and_retry(study, t, reason)]


def fail_and_retry(study: optuna.Study, trial: FrozenTrial, reason: str) -> bool:
    """Mark a dead worker's RUNNING ``trial`` FAIL (``reason`` in its ``error``; it does not use up the budget)
    and enqueue its parameters again; False if another process finished or failed it first."""
    storage = study._storage
    try:
        storage.set_trial_user_attr(trial._trial_id, ERROR_ATTR, reason)
        storage.set_trial_user_attr(trial._trial_id, REAPED_ATTR, True)
        if not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
            return False
    except Exception:  # another worker failed it first
        return False
    if trial.params:
        study.enqueue_trial(trial.params, user_attrs={RETRY_ATTR: trial.number})
    return True


def failed_numbers(study: optuna.Study) -> frozenset[int]:
    """Numbers of the study's failed trials (a search started now does not count them: a resume retries)."""
    return frozenset(t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))


def used_budget(study: optuna.Study, ignore: frozenset[int] = frozenset()) -> int:
    """Trials that count towards a search's ``n_trials``: finished, running (in any worker), or failed by their
    evaluator since the search started (``ignore``: the failures from before); a trial failed because its
    worker died does not count (its retry does)."""
    n = 0
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.WAITING:
            continue
        if t.state == TrialState.FAIL and (t.number in ignore or t.user_attrs.get(REAPED_ATTR)):
            continue
        n += 1
    return n
