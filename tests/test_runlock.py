"""One writer per run folder: a second writer gets one line naming the first; a killed holder's lock is taken."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from nasforge import runlock
from nasforge.errors import ConfigError
from nasforge.runlock import LOCK_NAME, file_lock, run_lock

pytestmark = pytest.mark.skipif(os.name != "posix", reason="flock, SIGKILL and SIGSTOP are POSIX")

# Holds a lock in another process until killed: prints "locked" once it has it.
HOLDER = """
import sys, time
from nasforge.runlock import file_lock, run_lock
lock = (run_lock if sys.argv[1] == "run" else file_lock)(sys.argv[2], sys.argv[3])
lock.__enter__()
print("locked", flush=True)
time.sleep(120)
"""
TRAIN = ["train", "mbv3-small", "--trainer", "sandwich", "--data", "shapes?n=100&classes=4", "--epochs", "1",
         "--batch-size", "32", "--quiet"]


def _hold(kind: str, target: Path, command: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, kind, str(target), command], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding ``run_lock(tmp_path / "run", "nasforge run")``; killed at the end."""
    proc = _hold("run", tmp_path / "run", "nasforge run")
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_writer_gets_one_line_naming_the_holder(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    with pytest.raises(ConfigError) as err:
        with run_lock(tmp_path / "run", "nasforge train"):
            pytest.fail("took a lock another process holds")
    message = str(err.value)
    assert "\n" not in message and f"PID {holder.pid}" in message and "`nasforge run`" in message
    assert message.startswith(f"run folder {tmp_path / 'run'} is in use by")
    assert message.endswith("wait for it to finish or choose another --out")
    record = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
    assert record["pid"] == holder.pid and record["command"] == "nasforge run"  # the loser changed nothing


def test_lock_of_a_sigkilled_process_is_taken_over(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    lock = tmp_path / "run" / LOCK_NAME
    assert json.loads(lock.read_text())["pid"] == holder.pid  # the killed process's record is still there
    with run_lock(tmp_path / "run", "nasforge run") as folder:
        assert folder == tmp_path / "run" and json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()  # released: the lock file goes, the folder (not created by this call) stays
    assert (tmp_path / "run").is_dir()


def test_failed_start_leaves_no_folder_and_release_frees_it(tmp_path: Path) -> None:
    out = tmp_path / "a" / "run"
    with pytest.raises(RuntimeError), run_lock(out, "nasforge run"):
        assert (out / LOCK_NAME).is_file()
        raise RuntimeError("bad config")
    assert not (tmp_path / "a").exists()  # created for the lock, empty again: removed
    with run_lock(out, "nasforge run"):
        (out / "result.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["result.json"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is not a folder"), run_lock(tmp_path / "file", "nasforge run"):
        pass


def test_without_fcntl_an_exclusive_lock_file_checks_the_pid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             holder: subprocess.Popen[str]) -> None:
    monkeypatch.setattr(runlock, "fcntl", None)  # the Windows path
    out = tmp_path / "excl"
    out.mkdir()
    record = {"pid": holder.pid, "host": "h", "host_tag": runlock.host_tag(), "command": "nasforge prune",
              "started": "2024-01-02T03:04:05+00:00"}
    (out / LOCK_NAME).write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=rf"`nasforge prune` \(PID {holder.pid} on h, since 2024-01-02 03:04:05\)"):
        with run_lock(out, "nasforge run"):
            pass
    (out / LOCK_NAME).write_text(json.dumps({**record, "pid": _dead_pid()}))  # a holder that is gone: taken
    with run_lock(out, "nasforge run"):
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
        with pytest.raises(ConfigError, match=f"PID {os.getpid()}"), run_lock(out, "nasforge run"):
            pass
    assert sorted(os.listdir(out)) == []


def test_quantize_refuses_a_destination_being_written(tmp_path: Path) -> None:
    from nasforge.export import export_onnx
    from nasforge.quantize import QuantConfig, quantize

    src = tmp_path / "model.onnx"
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
    export_onnx(net, torch.randn(1, 16), src, exporter="torchscript")
    dst = tmp_path / "q" / "model.int8.onnx"
    proc = _hold("file", dst, "nasforge quantize")
    try:
        with pytest.raises(ConfigError, match=f"{dst} is being written by `nasforge quantize` \\(PID {proc.pid} "):
            quantize(src, dst, config=QuantConfig(method="dynamic"), device=None)
    finally:
        proc.kill()
        proc.wait()
    assert not dst.exists()
    with file_lock(dst, "nasforge quantize"):  # the killed writer's lock is free again
        pass
    assert os.listdir(dst.parent) == []


def test_two_train_commands_on_one_folder(tmp_path: Path) -> None:
    """Start one `nasforge train`, pause it once it holds the lock, start a second on the same --out: the second
    exits 2 with one line naming the first, the first then finishes normally."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "nasforge", *TRAIN, "--out", str(out)]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (out / LOCK_NAME).exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (out / LOCK_NAME).exists(), "the first command never took the lock"
        os.kill(first.pid, signal.SIGSTOP)  # it keeps the lock while the second one starts
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        os.kill(first.pid, signal.SIGCONT)
        stdout, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGCONT)
            first.kill()
            first.wait()
    assert first.returncode == 0, stderr[-2000:]
    assert second.returncode == 2 and "Traceback" not in second.stderr
    line = second.stderr.strip()
    assert len(line.splitlines()) == 1 and f"PID {first.pid}" in line and "`nasforge train`" in line, line
    assert (out / "checkpoints" / "supernet.pt").is_file() and not (out / LOCK_NAME).exists()
