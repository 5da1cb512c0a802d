"""`nasforge run --epochs 1 --trials 4` end to end through the real CLI, then resume and bad-input paths."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import optuna
import pytest
from inprocess_cli import run_cli

from nasforge.config import RunConfig, load_config
from nasforge.export import read_metadata


def run_cli_subprocess(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m nasforge ARGS`` in a new process (for the run resumed after a SIGKILL)."""
    return subprocess.run([sys.executable, "-m", "nasforge", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("pipeline")
    res = run_cli("run", "--epochs", "1", "--trials", "4", "--out", "run", cwd=work)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "nasforge run" in res.stdout  # the summary table
    return work / "run"


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_run_folder_contents(quick_run: Path) -> None:
    for name in ("config.yaml", "checkpoints/supernet.pt", "checkpoints/last.pt", "study.journal", "trials.csv",
                 "pareto.csv", "pareto.png", "training.png", "report.md", "summary.json", "train_history.json"):
        assert (quick_run / name).is_file(), name
    for png in ("pareto.png", "training.png"):
        assert (quick_run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_config(quick_run / "config.yaml") == RunConfig().with_overrides(train__epochs=1, search__trials=4)
    assert len(_rows(quick_run / "trials.csv")) == 4
    assert "## Exported subnets" in (quick_run / "report.md").read_text()


@pytest.mark.slow
def test_exported_subnets_match_pytorch_and_run_in_onnxruntime(quick_run: Path) -> None:
    subnets = sorted((quick_run / "subnets").iterdir())
    assert subnets, "no subnet exported"
    pareto = _rows(quick_run / "pareto.csv")
    assert len(pareto) == len(subnets)
    for folder in subnets:
        metrics = json.loads((folder / "metrics.json").read_text())
        arch = json.loads((folder / "arch.json").read_text())
        assert metrics["max_abs_diff"] <= 1e-4
        assert metrics["arch"] == arch
        meta = read_metadata(folder / "model.onnx")
        assert json.loads(meta["architecture"]) == arch
        assert len(meta["source_checkpoint_sha256"]) == 64
        sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        r = metrics["resolution"]
        out = sess.run(None, {sess.get_inputs()[0].name: np.zeros((1, 1, r, r), np.float32)})[0]
        assert out.shape == (1, 10)
        lat = metrics["latency_ms"]
        assert 0 < lat["min_ms"] <= lat["median_ms"] <= lat["p90_ms"] and lat["runs"] >= 200


#: The metadata every subnet deliverable carries (as in test_deploy_cli.py).
SUBNET_KEYS = {"architecture", "supernet", "dataset", "resolution", "normalization_mean", "normalization_std",
               "source_checkpoint", "source_checkpoint_sha256", "nasforge_version", "input_shape"}


@pytest.mark.slow
def test_run_export_and_prune_files_share_one_metadata_schema(quick_run: Path, tmp_path: Path) -> None:
    subnet = quick_run / "subnets" / "0"
    res = run_cli("export", str(subnet), "--out", str(tmp_path / "e.onnx"), "--exporter", "torchscript")
    assert res.returncode == 0, res.stderr[-2000:]
    res = run_cli("prune", str(subnet), "--target", "macs=0.8", "--finetune-epochs", "0", "--device", "none",
                  "--out", str(tmp_path / "p"))
    assert res.returncode == 0, res.stderr[-2000:]
    files = {"run": subnet / "model.onnx", "export": tmp_path / "e.onnx", "prune": tmp_path / "p" / "model.onnx"}
    metas = {name: read_metadata(path) for name, path in files.items()}
    for name, meta in metas.items():
        assert SUBNET_KEYS <= set(meta), (name, SUBNET_KEYS - set(meta))
    for key in ("architecture", "dataset", "resolution", "source_checkpoint", "source_checkpoint_sha256"):
        assert metas["run"][key] == metas["export"][key] == metas["prune"][key], key
    assert {"source", "base_model", "pruning_target", "criterion"} <= set(metas["prune"]) - set(metas["run"])


@pytest.mark.slow
def test_study_is_a_plain_optuna_study(quick_run: Path) -> None:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(quick_run / "study.journal")))
    study = optuna.load_study(study_name="nasforge", storage=storage)
    assert len(study.trials) == 4
    assert all("arch" in t.user_attrs for t in study.trials)


@pytest.mark.slow
def test_rerun_without_resume_refuses_and_keeps_files(quick_run: Path) -> None:
    ckpt = quick_run / "checkpoints" / "supernet.pt"
    before = ckpt.read_bytes()
    res = run_cli("run", "--epochs", "1", "--trials", "4", "--out", str(quick_run), cwd=quick_run.parent)
    assert res.returncode == 2 and "--resume" in res.stderr and "Traceback" not in res.stderr
    assert ckpt.read_bytes() == before


@pytest.mark.slow
def test_resume_adds_trials_without_retraining(quick_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(quick_run, run)
    history_before = (run / "train_history.json").read_text()
    res = run_cli("run", "--resume", "--out", str(run), "--epochs", "1", "--trials", "6", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "training already finished" in res.stderr
    assert "resuming: training is finished" in res.stderr  # where the run restarts
    summary = json.loads(res.stdout)  # --json: summary.json on stdout, nothing else
    assert summary["trials"] == 6 and summary["subnets"]
    assert len(_rows(run / "trials.csv")) == 6
    assert (run / "train_history.json").read_text() == history_before
    assert load_config(run / "config.yaml").search.trials == 6


@pytest.mark.slow
def test_resume_with_other_settings_or_corrupt_checkpoint_fails_cleanly(quick_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(quick_run, run)
    res = run_cli("run", "--resume", "--out", str(run), "--epochs", "3", cwd=tmp_path)
    assert res.returncode == 2 and "train.epochs" in res.stderr and "Traceback" not in res.stderr
    (run / "checkpoints" / "supernet.pt").write_bytes(b"not a checkpoint")
    res = run_cli("run", "--resume", "--out", str(run), "--epochs", "1", "--trials", "4", cwd=tmp_path)
    assert res.returncode == 2 and "corrupt" in res.stderr and "Traceback" not in res.stderr
    assert (run / "study.journal").stat().st_size > 0


def test_resume_of_missing_run_fails(tmp_path: Path) -> None:
    res = run_cli("run", "--resume", "--out", "nothing-here", cwd=tmp_path)
    assert res.returncode == 2 and "nothing to resume" in res.stderr


@pytest.mark.slow
def test_sigkill_mid_training_then_resume_finishes(tmp_path: Path) -> None:
    import os
    import signal
    import time

    (tmp_path / "c.yaml").write_text("train: {epochs: 2}\nsearch: {trials: 2, objectives: [accuracy, macs]}\n")
    args = [sys.executable, "-m", "nasforge", "run", "--config", "c.yaml", "--out", "run", "--quiet"]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 240
    try:
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert last.exists(), "no epoch checkpoint appeared"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (tmp_path / "run" / "checkpoints" / "supernet.pt").exists(), "training finished before the kill"
    res = run_cli_subprocess("run", "--config", "c.yaml", "--out", "run", "--resume", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    history = json.loads((tmp_path / "run" / "train_history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert "[train 1/2]" not in res.stderr and "[train 2/2]" in res.stderr  # only epoch 2 ran again
    assert any((tmp_path / "run" / "subnets").iterdir())
