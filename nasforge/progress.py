"""Progress bars for long stages (rich), falling back to one log line per update when not on a terminal."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["ProgressReporter", "TaskHandle"]


class TaskHandle:
    """One bar: :meth:`advance` by a step count or :meth:`update` to an absolute count, with a status text."""

    def __init__(self, reporter: ProgressReporter, name: str, total: int, task_id: Any) -> None:
        self._reporter, self._name, self._total, self._id = reporter, name, total, task_id
        self.completed: float = 0
        self.status = ""

    def advance(self, steps: int = 1, status: str = "") -> None:
        self.update(self.completed + steps, status)

    def update(self, completed: float, status: str | None = None, log: bool = True) -> None:
        """Move the bar to ``completed``; ``log=False`` redraws a live bar but prints no line otherwise."""
        self.completed = completed
        if status is not None:
            self.status = status
        self._reporter._render(self, self.status, log)


class ProgressReporter:
    """Draws rich progress bars on stderr; ``enabled=False`` silences everything (library use, tests)."""

    def __init__(self, enabled: bool = True, console: Any | None = None) -> None:
        self.enabled = enabled
        self._console = console
        self._progress: Any = None

    @property
    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True)
        return self._console

    def log(self, message: str) -> None:
        if self.enabled:
            self.console.print(message, highlight=False, markup=False)

    @contextmanager
    def task(self, name: str, total: int) -> Iterator[TaskHandle]:
        if not self.enabled:
            yield TaskHandle(self, name, total, None)
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        live = self.console.is_terminal
        progress = Progress(TextColumn(f"[bold]{name:<7}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("{task.fields[status]}"), console=self.console, disable=not live)
        self._progress = progress
        with progress:
            task_id = progress.add_task(name, total=total, status="")
            yield TaskHandle(self, name, total, task_id)
        self._progress = None

    def _render(self, handle: TaskHandle, status: str, log: bool) -> None:
        if not self.enabled:
            return
        if self.console.is_terminal and self._progress is not None:
            self._progress.update(handle._id, completed=handle.completed, status=status)
        elif log:
            self.console.print(f"[{handle._name} {handle.completed:g}/{handle._total}] {status}", highlight=False, markup=False)
