"""Latency a person can trust on a busy machine: noisy search-time latencies are re-measured until their CV is
within the protocol's bound (0.1) or flagged as unstable in trials.csv, pareto.csv/pareto.json and the terminal
table; ``nasforge run``'s pareto.png draws one measurement per architecture (the export re-measure apart), and
report.md states every exported subnet's CV, flags unstable ones and keeps each paragraph on one line."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from nasforge.config import RunConfig
from nasforge.data import DataSplits, load_data
from nasforge.errors import ConfigError
from nasforge.export import LatencyResult, Profiler, _latency, environment_fingerprint, timed_runs
from nasforge.nas import SearchResult, TrialRecord, parse_objective
from nasforge.nas._plot import PlotSeries, plot_pareto
from nasforge.pipeline import RunSummary
from nasforge.report import MAX_CV, pareto_plot_data, summary_rows, write_report
from nasforge.search import SearchJob, make_subnet_evaluator, summary_table, write_results
from nasforge.supernets import Architecture, Supernet, create_supernet

# a tiny mbv3-small (as in test_search_cli.py)
OPTIONS = {"num_classes": 10, "in_channels": 1, "stem_width": 8, "first_block_width": 8,
           "stages": [[16, 2, "relu", False], [24, 2, "hswish", True]], "kernel_sizes": [3, 5],
           "expand_ratios": [2, 4], "depths": [1, 2], "resolutions": [12, 16], "final_expand_width": 48,
           "feature_width": 64}


class ScriptedProfiler(Profiler):
    """A latency backend whose per-run timings are scripted: the first ``noisy_rounds`` rounds alternate 0.1 ms
    and 2 ms (CV about 0.9, a busy machine), later rounds are a steady 0.1 ms. It follows the real protocol
    (:func:`timed_runs`, self-timed) and records the settings it was called with."""

    noisy_rounds: ClassVar[int] = 0
    calls: ClassVar[list[dict[str, Any]]] = []

    def measure(self, model: Any, *, input_shape: Sequence[int] | None = None, batch: int = 1, runs: int = 200,
                warmup: int = 20, threads: int = 1, max_cv: float = 0.1, max_remeasure: int = 2) -> LatencyResult:
        timings = self._timings(runs)
        samples, remeasured = timed_runs(lambda: next(timings), runs=runs, warmup=0, max_cv=max_cv,
                                         max_remeasure=max_remeasure, self_timed=True)
        self.calls.append({"max_cv": max_cv, "max_remeasure": max_remeasure, "remeasured": remeasured})
        return LatencyResult.from_samples(self.name, samples, batch=batch, warmup=warmup, remeasured=remeasured,
                                          threads=threads, fingerprint=environment_fingerprint(threads))

    def _timings(self, runs: int) -> Iterator[float]:
        i = 0
        while True:
            noisy = i // runs < self.noisy_rounds
            yield (2e6 if i % 2 else 1e5) if noisy else 1e5
            i += 1


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> type[ScriptedProfiler]:
    """:class:`ScriptedProfiler` registered as ``scripted`` in a copy of the profiler registry."""
    monkeypatch.setattr(_latency, "_PROFILERS", _latency._PROFILERS.copy())
    monkeypatch.setattr(ScriptedProfiler, "calls", [])
    return _latency.register_profiler("scripted")(ScriptedProfiler)


@pytest.fixture(scope="module")
def tiny() -> tuple[Supernet, DataSplits]:
    torch.manual_seed(0)
    return create_supernet("mbv3-small", **OPTIONS), load_data("digits", image_size=16, seed=0)


def _evaluate(tiny: tuple[Supernet, DataSplits], tmp_path: Path) -> dict[str, float]:
    net, data = tiny
    evaluate = make_subnet_evaluator(net, data, calib_images=32, latency=True, latency_runs=10, latency_warmup=0,
                                     scratch=tmp_path, backend="scripted")
    return evaluate(net.space.smallest())


def test_noisy_search_latency_is_remeasured_until_stable(scripted: type[ScriptedProfiler], tiny: Any,
                                                         tmp_path: Path) -> None:
    scripted.noisy_rounds = 2  # two busy rounds, then a steady one: needs 2 re-measures
    metrics = _evaluate(tiny, tmp_path)
    assert scripted.calls == [{"max_cv": 0.1, "max_remeasure": 3, "remeasured": 2}]
    assert metrics["latency_ms"] == pytest.approx(0.1)
    assert metrics["latency_cv"] <= 0.1 and metrics["latency_unstable"] == 0.0


def test_latency_still_noisy_after_the_cap_is_flagged(scripted: type[ScriptedProfiler], tiny: Any,
                                                      tmp_path: Path) -> None:
    scripted.noisy_rounds = 99
    metrics = _evaluate(tiny, tmp_path)
    assert scripted.calls[0]["remeasured"] == 3  # 4 rounds in all, then it gives up
    assert metrics["latency_cv"] > 0.5 and metrics["latency_unstable"] == 1.0


# -- nasforge search: trials.csv, pareto.csv / pareto.json and the terminal table ------------------------------
def _arch(i: int) -> Architecture:
    return Architecture.from_dict({"depth": i})


def _trial(number: int, acc: float, ms: float, cv: float | None) -> TrialRecord:
    metrics = {"accuracy": acc, "latency_ms": ms}
    if cv is not None:
        metrics.update(latency_cv=cv, latency_unstable=float(cv > 0.1))
    return TrialRecord(number, _arch(number), metrics, "complete", True)


def _result(trials: list[TrialRecord], front: list[int]) -> SearchResult:
    objectives = (parse_objective("accuracy"), parse_objective("latency_ms"))
    return SearchResult(objectives, (), trials, [trials[i] for i in front], "nasforge", "memory")


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_search_outputs_show_cv_and_flag_unstable_latency(tmp_path: Path) -> None:
    trials = [_trial(0, 0.9, 0.2, 0.03), _trial(1, 0.8, 0.1, 1.5), _trial(2, 0.7, 0.3, 0.05)]
    summary = write_results(_result(trials, [1, 0]), tmp_path, SearchJob("ckpt", "digits", str(tmp_path)))
    assert {"latency_cv", "latency_unstable"} <= set(_csv_rows(tmp_path / "trials.csv")[0])
    front = _csv_rows(tmp_path / "pareto.csv")
    assert [(r["trial"], r["latency_cv"], r["unstable"]) for r in front] == [("1", "1.5", "True"),
                                                                            ("0", "0.03", "False")]
    assert [r["unstable"] for r in json.loads((tmp_path / "pareto.json").read_text())["front"]] == [True, False]
    lines = summary_table(summary).splitlines()
    assert "latency_cv" in lines[1]
    assert lines[2].endswith("! unstable") and "unstable" not in lines[3]
    assert lines[-1].startswith("1 of 2 front latencies are unstable (CV > 0.1")


def test_search_without_measured_latency_has_no_stability_columns(tmp_path: Path) -> None:
    trials = [_trial(0, 0.9, 0.2, None), _trial(1, 0.8, 0.1, None)]
    summary = write_results(_result(trials, [1, 0]), tmp_path, SearchJob("ckpt", "digits", str(tmp_path)))
    assert list(_csv_rows(tmp_path / "pareto.csv")[0]) == ["trial", "accuracy", "latency_ms", "arch"]
    assert "unstable" not in summary_table(summary)


# -- nasforge run: pareto.png data, pareto.csv and report.md ---------------------------------------------------
def _subnet(k: int, trial: int, acc: float, ms: float, cv: float, on_front: bool) -> dict[str, Any]:
    lat = {"median_ms": ms, "p90_ms": ms * 1.2, "cv": cv, "runs": 200, "remeasured": 2}
    return {"subnet": k, "trial": trial, "arch": {"depth": trial}, "resolution": 16, "val_acc": acc,
            "test_acc": acc - 0.01, "macs": 1000 * (k + 1), "params": 100 * (k + 1), "max_abs_diff": 1e-6,
            "latency_ms": lat, "on_front": on_front}


@pytest.fixture
def run_summary(tmp_path: Path) -> RunSummary:
    # search-time: trial 0 is slow and accurate, trial 1 fast, trial 2 dominated, trial 3 a duplicate of 1
    trials = [_trial(0, 0.9, 0.3, 0.02), _trial(1, 0.8, 0.076, 0.04), _trial(2, 0.7, 0.4, 0.01),
              TrialRecord(3, _arch(1), {"accuracy": 0.8, "latency_ms": 0.076}, "complete", True, duplicate_of=1)]
    # export-time: the same architectures measured again, one of them on a busy machine (CV 1.5)
    subnets = [_subnet(0, 1, 0.8, 0.173, 1.5, True), _subnet(1, 0, 0.9, 0.31, 0.03, True)]
    return RunSummary(tmp_path, subnets, [], _result(trials, [1, 0]), {"export_s": 1.0})


def test_plot_front_uses_one_measurement_per_architecture(run_summary: RunSummary) -> None:
    data = pareto_plot_data(run_summary)
    assert data.source == "search"
    assert sorted(p["latency_ms"] for p in data.trials) == [0.076, 0.3, 0.4]  # search-time only, no duplicate
    assert sorted((p["latency_ms"], p["accuracy"]) for p in data.front) == [(0.076, 0.8), (0.3, 0.9)]
    assert dict(zip(data.front_labels, [p["latency_ms"] for p in data.front], strict=True)) == {"#0": 0.076,
                                                                                                "#1": 0.3}
    # the export re-measure is a separate series, flagged where unstable, never among the trials or the front
    assert [p["latency_ms"] for p in data.remeasured] == [0.173, 0.31]
    assert data.remeasured_labels == ["#0 !", "#1"]
    assert 0.173 not in [p["latency_ms"] for p in data.trials + data.front]


def test_plot_without_search_latency_uses_the_export_measurement(run_summary: RunSummary) -> None:
    for t in run_summary.search.trials:
        t.metrics.pop("latency_ms")
    data = pareto_plot_data(run_summary)
    assert data.source == "export" and not data.remeasured
    assert [p["latency_ms"] for p in data.front] == [0.173, 0.31] and data.front_labels == ["#0 !", "#1"]


def test_extra_series_needs_one_label_per_point(tmp_path: Path) -> None:
    points = [{"latency_ms": 0.1, "accuracy": 0.8}]
    path = plot_pareto(points, points, "latency_ms", "accuracy", tmp_path / "p.png",
                       extra=[PlotSeries(points, "export re-measure (200 runs)", ["#0"])])
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ConfigError, match="one label per point"):
        plot_pareto(points, points, "latency_ms", "accuracy", tmp_path / "q.png",
                    extra=[PlotSeries(points, "export", ["#0", "#1"])])


def test_report_states_every_cv_and_flags_unstable_latency(run_summary: RunSummary, tiny: Any) -> None:
    write_report(RunConfig(), tiny[1], run_summary)
    rows = _csv_rows(run_summary.out / "pareto.csv")
    assert [(r["latency_cv"], r["unstable"], r["search_latency_ms"]) for r in rows] == [("1.5", "True", "0.076"),
                                                                                      ("0.03", "False", "0.3")]
    report = (run_summary.out / "report.md").read_text()
    table = [line for line in report.splitlines() if line.startswith("| ")]
    assert "latency_cv" in table[0] and "stable" in table[0]
    assert "| 1.5 | **UNSTABLE** |" in table[1] and "| 0.03 | yes |" in table[2]
    assert "**Unstable latency:** 1 of 2 exported subnets kept a CV above 0.1" in report
    assert "subnet 0 (CV 1.5)" in report and "hollow markers" in report
    assert summary_rows(run_summary)[1]["unstable"] is False and MAX_CV == 0.1


def test_report_paragraphs_are_not_hard_wrapped(run_summary: RunSummary, tiny: Any) -> None:
    cfg = RunConfig().with_overrides(search__constraints=("macs<=1e9",))
    write_report(cfg, tiny[1], run_summary)
    for line in (run_summary.out / "report.md").read_text().splitlines():
        assert not re.match(r"\s+\S", line), f"continuation line: {line!r}"  # a list item or paragraph goes on
        if not line or line.startswith(("#", "|", "- ", "![")):
            continue
        assert line.endswith((".", ":", "!", "?")), f"paragraph broken mid-sentence: {line!r}"
