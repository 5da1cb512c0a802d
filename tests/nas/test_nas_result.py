"""SearchResult files and the Pareto plot."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from nasforge.errors import ConfigError
from nasforge.nas import SearchResult, plot_pareto, run_search
from nasforge.supernets.arch import Architecture, SearchSpace

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def result(toy_space: SearchSpace, metrics_fn) -> SearchResult:
    def flaky(arch: Architecture) -> dict[str, float]:
        if arch["e"][0] == 3:
            raise RuntimeError("diverged")
        return metrics_fn(arch)

    return run_search(toy_space, flaky, constraints=["macs<=6e7"], n_trials=16, sampler="random", seed=2)


def test_to_json_round_trip(tmp_path: Path, result: SearchResult) -> None:
    assert {t.state for t in result.trials} == {"complete", "fail"}
    path = result.to_json(tmp_path / "out" / "search.json")
    data = json.loads(path.read_text())
    assert data["objectives"] == [{"name": "accuracy", "direction": "maximize"}, {"name": "macs", "direction": "minimize"}]
    assert data["constraints"] == ["macs<=60000000"]
    assert len(data["trials"]) == 16
    back = SearchResult.from_json(path)
    assert back == result
    assert back.front[0].arch == result.front[0].arch
    assert not list(path.parent.glob(".*.tmp")), "temporary file left behind"


def test_from_json_rejects_other_files(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not a nasforge search result"):
        SearchResult.from_json(tmp_path / "x.json")


def test_to_csv(tmp_path: Path, result: SearchResult) -> None:
    path = result.to_csv(tmp_path / "trials.csv")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["number", "state", "feasible", "accuracy", "macs", "params", "error", "duplicate_of", "arch"]
    assert [int(r["number"]) for r in rows] == list(range(16))
    for row, trial in zip(rows, result.trials, strict=True):
        assert row["state"] == trial.state and row["feasible"] == str(trial.feasible)
        assert Architecture.from_json(row["arch"]) == trial.arch
        if trial.state == "complete":
            assert math.isclose(float(row["macs"]), trial.metrics["macs"]) and row["error"] == ""
        else:
            assert row["macs"] == "" and row["error"] == "evaluator raised RuntimeError: diverged"


def test_to_row_is_flat(result: SearchResult) -> None:
    row = result.front[0].to_row()
    assert set(row) == {"number", "state", "feasible", "accuracy", "macs", "params", "error", "duplicate_of", "arch"}
    assert json.loads(row["arch"]) == result.front[0].arch.to_dict()


def test_plot_pareto_writes_png(tmp_path: Path, result: SearchResult) -> None:
    path = plot_pareto(
        [t.metrics for t in result.trials],
        [m.metrics for m in result.front],
        "macs",
        "accuracy",
        tmp_path / "plots" / "front.png",
        title="toy",
        xlabel="MACs",
        annotate=[f"#{m.number}" for m in result.front],
    )
    data = path.read_bytes()
    assert path == tmp_path / "plots" / "front.png"
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (640, 480)


def test_plot_pareto_checks_inputs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="2 labels for 1 front points"):
        plot_pareto([], [{"x": 1, "y": 2}], "x", "y", tmp_path / "a.png", annotate=["a", "b"])
    with pytest.raises(ConfigError, match="front point 0 has no 'y'"):
        plot_pareto([], [{"x": 1}], "x", "y", tmp_path / "a.png")
    assert not (tmp_path / "a.png").exists()
