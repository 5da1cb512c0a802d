"""Per-device latency tables on a tiny space, the "table" latency predictor, and devices.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nasforge.devices import get_device, load_devices
from nasforge.errors import ConfigError
from nasforge.export import (
    LatencyTable,
    build_latency_table,
    environment_fingerprint,
    get_profiler,
    validate_latency_table,
)
from nasforge.nas import get_latency_predictor
from nasforge.supernets import create_supernet

TINY = {"num_classes": 4, "in_channels": 1, "stem_width": 8, "first_block_width": 8,
        "stages": [[16, 2, "relu", False], [24, 2, "hswish", True]], "kernel_sizes": [3, 5],
        "expand_ratios": [2, 4], "depths": [1, 2], "resolutions": [12, 16], "final_expand_width": 32,
        "feature_width": 32}


@pytest.fixture(scope="module")
def net():  # type: ignore[no-untyped-def]
    return create_supernet("mbv3-small", **TINY).eval()


@pytest.fixture(scope="module")
def table(net, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    built = build_latency_table(net, get_profiler("ort-cpu"), device={"name": "cpu"}, runs=20, warmup=3,
                                calibration=6, holdout=4, extra_samples=2)
    return built.save(tmp_path_factory.mktemp("table") / "table.json")


def test_table_covers_every_segment_of_the_space(net, table: Path) -> None:  # type: ignore[no-untyped-def]
    loaded = LatencyTable.load(table)
    covered = {key for arch in net.covering_architectures() for key, _ in net.latency_segments(arch)}
    assert covered <= set(loaded.entries)
    for i in range(30):  # any subnet is predictable
        arch = net.space.sample(i)
        total, n = loaded.segment_sum(net, arch)
        assert total > 0 and n == len(net.latency_segments(arch))
        assert loaded.predict(net, arch) > 0
    assert {"a", "b", "c", "fit_mape"} <= set(loaded.correction)
    assert loaded.device["name"] == "cpu" and loaded.fingerprint
    # the error on 4 other subnets, measured after the fit, travels with the table
    assert loaded.holdout["n"] == 4 and {"mape", "within_10", "kendall_tau", "max_ape"} <= set(loaded.holdout)
    assert loaded.fingerprint["cpu"]["model"] == environment_fingerprint(1)["cpu"]["model"]


GOOD = {"n": 10.0, "mape": 0.04, "max_ape": 0.09, "within_10": 1.0, "kendall_tau": 0.93, "spearman": 0.98}


def test_a_table_that_cannot_rank_is_refused(table: Path) -> None:
    """The guard search relies on: a held-out error above the limit, no held-out check at all, or a table measured
    on another CPU is refused in one line, or, when the user accepts it, used with a warning."""
    loaded = LatencyTable.load(table)
    here = environment_fingerprint(1)
    loaded.holdout = dict(GOOD)
    assert loaded.trust_problems(here) == []
    loaded.require_trust(here)
    loaded.holdout = {**GOOD, "mape": 0.2, "kendall_tau": 0.36}  # what the tiny space gave on a 2-core EPYC
    with pytest.raises(ConfigError) as err:
        loaded.require_trust(here)
    text = str(err.value)
    assert "MAPE 20.0%" in text and "Kendall tau 0.36" in text and "--accept-latency-error" in text
    assert "\n" not in text
    warned: list[str] = []
    loaded.require_trust(here, accept=True, warn=warned.append)
    assert len(warned) == 1 and "MAPE 20.0%" in warned[0]
    loaded.holdout = {}
    assert "no held-out error" in loaded.trust_problems()[0]
    loaded.holdout = dict(GOOD)
    other = {**here, "cpu": {**here["cpu"], "model": "Raspberry Pi 4 (Cortex-A72)"}}
    loaded.fingerprint = other
    assert "another CPU (Raspberry Pi 4" in " ".join(loaded.trust_problems(here))
    loaded.fingerprint = {**here, "cpu": {**here["cpu"], "flags": [*here["cpu"]["flags"], "avx512_bf16x"]}}
    assert "only there: avx512_bf16x" in " ".join(loaded.trust_problems(here))
    saved = loaded.save(table.parent / "copy.json")  # the held-out record survives a round trip
    assert LatencyTable.load(saved).holdout == GOOD


def test_validation_measures_the_error(net, table: Path) -> None:  # type: ignore[no-untyped-def]
    report = validate_latency_table(LatencyTable.load(table), net, get_profiler("ort-cpu"), samples=6, runs=20,
                                    repeats=2, resolution=12)
    assert report["samples"] == 6 and len(report["rows"]) == 6
    assert all(row["arch"]["r"] == 12 for row in report["rows"])  # one resolution: the harder ranking test
    # two interleaved rounds: their agreement is reported as the floor under any predictor's error
    assert report["repeats"] == 2 and report["repeatability"]["n"] == 6 and report["repeatability"]["mape"] >= 0
    assert 0 <= report["mape"] < 0.5  # corrected sum: within 50% even on a busy 2-core machine
    assert report["mape"] < report["sum_mape"]  # the correction is what makes the sum usable
    assert -1 <= report["kendall_tau"] <= 1


def test_table_predictor_plugs_into_the_registry(net, table: Path) -> None:  # type: ignore[no-untyped-def]
    untrusted = LatencyTable.load(table)
    untrusted.holdout = {**GOOD, "kendall_tau": 0.2}
    with pytest.raises(ConfigError, match="cannot be trusted"):
        get_latency_predictor("table", table=untrusted, net=net)
    predictor = get_latency_predictor("table", table=table, net=net, accept_error=True)
    archs = [net.space.sample(i) for i in range(8)]
    pred = predictor.predict(archs)
    assert pred.shape == (8,) and np.all(pred > 0)
    report = predictor.fit(archs, list(pred * 1.5), holdout=0.4)  # a slower device: the correction follows
    assert report.mape < 0.05
    assert predictor.table.holdout["mape"] < 0.05  # and so does the recorded held-out error
    assert np.allclose(predictor.predict(archs), pred * 1.5, rtol=0.05)


def test_bad_tables_are_one_line_errors(net, table: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="no latency table"):
        LatencyTable.load(tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a readable"):
        LatencyTable.load(tmp_path / "junk.json")
    data = json.loads(table.read_text())
    data["entries"] = {"k": {"ms": "fast"}}
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="damaged"):
        LatencyTable.load(tmp_path / "bad.json")
    other = create_supernet("mbv3-small", **{**TINY, "num_classes": 5})
    with pytest.raises(ConfigError, match="another supernet"):
        LatencyTable.load(table).predict(other, other.space.largest())
    with pytest.raises(ConfigError, match="block decomposition"):
        build_latency_table(create_supernet("sorted-mlp"), get_profiler("ort-cpu"))


def test_devices_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_devices()["cpu"].backend == "ort-cpu"
    (tmp_path / "devices.yaml").write_text(
        "devices:\n  laptop: {backend: ort-cpu, threads: 2, runs: 50}\n"
        "  pi: {backend: remote, url: 'http://127.0.0.1:9', token_file: ~/pi.token, remote_backend: ort-cpu}\n")
    laptop = get_device("laptop")
    assert laptop.measure_options() == {"threads": 2, "runs": 50, "warmup": 20}
    pi = get_device("pi")
    assert pi.options["url"] == "http://127.0.0.1:9" and not pi.options["token_file"].startswith("~")
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        get_device("gpu")
    for text, needle in (("devices:\n  x: {backend: ort-cpu, thread: 2}\n", "unknown key"),
                         ("devices:\n  x: {threads: 2}\n", "needs 'backend'"),
                         ("devices:\n  x: {backend: remote}\n", "needs 'url'"),
                         ("devices:\n  x: {backend: ort-cpu, threads: 0}\n", "threads=0"),
                         ("devices: [1, 2]\n", "must hold a mapping"),
                         ("devices: {x: [\n", "not a readable")):
        (tmp_path / "devices.yaml").write_text(text)
        with pytest.raises(ConfigError, match=needle):
            load_devices()
