"""Run ``nasforge`` commands inside the test process: :func:`run_cli` is ``python -m nasforge ARGS`` without the
interpreter start-up and imports that a subprocess pays for every call.

It returns what ``subprocess.run(..., capture_output=True, text=True)`` would (``returncode``, ``stdout``,
``stderr``), and puts back the process-wide state a command may change: the working directory, environment
variables, torch's thread count, the SIGINT/SIGTERM handlers, the root logger's handlers and level, and the
warning filters. Tests that need a fresh interpreter, a killed or signalled process, a second process holding a
lock, torchrun or the console script keep using subprocesses.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from nasforge.cli import main

__all__ = ["CliResult", "preserved_process_state", "run_cli"]


@dataclass(frozen=True)
class CliResult:
    """The exit code and output of one in-process command (the fields of ``subprocess.CompletedProcess``)."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def preserved_process_state(cwd: str | Path | None = None) -> Iterator[None]:
    """Run the block in ``cwd`` (when given); restore the process-wide state a command may change afterwards."""
    saved_cwd, saved_env, threads = os.getcwd(), dict(os.environ), torch.get_num_threads()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    root = logging.getLogger()
    root_handlers, root_level = list(root.handlers), root.level
    try:
        with warnings.catch_warnings():
            if cwd is not None:
                os.chdir(cwd)
            yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_num_threads(threads)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        root.handlers[:] = root_handlers
        root.setLevel(root_level)


def run_cli(*args: str, cwd: str | Path | None = None, env: Mapping[str, str] | None = None,
            torch_threads: int | None = None) -> CliResult:
    """``nasforge ARGS`` run by :func:`nasforge.cli.main` in this process, its stdout and stderr captured.

    Args:
        args: the command line after ``nasforge``.
        cwd: the working directory of the command.
        env: environment variables set for the command only.
        torch_threads: torch's thread count for the command only (what ``OMP_NUM_THREADS`` sets in a new process).
    """
    out, err = io.StringIO(), io.StringIO()
    with preserved_process_state(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        os.environ.update(env or {})
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        try:
            code = main(list(args))
        except SystemExit as exc:  # as the interpreter would turn it into an exit status
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return CliResult(tuple(args), code, out.getvalue(), err.getvalue())
