"""`nasforge search`: a trained supernet searched by 2 local worker processes on one journal file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nasforge.nas._storage import resolve_storage
from nasforge.supernets import create_supernet
from nasforge.supernets.checkpoint import save_checkpoint

OPTIONS = {"num_classes": 10, "in_channels": 1, "stem_width": 8, "first_block_width": 8,
           "stages": [[16, 2, "relu", False], [24, 2, "hswish", True]], "kernel_sizes": [3, 5],
           "expand_ratios": [2, 4], "depths": [1, 2], "resolutions": [12, 16], "final_expand_width": 48,
           "feature_width": 64}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nasforge", *args], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "supernet.pt"
    save_checkpoint(path, create_supernet("mbv3-small", **OPTIONS), "mbv3-small", OPTIONS)
    return path


def test_two_workers_share_one_journal(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "search"
    res = run_cli("search", str(checkpoint), "--data", "digits", "--out", str(out), "--trials", "10", "--workers",
                  "2", "--sampler", "random", "--constraint", "macs<=1e9")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "front of" in res.stdout and "hypervolume" in res.stdout
    study = optuna.load_study(study_name="nasforge", storage=resolve_storage(out / "study.journal"))
    trials = study.get_trials()
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) == len(trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert 10 <= len(complete) <= 11  # two workers may both start the last trial
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    summary = json.loads((out / "pareto.json").read_text())
    assert summary["complete"] == len(complete) and summary["front"] and summary["hypervolume"] > 0
    for name in ("pareto.csv", "pareto.png", "trials.csv", "search.json", "search_job.json"):
        assert (out / name).stat().st_size > 0, name
    # the same command again without --resume is refused; with --resume and more trials it adds only those
    res = run_cli("search", str(checkpoint), "--data", "digits", "--out", str(out), "--trials", "10",
                  "--sampler", "random")
    assert res.returncode == 2 and "--resume" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("search", str(checkpoint), "--data", "digits", "--out", str(out), "--trials", "13",
                  "--sampler", "random", "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    study = optuna.load_study(study_name="nasforge", storage=resolve_storage(out / "study.journal"))
    assert len([t for t in study.get_trials() if t.state == TrialState.COMPLETE]) == max(13, len(complete))


def test_bad_search_input_is_one_line(checkpoint: Path, tmp_path: Path) -> None:
    for args, needle in ((["--objectives", "accuracy,bogus:up"], "bogus"), (["--workers", "0"], "workers"),
                         (["--sampler", "sobol"], "sobol")):
        res = run_cli("search", str(checkpoint), "--data", "digits", "--out", str(tmp_path / "x"), *args)
        assert res.returncode == 2 and needle in res.stderr and "Traceback" not in res.stderr, res.stderr
    res = run_cli("search", str(tmp_path / "missing"), "--data", "digits")
    assert res.returncode == 2 and "no checkpoint" in res.stderr
    res = run_cli("search", str(checkpoint), "--out", str(tmp_path / "y"))
    assert res.returncode == 2 and "--data" in res.stderr


def test_predictor_loop_through_the_cli(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred"
    res = run_cli("search", str(checkpoint), "--data", "digits", "--out", str(out), "--trials", "14", "--sampler",
                  "predictor")
    assert res.returncode == 0, res.stderr[-3000:]
    study = optuna.load_study(study_name="nasforge", storage=resolve_storage(out / "study.journal"))
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(complete) == 14
    assert any("nasforge:predictor_round" in t.user_attrs for t in complete)  # rounds after the warm-up


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_database_study_is_readable_by_the_optuna_cli(database: str, checkpoint: Path, tmp_path: Path,
                                                      request: pytest.FixtureRequest) -> None:
    """A database storage named on the command line, and the study stays a plain Optuna study. On PostgreSQL,
    two machines are stood in for by two runs of the same command, one of them with 2 workers."""
    if database == "sqlite":
        url, study = f"sqlite:///{tmp_path / 'nas.db'}", "shared"
    else:
        url, study = request.getfixturevalue("postgres_study")
    res = run_cli("search", str(checkpoint), "--data", "digits", "--out", str(tmp_path / "s"), "--trials", "4",
                  "--sampler", "random", "--storage", url, "--study", study,
                  *(["--workers", "2"] if database == "postgresql" else []))
    assert res.returncode == 0, res.stderr[-3000:]
    if database == "postgresql":  # a second machine joins the study with a larger budget
        res = run_cli("search", str(checkpoint), "--data", "digits", "--out", str(tmp_path / "s2"), "--trials",
                      "6", "--sampler", "random", "--storage", url, "--study", study)
        assert res.returncode == 0, res.stderr[-3000:]
        assert json.loads((tmp_path / "s2" / "pareto.json").read_text())["complete"] == 6
    optuna_cli = Path(sys.executable).with_name("optuna")
    if not optuna_cli.exists():
        pytest.skip("the optuna console script is not installed next to this Python")
    listed = subprocess.run([str(optuna_cli), "trials", "--study-name", study, "--storage", url, "-f", "json"],
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    rows = json.loads(listed.stdout)
    wanted = 4 if database == "sqlite" else 6
    assert len(rows) == wanted and all(r["state"] == "COMPLETE" for r in rows)
    assert sorted(r["number"] for r in rows) == list(range(wanted))
    assert all(any(k.startswith("ks_") for k in r["params"]) for r in rows)


def test_nni_evolution_through_the_cli(checkpoint: Path, tmp_path: Path) -> None:
    """``--sampler nni-evolution``: one NNI process whose home is the run folder, a plain Optuna study."""
    pytest.importorskip("nni", reason="NNI is not installed: pip install 'nasforge[nni]'")
    pytest.importorskip("pytorch_lightning", reason="nni.nas needs pytorch-lightning: pip install 'nasforge[nni]'")
    out, url = tmp_path / "nni", f"sqlite:///{tmp_path / 'nni.db'}"
    args = ("search", str(checkpoint), "--data", "digits", "--out", str(out), "--sampler", "nni-evolution",
            "--storage", url, "--study", "evo")
    res = run_cli(*args, "--workers", "2")
    assert res.returncode == 2 and "one sequential worker" in res.stderr and "Traceback" not in res.stderr
    res = run_cli(*args, "--trials", "5")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "front of" in res.stdout and (out / "nni-experiments").is_dir()
    res = run_cli(*args, "--trials", "7", "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((out / "pareto.json").read_text())["complete"] == 7
    optuna_cli = Path(sys.executable).with_name("optuna")
    if not optuna_cli.exists():
        pytest.skip("the optuna console script is not installed next to this Python")
    listed = subprocess.run([str(optuna_cli), "trials", "--study-name", "evo", "--storage", url, "-f", "json"],
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    rows = json.loads(listed.stdout)
    assert sorted(r["number"] for r in rows) == list(range(7)) and all(r["state"] == "COMPLETE" for r in rows)
    assert all(any(k.startswith("ks_") for k in r["params"]) for r in rows)
