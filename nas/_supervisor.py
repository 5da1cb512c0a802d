"""A supervisor for a search's local worker processes: a dead worker is noticed, its trial retried, it is replaced.

:func:`supervise_workers` starts ``workers`` spawned processes, each running ``target(index)`` (one worker of a
search on a shared study), and waits on their sentinels, never in a blocking join. When a worker ends with a
non-zero exit code or a signal, its RUNNING trial (found by ``nasforge:worker``, see
:func:`~nasforge.nas._heartbeat.fail_worker_trials`) is failed at once and its architecture queued again, so a
surviving or the replacement worker retries it right away; while the study still has trials to run, a fresh
worker takes the dead one's place, at most ``max_restarts`` times. One death more stops the search: the other
workers are stopped (their trials are failed and queued for a retry on resume) and the report's ``gave_up`` says
why in one line. A worker that raises a :class:`~nasforge.errors.NasforgeError` (a bad data spec, say) stops the
search with that error, since a replacement would only repeat it. The supervisor returns when no worker is left.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import signal
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path

import optuna
from optuna.trial import TrialState

from nasforge.errors import NasforgeError

from ._heartbeat import fail_worker_trials, failed_numbers, used_budget, worker_id
from ._storage import resolve_storage

__all__ = ["SearchWorkerError", "SupervisorReport", "supervise_workers"]

_STOP_TIMEOUT = 10.0  # seconds a stopped worker gets to exit after SIGTERM, before SIGKILL
_MAX_LINE = 300  # characters of a worker's error message that reach the parent's one line


class SearchWorkerError(NasforgeError, RuntimeError):
    """Search worker processes kept dying (or one failed); the message says how far the search got."""


@dataclass
class SupervisorReport:
    """What happened to the workers.

    Attributes:
        deaths: one line per worker that died (exit code or signal, and the trials failed for a retry).
        restarts: replacement workers started.
        gave_up: why the supervisor stopped the search early (one line), or None when every worker ran to its end.
        finished: COMPLETE trials in the study when the supervisor returned (-1: the study was never created).
    """

    deaths: list[str] = field(default_factory=list)
    restarts: int = 0
    gave_up: str | None = None
    finished: int = -1


@dataclass
class _Child:
    index: int
    process: BaseProcess
    pid: int
    conn: Connection  # receiving end: the worker's error, if it raised one
    message: tuple[str, object] | None = None
    eof: bool = False


def supervise_workers(target: Callable[[int], object], workers: int, *, storage: str, study_name: str,
                      n_trials: int, max_restarts: int | None = None, log: Callable[[str], None] = print,
                      trace_dir: Path | None = None, poll: float = 5.0) -> SupervisorReport:
    """Run ``target(0)`` ... ``target(workers - 1)`` in spawned processes until none is left, replacing dead ones.

    Args:
        target: one search worker on ``study_name`` in ``storage``; picklable (a module-level function or a
            ``functools.partial`` of one). Replacements get the next indices (``workers``, ``workers + 1``...).
        workers: processes to start.
        storage: the study's storage (as for :func:`~nasforge.nas.run_search`), read to fail dead workers' trials.
        study_name: the study the workers share.
        n_trials: the search's budget; a dead worker is replaced only while the study has trials left to run.
        max_restarts: replacements allowed (default ``workers``); one death more stops the search.
        log: gets one line per event (a worker finished, died, was replaced).
        trace_dir: where a worker that raised writes ``worker-<index>.traceback.txt`` (None: nowhere).
        poll: seconds between checks when no worker ends (a dead worker is seen at once, through its sentinel).

    Returns:
        A :class:`SupervisorReport`; ``gave_up`` is set when workers kept dying.

    Raises:
        NasforgeError: the error a worker raised (other workers are stopped first).
    """
    limit = workers if max_restarts is None else max_restarts
    return _Supervisor(target, storage, study_name, n_trials, limit, log, trace_dir).run(workers, poll)


class _Supervisor:
    def __init__(self, target: Callable[[int], object], storage: str, study_name: str, n_trials: int,
                 max_restarts: int, log: Callable[[str], None], trace_dir: Path | None) -> None:
        self._target, self._storage, self._study_name = target, storage, study_name
        self._n_trials, self._max_restarts, self._log, self._trace_dir = n_trials, max_restarts, log, trace_dir
        self._ctx = mp.get_context("spawn")
        self._children: list[_Child] = []
        self._next = 0
        self._study: optuna.Study | None = None
        self._failed_before: frozenset[int] = frozenset()
        self._error: NasforgeError | None = None
        self.report = SupervisorReport()

    def run(self, workers: int, poll: float) -> SupervisorReport:
        study = self._load()
        self._failed_before = failed_numbers(study) if study is not None else frozenset()
        try:
            for _ in range(workers):
                self._start()
            while self._children:
                self._wait(poll)
        finally:
            self._stop_all("the search was interrupted")
        if self._error is not None:
            raise self._error
        study = self._load()
        if study is not None:
            self.report.finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        return self.report

    def _wait(self, poll: float) -> None:
        conns = [c.conn for c in self._children if not c.eof]
        ready = wait([c.process.sentinel for c in self._children] + conns, timeout=poll)
        for child in list(self._children):
            if child.conn in ready:
                _read(child)
            if child.process.exitcode is not None and child in self._children:
                self._children.remove(child)
                self._ended(child)

    def _start(self) -> _Child:
        index, self._next = self._next, self._next + 1
        receive, send = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(target=_child_main, args=(self._target, index, send, self._trace_dir),
                                    name=f"nasforge-search-worker-{index}")
        process.start()
        send.close()  # the parent keeps only the receiving end, so it sees EOF when the worker is gone
        child = _Child(index, process, int(process.pid or 0), receive)
        self._children.append(child)
        return child

    def _ended(self, child: _Child) -> None:
        """Account for a worker whose process has ended (its exit code is known)."""
        code = child.process.exitcode
        if not child.eof:
            _read(child)
        _close(child)
        if code == 0:
            self._log(f"worker {child.index} finished")
            return
        if child.message is not None and child.message[0] == "user":
            payload = child.message[1]
            self._error = payload if isinstance(payload, NasforgeError) else SearchWorkerError(str(payload))
            self._stop_all(f"worker {child.index} failed")
            return
        self._died(child, _describe_exit(code, child.message))

    def _died(self, child: _Child, how: str) -> None:
        failed = self._fail_trials(child, f"worker died ({how}); retried")
        line = f"worker {child.index} (pid {child.pid}) died ({how})"
        if failed:
            line += f"; its trial {', '.join(map(str, failed))} failed and queued for a retry"  # one, normally
        self.report.deaths.append(line)
        self._log(line)
        if self.report.gave_up is not None or self._remaining() <= 0:
            return
        if self.report.restarts >= self._max_restarts:
            self._give_up(child, how)
            return
        self.report.restarts += 1
        new = self._start()
        self._log(f"started worker {new.index} in its place (replacement {self.report.restarts} of at most "
                  f"{self._max_restarts})")

    def _give_up(self, child: _Child, how: str) -> None:
        self._stop_all("workers kept dying")  # first, so no trial finishes after the count below
        study = self._load()
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) if study is not None else 0
        self.report.gave_up = (
            f"a search worker kept dying: {len(self.report.deaths)} deaths, the last one worker {child.index} "
            f"({how}), after {self.report.restarts} replacement(s) (at most {self._max_restarts}); stopped with "
            f"{done} of {self._n_trials} trials finished")

    def _stop_all(self, why: str) -> None:
        """Stop the workers still running: SIGTERM (a worker then fails its own trial and releases Optuna's journal
        lock on the way out), SIGKILL after ``_STOP_TIMEOUT``; a trial left RUNNING is failed and queued here."""
        children, self._children = self._children, []
        for child in children:
            if child.process.exitcode is None:
                child.process.terminate()
        for child in children:
            child.process.join(_STOP_TIMEOUT)
            if child.process.exitcode is None:
                child.process.kill()
                child.process.join()
            _close(child)
            if child.process.exitcode != 0:
                self._fail_trials(child, f"worker stopped ({why}); retried on resume")
                self._log(f"stopped worker {child.index} ({why})")

    def _fail_trials(self, child: _Child, reason: str) -> list[int]:
        study = self._load()
        return [] if study is None else fail_worker_trials(study, worker_id(child.pid), reason)

    def _remaining(self) -> int:
        """Trials the study still has to start (as the workers count them: dead workers' trials do not count)."""
        study = self._load()
        return self._n_trials if study is None else self._n_trials - used_budget(study, self._failed_before)

    def _load(self) -> optuna.Study | None:
        """The shared study, or None while no worker has created it yet."""
        if self._study is None:
            try:
                self._study = optuna.load_study(study_name=self._study_name, storage=resolve_storage(self._storage),
                                                sampler=optuna.samplers.RandomSampler())
            except KeyError:  # Optuna's "Record does not exist": the study is not created yet
                return None
        return self._study


def _read(child: _Child) -> None:
    """Receive the worker's message, if any; mark EOF once the worker closed its end."""
    try:
        child.message = child.conn.recv()
    except EOFError:
        child.eof = True
    except (pickle.UnpicklingError, TypeError, AttributeError, ImportError) as exc:  # an exception not rebuildable
        child.message = ("crash", f"its error could not be read back ({type(exc).__name__}: {exc})")


def _close(child: _Child) -> None:
    child.conn.close()
    child.eof = True


def _describe_exit(code: int | None, message: tuple[str, object] | None) -> str:
    """``"killed by SIGKILL"`` or ``"exit code 1: RuntimeError: ..."``."""
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    text = f"exit code {code}"
    return f"{text}: {message[1]}" if message is not None else text


def _child_main(target: Callable[[int], object], index: int, conn: Connection, trace_dir: Path | None) -> None:
    """Body of a worker process: ``target(index)``; an exception reaches the parent as one line, exit code 1."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        target(index)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the parent reports it once
        raise SystemExit(130) from None
    except NasforgeError as exc:
        _send(conn, ("user", exc))
        raise SystemExit(1) from None
    except Exception as exc:  # any other crash: one line for the parent, the traceback in a file
        _send(conn, ("crash", _crash_line(exc, index, trace_dir)))
        raise SystemExit(1) from None
    finally:
        # From here on the process is only exiting: a stop request then means plain, silent death. Raising
        # SystemExit inside an interpreter-shutdown finalizer would print "Exception ignored ... Traceback".
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        conn.close()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # As an exception, not the default instant death: the running trial is told FAIL and Optuna's journal lock
    # is released on the way out, so the parent and the other workers do not wait out the lock's 30 s grace.
    # Only once: a second request while unwinding ends the process at once and quietly.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise SystemExit(128 + signum)


def _crash_line(exc: Exception, index: int, trace_dir: Path | None) -> str:
    first = (str(exc).strip().splitlines() or [""])[0][:_MAX_LINE]
    line = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    if trace_dir is None:
        return line
    path = Path(trace_dir) / f"worker-{index}.traceback.txt"
    try:
        path.write_text(traceback.format_exc())
    except OSError:
        return line
    return f"{line}; traceback in {path}"


def _send(conn: Connection, message: tuple[str, object]) -> None:
    try:
        conn.send(message)
    except (pickle.PicklingError, TypeError, AttributeError):  # an exception that does not pickle: its text
        conn.send((message[0], str(message[1])[:_MAX_LINE]))
