"""Contract of the latency-backend plug-in family: every registered profiler (:func:`list_profilers`).

Each one is constructible without options; :meth:`Profiler.measure` refuses bad settings and a model of the
wrong kind with a :class:`ConfigError` before doing any work; and, where the backend runs on this machine,
it measures: ``ort-cpu`` a tiny ONNX file, ``torch-cpu`` a tiny ``nn.Module``, ``remote`` the ONNX file through
a real agent on 127.0.0.1. A GPU backend on a machine without CUDA / onnxruntime-gpu / TensorRT must stop with
a one-line ConfigError or MissingDependencyError naming what is missing; the test then skips with that reason.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from nasforge.errors import ConfigError, MissingDependencyError
from nasforge.export import (
    AgentConfig,
    LatencyResult,
    ModelKind,
    Profiler,
    get_profiler,
    list_profilers,
    make_server,
)

TOKEN = "contract-token-0123456789abcdef"
FAST = {"runs": 15, "warmup": 2, "max_remeasure": 0}
BAD_SETTINGS = [
    ({"runs": 0}, "runs=0"),
    ({"batch": 0}, "batch=0"),
    ({"max_cv": -1}, "max_cv=-1"),
    ({"warmup": -1}, "warmup=-1"),
    ({"threads": 0}, "threads=0"),
    ({"max_remeasure": -1}, "max_remeasure=-1"),
    ({"runs": True}, "runs=True"),
]


def _tiny_onnx(path: Path) -> Path:
    """Y = X @ W + B with X of shape (1, 8)."""
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), "W")
    bias = numpy_helper.from_array(np.zeros(4, np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["H"]), helper.make_node("Add", ["H", "B"], ["Y"])],
        "tiny",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 4])],
        [weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_onnx(tmp_path_factory.mktemp("profilers") / "tiny.onnx")


@pytest.fixture(scope="module")
def agent_options() -> Iterator[dict[str, Any]]:
    """A real agent serving in a thread on 127.0.0.1 (free port); yields the remote backend's options."""
    server = make_server(AgentConfig(token=TOKEN, port=0), log=lambda line: None)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield {"url": f"http://127.0.0.1:{server.port}", "token": TOKEN}
    finally:
        server.shutdown()
        server.server_close()


def _model_for(profiler: Profiler, tiny_onnx: Path) -> tuple[Any, dict[str, Any]]:
    """A model of the kind ``profiler`` measures and the ``measure`` arguments it needs."""
    if profiler.model_kind is ModelKind.MODULE:
        torch.manual_seed(0)
        return torch.nn.Linear(8, 4), {"input_shape": (8,)}
    return tiny_onnx, {}


def _wrong_models(profiler: Profiler, tiny_onnx: Path) -> list[Any]:
    """Models ``profiler`` must refuse by kind."""
    other = tiny_onnx if profiler.model_kind is ModelKind.MODULE else torch.nn.Linear(8, 4)
    return [object(), 3.5, other]


def _no_work(profiler: Profiler) -> Profiler:
    """``profiler`` with its work (the hook after the checks) replaced by a failure."""

    def boom(*args: Any, **kwargs: Any) -> LatencyResult:
        raise AssertionError(f"{profiler.name} started measuring before refusing its arguments")

    profiler._measure_checked = boom  # type: ignore[method-assign]
    return profiler


@pytest.mark.parametrize("name", list_profilers())
def test_constructible_without_options(name: str) -> None:
    profiler = get_profiler(name)
    assert isinstance(profiler, Profiler) and profiler.name == name
    assert profiler.model_kind is not None, f"{name} declares no model_kind"
    assert profiler.model_hint, f"{name} declares no model_hint for the wrong-kind message"


@pytest.mark.parametrize(("bad", "match"), BAD_SETTINGS)
@pytest.mark.parametrize("name", list_profilers())
def test_bad_settings_are_refused_before_any_work(
    name: str, bad: dict[str, Any], match: str, tiny_onnx: Path
) -> None:
    profiler = _no_work(get_profiler(name))
    model, kwargs = _model_for(profiler, tiny_onnx)
    with pytest.raises(ConfigError, match=match) as info:
        profiler.measure(model, **{**kwargs, **FAST, **bad})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", list_profilers())
def test_bad_input_shape_is_refused_before_any_work(name: str, tiny_onnx: Path) -> None:
    profiler = _no_work(get_profiler(name))
    model, _ = _model_for(profiler, tiny_onnx)
    with pytest.raises(ConfigError, match="input_shape"):
        profiler.measure(model, input_shape=(0, -1), **FAST)


@pytest.mark.parametrize("name", list_profilers())
def test_wrong_model_kind_is_refused_before_any_work(name: str, tiny_onnx: Path) -> None:
    profiler = _no_work(get_profiler(name))
    _, kwargs = _model_for(profiler, tiny_onnx)
    for model in _wrong_models(profiler, tiny_onnx):
        with pytest.raises(ConfigError, match=rf"measures .*got {type(model).__name__}; ") as info:
            profiler.measure(model, **kwargs, **FAST)
        message = str(info.value)
        assert profiler.model_hint in message and "\n" not in message


@pytest.mark.parametrize("name", list_profilers())
def test_measures_where_the_backend_runs(
    name: str, tiny_onnx: Path, request: pytest.FixtureRequest
) -> None:
    options = request.getfixturevalue("agent_options") if name == "remote" else {}
    profiler = get_profiler(name, **options)
    model, kwargs = _model_for(profiler, tiny_onnx)
    try:
        result = profiler.measure(model, **kwargs, **FAST)
    except (ConfigError, MissingDependencyError) as err:  # a GPU backend without its GPU or libraries
        message = str(err)
        assert name not in ("ort-cpu", "torch-cpu", "remote"), message
        assert f"{name} needs" in message or "not installed" in message, message
        assert "\n" not in message and ("install" in message or "backend=" in message), message
        pytest.skip(f"{name} cannot run here: {message}")
    measured_by = "ort-cpu" if name == "remote" else name  # the agent reports the board's backend
    assert isinstance(result, LatencyResult) and result.backend == measured_by
    assert result.runs == FAST["runs"] and result.batch == 1 and result.warmup == FAST["warmup"]
    assert result.median_ms > 0 and 0 < result.min_ms <= result.median_ms <= result.p99_ms
    assert result.cv >= 0 and result.remeasured == 0
    assert isinstance(result.fingerprint, dict) and result.fingerprint.get("threads") == 1
    assert result.fingerprint.get("cpu"), "the fingerprint describes the machine that measured"
