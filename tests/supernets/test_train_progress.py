"""The training bar of ``nasforge train`` / ``nasforge run`` counts steps and moves on every step (issue: in a
terminal it sat at 0/2 for minutes), a log off a terminal gets one line per epoch, and finished bars leave a
one-line summary with their time (issue: bars vanished at the end, and the stage times with them)."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from rich.console import Console
from rich.progress import Progress

from nasforge.progress import ProgressReporter
from nasforge.supernets.trainers import TrainConfig, get_trainer
from nasforge.train import fit_with_progress

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, width=160, color_system=None if not terminal else "standard"), out


def _train(net: Any, data: Any, reporter: ProgressReporter, epochs: int) -> list[dict[str, Any]]:
    config = TrainConfig(epochs=epochs, batch_size=32, calib_images=32, warmup_epochs=0, lr=0.05, seed=0)
    return fit_with_progress(get_trainer("sandwich", config), net, data, reporter, supernet_name="mbv3-small",
                             supernet_options=dict(net.config_dict()))


def test_the_terminal_bar_counts_steps_and_moves_every_step(tiny_digits, make_tiny_net,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[tuple[float, float, str]] = []
    update = Progress.update

    def spy(self: Progress, task_id: Any, **fields: Any) -> None:
        drawn.append((fields.get("completed"), fields.get("total"), fields.get("status", "")))
        update(self, task_id, **fields)

    monkeypatch.setattr(Progress, "update", spy)
    console, out = _console(terminal=True)
    history = _train(make_tiny_net(0), tiny_digits, ProgressReporter(console=console), epochs=2)
    assert len(history) == 2
    steps = [completed for completed, total, _ in drawn if total == 8]  # 2 epochs x 128 images / batch 32
    assert len(steps) == len(drawn) and steps[-1] == 8
    assert sorted(set(steps)) == list(range(1, 9)), drawn  # every step drawn: 4 positions per epoch, not 1
    statuses = [status for _, _, status in drawn]
    assert any(re.fullmatch(r"epoch 2/2  step 3/4  loss \d+\.\d{3}  \d+ img/s, data wait \d+%", s) for s in statuses)
    text = _ANSI.sub("", out.getvalue())
    assert re.search(r"train\s+2/2 \(8/8 steps\) in \d+:\d\d:\d\d\n$", text), text[-300:]


def test_off_a_terminal_training_prints_one_line_per_epoch(tiny_digits, make_tiny_net) -> None:
    console, out = _console(terminal=False)
    _train(make_tiny_net(0), tiny_digits, ProgressReporter(console=console), epochs=2)
    lines = out.getvalue().splitlines()
    assert [line.split("]")[0] for line in lines] == ["[train 1/2", "[train 2/2"], lines
    assert "epoch 2/2  loss " in lines[1]


def test_finished_bars_leave_a_summary_line_with_their_time() -> None:
    console, out = _console(terminal=True)
    reporter = ProgressReporter(console=console)
    with reporter.task("search", total=3) as task:
        for k in range(3):
            task.advance(1, f"trial {k}")
    with pytest.raises(KeyboardInterrupt), reporter.task("export", total=4) as task:
        task.advance(1, "subnet 0")
        raise KeyboardInterrupt
    text = _ANSI.sub("", out.getvalue())
    assert re.search(r"search\s+3/3 in \d+:\d\d:\d\d\n", text), text
    assert re.search(r"export\s+stopped at 1/4 after \d+:\d\d:\d\d\n$", text), text


def test_no_summary_line_off_a_terminal_or_when_disabled() -> None:
    console, out = _console(terminal=False)
    with ProgressReporter(console=console).task("search", total=2) as task:
        task.advance(1, "trial 0")
        task.advance(1, "trial 1")
    assert out.getvalue().splitlines() == ["[search 1/2] trial 0", "[search 2/2] trial 1"]
    console, out = _console(terminal=True)
    with ProgressReporter(enabled=False, console=console).task("search", total=2) as task:
        task.advance(2)
    assert out.getvalue() == ""
