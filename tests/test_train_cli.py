"""`nasforge train`: a whole progressive-shrinking run through the real CLI, resume after SIGKILL, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from inprocess_cli import run_cli

from nasforge.cli import main
from nasforge.search import resolve_source
from nasforge.supernets.checkpoint import load_supernet

DATA = "shapes?n=200&classes=4"
ARGS = ["train", "mbv3-small", "--trainer", "ps", "--data", DATA, "--scale", "0.005", "--batch-size", "32",
        "--quiet"]
PHASES = ["teacher", "kernel", "depth-1", "depth-2", "expand-1", "expand-2"]


def run_cli_subprocess(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m nasforge ARGS`` in a new process (for the run resumed after a SIGKILL)."""
    return subprocess.run([sys.executable, "-m", "nasforge", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train") / "run"
    res = run_cli(*ARGS, "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "trained mbv3-small (ps)" in res.stdout
    return out


def test_ps_run_writes_every_phase(finished: Path) -> None:
    ckpts = sorted(p.name for p in (finished / "checkpoints").iterdir())
    assert ckpts == ["last.pt"] + [f"phase-{i + 1}-{n}.pt" for i, n in enumerate(PHASES)] + ["supernet.pt"]
    assert not (finished / "supernet.pt").exists(), "one layout: the final supernet sits in checkpoints/"
    history = json.loads((finished / "train_history.json").read_text())
    assert [h["phase"] for h in history] == PHASES
    assert (finished / "training.png").stat().st_size > 1000
    request = json.loads((finished / "train.json").read_text())
    assert request["trainer"] == "ps" and request["train_config"]["schedule_scale"] == 0.005
    assert request["train_config"]["weight_decay"] == 3e-5  # the reference's, not the generic default
    net, state = load_supernet(finished / "checkpoints" / "supernet.pt")
    assert state["trainer"] == "ps" and net.config.in_channels == 3 and net.config.num_classes == 4


def test_existing_run_needs_resume(finished: Path) -> None:
    res = run_cli(*ARGS, "--out", str(finished))
    assert res.returncode == 2 and "already holds a training run" in res.stderr
    assert "Traceback" not in res.stderr
    before = (finished / "checkpoints" / "supernet.pt").stat().st_mtime_ns
    res = run_cli(*[a for a in ARGS if a != "--quiet"], "--out", str(finished), "--resume", "--json")
    assert res.returncode == 0 and "already finished" in res.stderr, res.stderr
    result = json.loads(res.stdout)
    assert result["epochs"] == len(json.loads((finished / "train_history.json").read_text()))
    assert result["checkpoint"].endswith("supernet.pt") and result["last_epoch"]["phase"] == "expand-2"
    assert (finished / "checkpoints" / "supernet.pt").stat().st_mtime_ns == before


def test_a_folder_of_the_old_layout_still_resumes_and_loads(finished: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(finished, old)
    (old / "checkpoints" / "supernet.pt").rename(old / "supernet.pt")  # where nasforge train wrote it before
    res = run_cli(*ARGS, "--out", str(old), "--resume", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["checkpoint"] == str(old / "supernet.pt"), res.stderr
    assert not (old / "checkpoints" / "supernet.pt").exists(), "a finished old run is not trained again"
    assert resolve_source(old)[0] == old / "supernet.pt"  # search, export and prune find it too


def test_resume_with_other_settings_is_refused(finished: Path) -> None:
    args = [a if a != "0.005" else "0.01" for a in ARGS]
    res = run_cli(*args, "--out", str(finished), "--resume")
    assert res.returncode == 2, res.stderr
    assert "schedule_scale: 0.005 -> 0.01" in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--trainer", "nope"], "unknown trainer"),
        (["--set", "wd"], "KEY=VALUE"),
        (["--set", "bogus=1"], "unknown training option"),
        (["--batch-size", "30", "--micro-batches", "4"], "must divide"),
        (["--device", "tpu9"], "unknown device"),
        (["--data", "nosuch"], "nosuch"),
    ],
)
def test_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
                               message: str) -> None:
    assert main([*ARGS, "--out", str(tmp_path / "r"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_unknown_space(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "no-such-space", "--out", str(tmp_path / "r")]) == 2
    assert "no-such-space" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_sigkill_mid_phase_then_resume(tmp_path: Path, finished: Path) -> None:
    """Kill the run once the kernel phase has finished; --resume continues without redoing finished epochs and
    ends where the uninterrupted run ended."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "nasforge", *ARGS, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = out / "checkpoints" / "phase-2-kernel.pt"
    deadline = time.monotonic() + 240
    try:
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), "the kernel phase never finished"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "checkpoints" / "supernet.pt").exists(), "training finished before the kill"
    res = run_cli_subprocess(*[a for a in ARGS if a != "--quiet"], "--out", str(out), "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "teacher epoch 1/6" not in res.stderr and "expand-2 epoch 6/6" in res.stderr
    assert "resuming training at epoch " in res.stderr  # it says where it restarts
    history = json.loads((out / "train_history.json").read_text())
    reference = json.loads((finished / "train_history.json").read_text())
    assert [h["phase"] for h in history] == PHASES
    assert history[-1]["loss"] == pytest.approx(reference[-1]["loss"], rel=1e-4)


def test_sorted_and_deps_through_the_cli(tmp_path: Path) -> None:
    """Trainer options travel through --set; the run folder records them; bad ones are one-line errors."""
    out = tmp_path / "sorted"
    res = run_cli("train", "sorted-mlp", "--trainer", "sorted", "--data", "digits", "--epochs", "2", "--set",
                  "g_acc=2", "--set", "sampling=large", "--quiet", "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    request = json.loads((out / "train.json").read_text())
    assert request["train_config"]["trainer_options"] == {"g_acc": 2, "sampling": "large"}
    history = json.loads((out / "train_history.json").read_text())
    steps = 1077 // 64
    assert [h["passes"]["subnet"] for h in history] == [2 * steps, 4 * steps]
    net, state = load_supernet(out / "checkpoints" / "supernet.pt")
    assert state["trainer"] == "sorted" and net.space.size() == 160
    res = run_cli("train", "sorted-mlp", "--trainer", "sorted", "--data", "digits", "--epochs", "2", "--set",
                  "g_acc=3", "--quiet", "--out", str(out), "--resume")
    assert res.returncode == 2 and "trainer_options" in res.stderr and "Traceback" not in res.stderr
    for bad, needle in ((["--set", "shrink_point=2"], "shrink_point"), (["--set", "g_acc=2"], "g_acc")):
        res = run_cli("train", "sorted-mlp", "--trainer", "deps", "--data", "digits", "--epochs", "2", *bad,
                      "--quiet", "--out", str(tmp_path / "deps"))
        assert res.returncode == 2 and needle in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert not (tmp_path / "deps").exists()
