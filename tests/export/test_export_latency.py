"""Latency profilers: real onnxruntime / PyTorch timings, the measurement protocol, the registry."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from nasforge.errors import ConfigError, ExportError, NasforgeError
from nasforge.export import (
    LatencyResult,
    Profiler,
    _latency,
    environment_fingerprint,
    get_profiler,
    list_profilers,
    measure_latency,
    register_profiler,
    timed_runs,
)

FAST = {"runs": 30, "warmup": 5}


def _assert_valid_stats(result: LatencyResult) -> None:
    for value in (result.median_ms, result.p90_ms, result.p99_ms, result.min_ms, result.mean_ms):
        assert value > 0
    assert result.min_ms <= result.median_ms <= result.p90_ms <= result.p99_ms
    assert result.min_ms <= result.mean_ms
    assert result.cv >= 0
    assert result.runs == 30 and result.warmup == 5


def test_ort_cpu_measures_an_onnx_file(static_onnx: Path) -> None:
    result = measure_latency(static_onnx, backend="ort-cpu", threads=1, **FAST)
    _assert_valid_stats(result)
    assert result.backend == "ort-cpu" and result.batch == 1 and result.threads == 1
    fingerprint = result.fingerprint
    assert fingerprint["threads"] == 1
    assert isinstance(fingerprint["cpu"]["model"], str) and fingerprint["cpu"]["model"]
    assert all(isinstance(flag, str) for flag in fingerprint["cpu"]["flags"])
    versions = fingerprint["versions"]
    assert versions["torch"] == torch.__version__ and versions["numpy"] == np.__version__
    assert versions["onnxruntime"] and versions["onnx"]
    assert json.loads(json.dumps(result.to_dict()))["fingerprint"] == fingerprint


def test_ort_cpu_batch_on_dynamic_model(dynamic_onnx: Path) -> None:
    result = measure_latency(dynamic_onnx, batch=4, **FAST)
    _assert_valid_stats(result)
    assert result.batch == 4


def test_ort_cpu_fixed_batch_mismatch_explains_the_fix(static_onnx: Path) -> None:
    with pytest.raises(ExportError, match=r"fixed batch size of 1 but batch=4.*dynamic_batch=True"):
        measure_latency(static_onnx, batch=4, **FAST)


def test_ort_cpu_rejects_a_wrong_input_shape(static_onnx: Path) -> None:
    with pytest.raises(ConfigError, match="does not fit"):
        measure_latency(static_onnx, input_shape=(3, 8, 8), **FAST)


@pytest.mark.parametrize("content", [None, b"definitely not onnx"])
def test_ort_cpu_missing_or_invalid_file(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "m.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ExportError) as info:
        measure_latency(path, **FAST)
    assert type(info.value) is ExportError and "\n" not in str(info.value)


def test_torch_cpu_measures_a_module(make_net, input_shape) -> None:
    model = make_net()  # train mode
    threads_before = torch.get_num_threads()
    result = measure_latency(model, backend="torch-cpu", input_shape=input_shape, batch=2, threads=1, **FAST)
    _assert_valid_stats(result)
    assert result.backend == "torch-cpu" and result.batch == 2 and result.fingerprint["threads"] == 1
    assert torch.get_num_threads() == threads_before
    assert all(module.training for module in model.modules())


def test_torch_cpu_needs_input_shape(make_net) -> None:
    with pytest.raises(ConfigError, match="needs input_shape"):
        measure_latency(make_net(), backend="torch-cpu", **FAST)


@pytest.mark.parametrize("max_remeasure", [0, 2])
def test_remeasures_while_cv_too_high(dynamic_onnx: Path, max_remeasure: int) -> None:
    result = measure_latency(dynamic_onnx, max_cv=0.0, max_remeasure=max_remeasure, runs=10, warmup=1)
    assert result.cv > 0.0
    assert result.remeasured == max_remeasure


def test_no_remeasure_when_cv_is_acceptable(dynamic_onnx: Path) -> None:
    result = measure_latency(dynamic_onnx, max_cv=1e9, runs=10, warmup=1)
    assert result.remeasured == 0


def test_timed_runs_keeps_the_round_with_lowest_cv(monkeypatch: pytest.MonkeyPatch) -> None:
    durations = iter([5, 15, 5, 15] + [9, 11, 9, 11] + [1, 19, 1, 19])  # cv 0.5, 0.1, 0.9
    clock = {"now": 0}

    def perf_counter_ns() -> int:
        return clock["now"]

    def run_once() -> None:
        clock["now"] += next(durations)

    monkeypatch.setattr(_latency, "time", types.SimpleNamespace(perf_counter_ns=perf_counter_ns))
    samples, remeasured = timed_runs(run_once, runs=4, warmup=0, max_cv=0.05, max_remeasure=2)
    assert remeasured == 2
    assert samples.tolist() == [9, 11, 9, 11]


def test_latency_result_statistics() -> None:
    samples_ns = np.array([1, 2, 3, 4, 100], dtype=np.int64) * 1_000_000
    result = LatencyResult.from_samples(
        "x", samples_ns, batch=1, warmup=0, remeasured=0, threads=1, fingerprint={}
    )
    assert result.runs == 5 and result.min_ms == 1.0 and result.median_ms == 3.0 and result.mean_ms == 22.0
    assert result.p90_ms == pytest.approx(61.6) and result.p99_ms == pytest.approx(96.16)
    assert result.cv == pytest.approx(np.std([1, 2, 3, 4, 100]) / 22.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"runs": 0}, "runs=0"),
        ({"warmup": -1}, "warmup=-1"),
        ({"batch": 0}, "batch=0"),
        ({"threads": 0}, "threads=0"),
        ({"max_cv": -0.1}, "max_cv=-0.1"),
        ({"max_remeasure": -1}, "max_remeasure=-1"),
    ],
)
@pytest.mark.parametrize("backend", ["ort-cpu", "torch-cpu"])
def test_invalid_settings_raise_value_errors(static_onnx, make_net, backend, kwargs, match) -> None:
    model = static_onnx if backend == "ort-cpu" else make_net()
    with pytest.raises(ConfigError, match=match) as info:
        measure_latency(model, backend=backend, input_shape=(3, 16, 16), **kwargs)
    assert isinstance(info.value, ValueError) and isinstance(info.value, NasforgeError)


def test_registry_lists_the_builtins() -> None:
    assert {"ort-cpu", "torch-cpu"} <= set(list_profilers())
    assert list_profilers() == sorted(list_profilers())


def test_duplicate_registration_raises() -> None:
    before = list_profilers()
    with pytest.raises(ConfigError, match="'ort-cpu' is already registered"):

        @register_profiler("ort-cpu")
        class Again(Profiler):
            def measure(self, model, **kwargs):  # pragma: no cover - never called
                raise NotImplementedError

    assert list_profilers() == before
    assert type(get_profiler("ort-cpu")).__name__ == "OrtCpuProfiler"


def test_unknown_backend_lists_known_ones(static_onnx: Path) -> None:
    with pytest.raises(NasforgeError) as info:
        measure_latency(static_onnx, backend="tensorrt-99")
    message = str(info.value)
    assert "'tensorrt-99'" in message and "ort-cpu" in message and "torch-cpu" in message


def test_environment_fingerprint_shape() -> None:
    fingerprint = environment_fingerprint(threads=3)
    assert fingerprint["threads"] == 3
    assert set(fingerprint) >= {"cpu", "machine", "os", "python", "versions"}
    assert set(fingerprint["versions"]) == {"numpy", "torch", "onnxruntime", "onnx"}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file() and "avx2" in cpuinfo.read_text().split():
        assert "avx2" in fingerprint["cpu"]["flags"]
