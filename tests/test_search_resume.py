"""`nasforge search --resume` continues the recorded search: its settings come from search_job.json."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

import nasforge.search
from nasforge.cli import main
from nasforge.io import atomic_write_json
from nasforge.search import SearchJob, resumed_job


@pytest.fixture
def recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, list[tuple[SearchJob, int]]]:
    """A search folder recorded with nsga2 and a constraint; ``run_search_job`` records the job it is given."""
    checkpoint = tmp_path / "supernet.pt"
    checkpoint.write_bytes(b"")
    out = tmp_path / "search"
    out.mkdir()
    job = SearchJob(checkpoint=str(checkpoint), data="digits", out=str(out), sampler="nsga2",
                    constraints=("macs<=5e6",), trials=6, seed=3)
    atomic_write_json(out / "search_job.json", {**asdict(job), "workers": 2})
    used: list[tuple[SearchJob, int]] = []

    def fake_run(job: SearchJob, *, workers: int = 1, resume: bool = False, log: Any = print) -> Any:
        used.append((job, workers))
        raise nasforge.search.ConfigError("stop here")  # nothing to search in this test

    monkeypatch.setattr(nasforge.search, "run_search_job", fake_run)
    return checkpoint, out, used


def test_resume_keeps_the_recorded_settings(recorded: tuple[Path, Path, list[Any]],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint, out, used = recorded
    assert main(["search", str(checkpoint), "--out", str(out), "--resume", "--trials", "9", "--workers", "1"]) == 2
    job, workers = used[-1]
    assert (job.sampler, job.constraints, job.seed, job.trials, workers) == ("nsga2", ("macs<=5e6",), 3, 9, 1)
    assert "resuming the search" in capsys.readouterr().err
    # repeating the recorded settings is fine too
    main(["search", str(checkpoint), "--out", str(out), "--resume", "--sampler", "nsga2", "--constraint",
          "macs<=5e6", "--data", "digits"])
    assert used[-1][0].trials == 6


@pytest.mark.parametrize(("args", "needle"), [
    (["--sampler", "tpe"], "--sampler ('nsga2' recorded, 'tpe' given)"),
    (["--constraint", "macs<=1e6"], "--constraints ('macs<=5e6' recorded, 'macs<=1e6' given)"),
    (["--objectives", "accuracy,params"], "--objectives"),
    (["--seed", "0"], "--seed (3 recorded, 0 given)"),
    (["--data", "shapes"], "--data ('digits' recorded, 'shapes' given)"),
])
def test_resume_refuses_a_differing_setting(recorded: tuple[Path, Path, list[Any]], args: list[str], needle: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint, out, used = recorded
    assert main(["search", str(checkpoint), "--out", str(out), "--resume", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "only --trials and --workers may change" in err, err
    assert used == []


def test_resume_needs_the_database_password_again(tmp_path: Path) -> None:
    out = tmp_path / "s"
    out.mkdir()
    job = SearchJob(checkpoint="c.pt", data="digits", out=str(out), storage="postgresql://u:***@localhost/db")
    atomic_write_json(out / "search_job.json", asdict(job))
    with pytest.raises(nasforge.search.ConfigError, match="pass --storage URL again"):
        resumed_job(out, {})
    assert resumed_job(out, {"storage": "postgresql://u:secret@localhost/db"}).storage.endswith(":secret@localhost/db")
    with pytest.raises(nasforge.search.ConfigError, match="--storage"):
        resumed_job(out, {"storage": "postgresql://u:secret@otherhost/db"})


@pytest.mark.parametrize(("args", "needle"), [
    (["--constraint", "banana<=5"], "'banana', which the search does not measure"),
    (["--sampler", "nsga4"], "unknown sampler 'nsga4'"),
    (["--objectives", "accuracy,bananas:max"], "objective 'bananas'"),
])
def test_bad_search_settings_fail_before_any_work(tmp_path: Path, args: list[str], needle: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = tmp_path / "supernet.pt"
    checkpoint.write_bytes(b"")  # never read: the settings are checked first
    assert main(["search", str(checkpoint), "--data", "digits", "--out", str(tmp_path / "s"), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "s").exists()


def test_resume_reads_a_record_of_an_older_nasforge(tmp_path: Path) -> None:
    """A search_job.json written before the job shared the run config's search section (no latency_warmup,
    the old key order) resumes with the recorded settings and the defaults of the options it lacks."""
    out = tmp_path / "old"
    out.mkdir()
    atomic_write_json(out / "search_job.json", {
        "checkpoint": "c.pt", "data": "digits", "out": str(out), "objectives": ["accuracy", "macs"],
        "constraints": ["macs<=5e6"], "sampler": "nsga2", "trials": 6, "storage": None, "study": "nasforge",
        "seed": 3, "calib_images": 200, "image_size": None, "latency_runs": 50, "heartbeat": 10.0,
        "latency_table": None, "accept_latency_error": False, "extra": {}, "workers": 2})
    job = resumed_job(out, {"trials": 9})
    assert (job.objectives, job.constraints, job.sampler, job.trials, job.seed, job.calib_images) == (
        ("accuracy", "macs"), ("macs<=5e6",), "nsga2", 9, 3, 200)
    assert job.latency_warmup == 10 and job.storage_url == str(out / "study.journal")
