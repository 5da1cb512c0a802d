"""Progress bars for long stages (rich), falling back to one log line per update when not on a terminal.

On a terminal a bar is redrawn live and, when its task ends, replaced by one line that stays on screen: the
task's name, how far it got and how long it took (``train   2/2 (160/160 steps) in 0:01:23``), so every stage's
time is still visible after the run. Off a terminal (a log file, CI) each ``update(..., log=True)`` prints one
line and nothing else is drawn.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["ProgressReporter", "TaskHandle"]


class TaskHandle:
    """One bar of ``total`` units (epochs, trials, subnets): :meth:`advance` by a unit count or :meth:`update`
    to an absolute (possibly fractional) count, with a status text.

    With ``steps`` > 1 each unit is made of that many steps and the bar counts steps (``total * steps``), so
    it moves on every step; log lines off a terminal still count units (``[train 1/2]``).
    """

    def __init__(self, reporter: ProgressReporter, name: str, total: int, steps: int = 1,
                 progress: Any = None) -> None:
        self._reporter, self._name, self._total, self._progress = reporter, name, total, progress
        self._id: Any = None
        self.steps = max(1, int(steps))
        self.completed: float = 0
        self.status = ""

    @property
    def bar_total(self) -> int:
        """The bar's length in steps."""
        return self._total * self.steps

    @property
    def bar_completed(self) -> int:
        """The steps done (``completed`` units of ``steps`` steps each)."""
        return round(self.completed * self.steps)

    def set_steps(self, steps: int) -> None:
        """Count ``steps`` steps per unit from now on (when the count is known only once the task runs)."""
        self.steps = max(1, int(steps))
        self._reporter._render(self, log=False)

    def advance(self, steps: int = 1, status: str = "") -> None:
        """Move the bar ``steps`` units on."""
        self.update(self.completed + steps, status)

    def update(self, completed: float, status: str | None = None, log: bool = True) -> None:
        """Move the bar to ``completed`` units; ``log=False`` redraws a live bar but prints no line otherwise."""
        self.completed = completed
        if status is not None:
            self.status = status
        self._reporter._render(self, log)

    def summary(self, elapsed_s: float, finished: bool = True) -> str:
        """The line left on screen when the task ends: name, count and elapsed time."""
        steps = f" ({self.bar_completed}/{self.bar_total} steps)" if self.steps > 1 else ""
        took = datetime.timedelta(seconds=int(elapsed_s))
        if finished:
            return f"{self._name:<7} {self.completed:g}/{self._total}{steps} in {took}"
        return f"{self._name:<7} stopped at {self.completed:.3g}/{self._total}{steps} after {took}"


class ProgressReporter:
    """Draws rich progress bars on stderr; ``enabled=False`` silences everything (library use, tests)."""

    def __init__(self, enabled: bool = True, console: Any | None = None) -> None:
        self.enabled = enabled
        self._console = console

    @property
    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True)
        return self._console

    def log(self, message: str) -> None:
        if self.enabled:
            self.console.print(message, highlight=False, markup=False, soft_wrap=True)  # paths stay whole

    @contextmanager
    def task(self, name: str, total: int, steps: int = 1) -> Iterator[TaskHandle]:
        """A bar for ``total`` units of ``steps`` steps each (see :class:`TaskHandle`).

        On a terminal the bar is live and, when the block ends, gives way to its one-line summary (also when
        the block is left by an error or Ctrl-C: the line then says where it stopped).
        """
        if not (self.enabled and self.console.is_terminal):
            yield TaskHandle(self, name, total, steps)
            return
        progress = self._new_progress(name)
        handle = TaskHandle(self, name, total, steps, progress)
        start, finished = time.monotonic(), False
        try:
            with progress:
                handle._id = progress.add_task(name, total=handle.bar_total, status="")
                yield handle
            finished = True
        finally:
            self.console.print(handle.summary(time.monotonic() - start, finished), highlight=False, markup=False,
                               soft_wrap=True)

    def _new_progress(self, name: str) -> Any:
        """A transient rich bar: name, bar, steps done/total, elapsed time, status text."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        return Progress(TextColumn(f"[bold]{name:<7}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.fields[status]}"), console=self.console, transient=True)

    def _render(self, handle: TaskHandle, log: bool) -> None:
        if not self.enabled:
            return
        if handle._progress is not None:
            handle._progress.update(handle._id, completed=handle.bar_completed, total=handle.bar_total,
                                    status=handle.status)
        elif log:
            self.console.print(f"[{handle._name} {handle.completed:g}/{handle._total}] {handle.status}",
                               highlight=False, markup=False, soft_wrap=True)
