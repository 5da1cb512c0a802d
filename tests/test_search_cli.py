"""`nasforge search`: a trained supernet searched by 2 local worker processes on one journal file."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import inprocess_cli
import optuna
import pytest
from inprocess_cli import CliResult
from optuna.trial import TrialState

from nasforge.nas._heartbeat import RETRY_ATTR, WORKER_ATTR
from nasforge.nas._storage import resolve_storage
from nasforge.supernets import create_supernet
from nasforge.supernets.checkpoint import save_checkpoint

OPTIONS = {"num_classes": 10, "in_channels": 1, "stem_width": 8, "first_block_width": 8,
           "stages": [[16, 2, "relu", False], [24, 2, "hswish", True]], "kernel_sizes": [3, 5],
           "expand_ratios": [2, 4], "depths": [1, 2], "resolutions": [12, 16], "final_expand_width": 48,
           "feature_width": 64}


def run_cli(*args: str) -> CliResult:
    """The command in this process, on one thread as ``OMP_NUM_THREADS=1`` would run it (its workers, when it
    starts some, are processes of their own)."""
    return inprocess_cli.run_cli(*args, env={"OMP_NUM_THREADS": "1"}, torch_threads=1)


def run_cli_subprocess(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m nasforge ARGS`` in a new process: NNI's import-time logging set-up stays out of the tests."""
    return subprocess.run([sys.executable, "-m", "nasforge", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


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
                  "--sampler", "random", "--resume", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    printed = json.loads(res.stdout)  # --json: the results on stdout, nothing else
    assert printed["out"] == str(out) and printed["complete"] >= 13 and printed["front"]
    study = optuna.load_study(study_name="nasforge", storage=resolve_storage(out / "study.journal"))
    assert len([t for t in study.get_trials() if t.state == TrialState.COMPLETE]) == max(13, len(complete))


def _trials(journal: Path) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name="nasforge", storage=resolve_storage(journal)).get_trials()
    except KeyError:  # the workers have not created the study yet
        return []


def _kill_mid_trial(journal: Path, deadline: float) -> tuple[int, int]:
    """SIGKILL the local worker of a RUNNING trial while it evaluates: ``(trial number, pid)``. The worker is
    stopped first and killed only if its trial is still running with all its parameters (``arch`` is set) and
    nobody holds the journal's lock (a worker killed while holding it would make the others wait out Optuna's
    30 s lock grace)."""
    host = socket.gethostname() + ":"
    while time.monotonic() < deadline:
        for t in _trials(journal):
            owner = str(t.user_attrs.get(WORKER_ATTR, ""))
            if t.state != TrialState.RUNNING or not owner.startswith(host):
                continue
            pid = int(owner[len(host):])
            os.kill(pid, signal.SIGSTOP)
            now = {u.number: u for u in _trials(journal)}[t.number]
            if now.state == TrialState.RUNNING and "arch" in now.user_attrs and not os.path.lexists(f"{journal}.lock"):
                os.kill(pid, signal.SIGKILL)
                return t.number, pid
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.02)
    raise AssertionError("no worker was seen running a trial")


def test_sigkilled_worker_does_not_hang_the_search(checkpoint: Path, tmp_path: Path) -> None:
    """Issue 17: a worker SIGKILLed mid-trial left the parent waiting forever. Now its trial fails at once, is
    retried, and the parent writes the results and exits 0."""
    out = tmp_path / "kill"
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "nasforge", "search", str(checkpoint), "--data", "digits", "--out",
                             str(out), "--trials", "6", "--workers", "2", "--sampler", "random"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        killed, pid = _kill_mid_trial(out / "study.journal", start + 60)
        stdout, stderr = proc.communicate(timeout=60)  # the hang this test is about fails here
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr[-3000:]
    assert f"(pid {pid}) died (killed by SIGKILL); its trial {killed} failed and queued for a retry" in stderr
    trials = {t.number: t for t in _trials(out / "study.journal")}
    assert trials[killed].state == TrialState.FAIL and "worker died" in trials[killed].user_attrs["error"]
    retry = [t for t in trials.values() if t.user_attrs.get(RETRY_ATTR) == killed]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == trials[killed].params
    complete = [t for t in trials.values() if t.state == TrialState.COMPLETE]
    assert 6 <= len(complete) <= 7  # the budget: the killed trial does not count, two may start the last one
    assert not [t for t in trials.values() if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert json.loads((out / "pareto.json").read_text())["complete"] == len(complete)
    for name in ("pareto.csv", "trials.csv", "search.json"):
        assert (out / name).stat().st_size > 0, name
    assert "front of" in stdout


def test_worker_error_is_one_line(checkpoint: Path, tmp_path: Path) -> None:
    """A worker that fails (here: an unknown dataset, which only the workers load) ends the search with one line."""
    res = run_cli("search", str(checkpoint), "--data", "nosuch-dataset", "--out", str(tmp_path / "w"), "--trials",
                  "4", "--workers", "2", "--sampler", "random")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert res.stderr.strip().splitlines()[-1] == ("nasforge: error: unknown dataset 'nosuch-dataset'; known: "
                                                   "cifar10, digits, folder, imagenet, shapes, shards")


def test_resume_without_a_search_is_one_line(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "new"
    res = run_cli("search", str(checkpoint), "--data", "digits", "--out", str(out), "--trials", "4", "--resume")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip() == (f"nasforge: error: nothing to resume in {out} (no search_job.json); start it "
                                  "without --resume")
    assert not out.exists()  # nothing written


def test_search_that_gave_up_writes_results_then_one_line(tmp_path: Path) -> None:
    from nasforge.nas import SearchWorkerError, SupervisorReport, run_search
    from nasforge.search import SearchJob, _finish
    from nasforge.supernets.arch import Dimension, SearchSpace

    out = tmp_path / "gave-up"
    job = SearchJob.for_cli(checkpoint="unused.pt", data="digits", out=str(out), trials=6, sampler="random")
    space = SearchSpace("toy", (Dimension("w", (1, 2, 3, 4), 3),))
    with pytest.raises(SearchWorkerError, match="nothing to write"):  # no worker created the study
        _finish(job, out, SupervisorReport(gave_up="a search worker kept dying: 3 deaths"))
    run_search(space, lambda a: {"accuracy": sum(a["w"]) / 12, "macs": float(sum(a["w"]))}, n_trials=3,
               sampler="random", storage=job.storage_url)
    why = "a search worker kept dying: 3 deaths, ...; stopped with 3 of 6 trials finished"
    with pytest.raises(SearchWorkerError) as err:
        _finish(job, out, SupervisorReport(gave_up=why, finished=3))
    assert str(err.value) == f"{why}; results so far in {out}; fix the cause and continue with --resume"
    assert json.loads((out / "pareto.json").read_text())["complete"] == 3 and (out / "trials.csv").is_file()


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
    res = run_cli_subprocess(*args, "--workers", "2")
    assert res.returncode == 2 and "one sequential worker" in res.stderr and "Traceback" not in res.stderr
    res = run_cli_subprocess(*args, "--trials", "5")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "front of" in res.stdout and (out / "nni-experiments").is_dir()
    res = run_cli_subprocess(*args, "--trials", "7", "--resume")
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
