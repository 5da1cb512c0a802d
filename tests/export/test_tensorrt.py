"""TensorRT build planning and the GPU profilers.

Most tests run without a GPU: version parsing, the TensorRT 10 / 11 build plan, graph precision detection,
build-config validation, ``build_engine`` against a stand-in ``tensorrt`` module that implements the part of
TensorRT's Python API the build uses, the CUDA-event protocol, and the one-line errors of the GPU backends.
The tests at the end need a CUDA device (and TensorRT / onnxruntime-gpu) and skip, saying why, without one.
"""

from __future__ import annotations

import ast
import importlib
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from nasforge.errors import ConfigError, ExportError, MissingDependencyError, NasforgeError
from nasforge.export import get_profiler, timed_runs
from nasforge.export._gpu_profilers import gpu_fingerprint, gpu_info
from nasforge.export._onnx_io import InputSpec
from nasforge.export._tensorrt import (
    BuildPlan,
    TrtBuildConfig,
    build_engine,
    graph_precision,
    optimization_profile,
    parse_version,
    plan_build,
    require_tensorrt,
    sidecar_path,
    tensorrt_version,
)

HAS_CUDA = torch.cuda.is_available()
HAS_TRT = tensorrt_version() is not None


def _ort_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


HAS_ORT_CUDA = "CUDAExecutionProvider" in _ort_providers()
HAS_ORT_TRT = "TensorrtExecutionProvider" in _ort_providers()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device (torch.cuda.is_available() is False)")
needs_trt = pytest.mark.skipif(
    not HAS_TRT, reason="TensorRT not installed (pip install 'nasforge[tensorrt]')"
)
FAST = {"runs": 30, "warmup": 5}


# ------------------------------------------------------------------------------------------------ ONNX graphs
def _model(
    nodes: list[Any], initializers: list[Any] = (), *, elem: int = TensorProto.FLOAT, batch: Any = "N"
):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", elem, [batch, 4])],
        [helper.make_tensor_value_info("y", elem, [batch, 4])],
        initializer=list(initializers),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10  # onnx 1.23 writes IR 14, which onnxruntime 1.31 rejects
    onnx.checker.check_model(model)
    return model


def plain_model() -> onnx.ModelProto:
    return _model([helper.make_node("Relu", ["x"], ["y"])])


def qdq_model() -> onnx.ModelProto:
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [0.05])
    zero = helper.make_tensor("zero", TensorProto.INT8, [], [0])
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["dq"]),
        helper.make_node("Relu", ["dq"], ["y"]),
    ]
    return _model(nodes, [scale, zero])


def fp16_cast_model() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Cast", ["r"], ["y"], to=TensorProto.FLOAT),
    ]
    return _model(nodes)


def fp16_weights_model() -> onnx.ModelProto:
    bias = helper.make_tensor("b", TensorProto.FLOAT16, [4], np.ones(4, np.float16).tobytes(), raw=True)
    return _model([helper.make_node("Add", ["x", "b"], ["y"])], [bias], elem=TensorProto.FLOAT16)


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


# --------------------------------------------------------------------------------------------------- versions
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.3.0", (10, 3, 0)),
        ("11.0.0.post1", (11, 0, 0)),
        ("10.13.3.9", (10, 13, 3)),
        ("10.0", (10, 0, 0)),
        (" 8.6.1\n", (8, 6, 1)),
    ],
)
def test_parse_version(text: str, expected: tuple[int, int, int]) -> None:
    assert parse_version(text) == expected


@pytest.mark.parametrize("text", ["", "garbage", "ten.three", "10", None, "10.x.1"])
def test_parse_version_rejects_garbage(text: Any) -> None:
    with pytest.raises(ConfigError, match="cannot read a TensorRT version"):
        parse_version(text)


def _fake_tensorrt(monkeypatch: pytest.MonkeyPatch, module: Any) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", module)


def test_version_is_none_without_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_tensorrt(monkeypatch, None)  # a None entry makes `import tensorrt` raise ImportError
    assert tensorrt_version() is None
    with pytest.raises(MissingDependencyError) as info:
        require_tensorrt()
    message = str(info.value)
    assert "nasforge[tensorrt]" in message and "\n" not in message


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed: the missing-TensorRT error cannot be shown")
def test_missing_tensorrt_names_the_extra(tmp_path: Path) -> None:
    with pytest.raises(
        MissingDependencyError, match=r"TensorRT is not installed: pip install 'nasforge\[tensorrt\]'"
    ):
        require_tensorrt()
    onnx_path = _save(plain_model(), tmp_path / "m.onnx")
    with pytest.raises(MissingDependencyError, match=r"nasforge\[tensorrt\]"):
        build_engine(onnx_path, tmp_path / "m.engine")


def test_old_or_unreadable_tensorrt_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_tensorrt(monkeypatch, types.SimpleNamespace(__version__="8.6.1"))
    assert tensorrt_version() == (8, 6, 1)
    with pytest.raises(MissingDependencyError, match=r"TensorRT 8\.6\.1 is too old.*>= 10"):
        require_tensorrt()
    _fake_tensorrt(monkeypatch, types.SimpleNamespace(__version__="unknown"))
    with pytest.raises(MissingDependencyError, match="cannot read"):
        tensorrt_version()


# ------------------------------------------------------------------------------------------------------- plan
# (trt_major, precision, has_qdq, has_fp16, strongly_typed, network_flags, builder_flags) for builds that go.
PLANS = [
    (10, "fp32", False, False, False, (), ()),
    (10, "fp16", False, False, False, (), ("FP16",)),
    (10, "fp16", False, True, False, (), ("FP16",)),
    (10, "int8", True, False, False, (), ("INT8",)),
    (10, "int8", True, True, False, (), ("INT8", "FP16")),
    (11, "fp32", False, False, True, ("STRONGLY_TYPED",), ()),
    (11, "fp16", False, True, True, ("STRONGLY_TYPED",), ()),
    (11, "int8", True, False, True, ("STRONGLY_TYPED",), ()),
    (11, "int8", True, True, True, ("STRONGLY_TYPED",), ()),
    (12, "fp16", False, True, True, ("STRONGLY_TYPED",), ()),
]


@pytest.mark.parametrize(("major", "precision", "qdq", "fp16", "typed", "net_flags", "flags"), PLANS)
def test_plan_build(major, precision, qdq, fp16, typed, net_flags, flags) -> None:
    plan = plan_build(TrtBuildConfig(precision=precision), major, qdq, fp16)
    assert isinstance(plan, BuildPlan)
    assert (plan.trt_major, plan.precision, plan.strongly_typed) == (major, precision, typed)
    assert plan.network_flags == net_flags and plan.builder_flags == flags
    assert "EXPLICIT_BATCH" not in plan.network_flags  # ignored (deprecated) since TensorRT 10.0
    assert json.loads(json.dumps(plan.to_dict()))["builder_flags"] == list(flags)
    assert plan.notes


# (trt_major, precision, has_qdq, has_fp16, error pattern) for builds that are refused, on both versions.
REFUSED = [
    (10, "int8", False, False, r"Q/DQ\) nodes and this one has none; quantize it first \(nasforge quantize"),
    (11, "int8", False, False, r"Q/DQ\) nodes and this one has none; quantize it first \(nasforge quantize"),
    (11, "int8", False, True, r"quantize it first"),
    (11, "fp16", False, False, r"TensorRT 11 comes from the graph.*all FP32; export an FP16 model"),
    (10, "fp32", True, False, r"has Q/DQ nodes \(an INT8 model\) but precision='fp32'.*precision='int8'"),
    (11, "fp16", True, True, r"has Q/DQ nodes \(an INT8 model\) but precision='fp16'"),
    (10, "fp32", False, True, r"carries FP16.*precision='fp16'"),
    (11, "fp32", False, True, r"carries FP16.*precision='fp16'"),
]


@pytest.mark.parametrize(("major", "precision", "qdq", "fp16", "match"), REFUSED)
def test_plan_build_refusals(major, precision, qdq, fp16, match) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        plan_build(TrtBuildConfig(precision=precision), major, qdq, fp16)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("major", [7, 8, 9])
def test_plan_build_refuses_tensorrt_before_10(major: int) -> None:
    with pytest.raises(MissingDependencyError, match=rf"TensorRT {major} is not supported.*>= 10"):
        plan_build(TrtBuildConfig(), major, False, False)


def test_plan_build_strong_typing_choice() -> None:
    # TensorRT 10 can build strongly typed networks too; then precision comes from the graph as on 11.
    plan = plan_build(TrtBuildConfig(precision="fp16", strongly_typed=True), 10, False, True)
    assert plan.strongly_typed and plan.network_flags == ("STRONGLY_TYPED",) and plan.builder_flags == ()
    with pytest.raises(ConfigError, match=r"TensorRT 10 \(strongly typed\) comes from the graph"):
        plan_build(TrtBuildConfig(precision="fp16", strongly_typed=True), 10, False, False)
    with pytest.raises(ConfigError, match="weak typing was removed"):
        plan_build(TrtBuildConfig(strongly_typed=False), 11, False, False)
    assert not plan_build(TrtBuildConfig(strongly_typed=False), 10, False, False).strongly_typed
    with pytest.raises(ConfigError, match="major version"):
        plan_build(TrtBuildConfig(), "10", False, False)  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------------- graph precision
def test_graph_precision_detects_qdq_casts_and_fp16_tensors(tmp_path: Path) -> None:
    plain = graph_precision(plain_model())
    assert (plain.qdq_nodes, plain.fp16_casts, plain.fp16_tensors) == (0, 0, 0)
    assert not plain.has_qdq and not plain.has_fp16

    qdq = graph_precision(qdq_model())
    assert qdq.qdq_nodes == 2 and qdq.has_qdq and not qdq.has_fp16

    cast = graph_precision(fp16_cast_model())
    assert (
        cast.fp16_casts == 1 and cast.has_fp16 and not cast.has_qdq
    )  # the Cast back to FLOAT does not count

    weights = graph_precision(fp16_weights_model())
    assert weights.fp16_tensors == 2 and weights.has_fp16  # FP16 initializer and FP16 graph input

    on_disk = graph_precision(_save(qdq_model(), tmp_path / "q.onnx"))
    assert on_disk == qdq
    assert json.loads(json.dumps(on_disk.to_dict()))["has_qdq"] is True


def test_graph_precision_looks_into_subgraphs() -> None:
    branch = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16)],
        "then",
        [],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT16, None)],
    )
    outer = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)],
        "g",
        [
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)],
    )
    assert graph_precision(helper.make_model(outer)).fp16_casts == 2


def test_graph_precision_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="no ONNX file"):
        graph_precision(tmp_path / "absent.onnx")


def test_graphs_drive_the_plan() -> None:
    """graph_precision feeds plan_build: the Q/DQ model builds as int8 on both versions, the plain one not."""
    qdq = graph_precision(qdq_model())
    for major in (10, 11):
        assert (
            plan_build(TrtBuildConfig(precision="int8"), major, qdq.has_qdq, qdq.has_fp16).precision == "int8"
        )
    plain = graph_precision(plain_model())
    with pytest.raises(ConfigError, match="quantize it first"):
        plan_build(TrtBuildConfig(precision="int8"), 11, plain.has_qdq, plain.has_fp16)


# ---------------------------------------------------------------------------------------------- build config
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"precision": "int4"}, r"precision 'int4' is unknown"),
        ({"precision": "FP16"}, r"precision 'FP16' is unknown"),
        ({"workspace_mb": 0}, r"workspace_mb=0 is invalid"),
        ({"workspace_mb": 1.5}, r"workspace_mb=1.5 is invalid"),
        (
            {"builder_optimization_level": 6},
            r"builder_optimization_level=6 is invalid; pass an int in \[0, 5\]",
        ),
        ({"builder_optimization_level": -1}, r"builder_optimization_level=-1"),
        ({"min_batch": 0}, r"min_batch=0 is invalid"),
        ({"opt_batch": 4, "max_batch": 2}, r"min=1 opt=4 max=2 is invalid"),
        ({"min_batch": 8, "opt_batch": 4, "max_batch": 16}, r"min=8 opt=4 max=16"),
        ({"max_batch": True}, r"max_batch=True is invalid"),
        ({"input_shape": (3, 0)}, r"input_shape=\(3, 0\) is invalid"),
        ({"input_shape": ()}, r"input_shape=\(\) is invalid"),
        ({"timing_cache": 3}, r"timing_cache=3 is invalid"),
        ({"strongly_typed": "yes"}, r"strongly_typed='yes' is invalid"),
    ],
)
def test_build_config_validation(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        TrtBuildConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_build_config_defaults_and_paths(tmp_path: Path) -> None:
    config = TrtBuildConfig()
    assert (config.precision, config.workspace_mb, config.builder_optimization_level) == ("fp32", 1024, 3)
    assert (config.min_batch, config.opt_batch, config.resolved_max_batch) == (1, 1, 1)
    assert config.timing_cache_for(tmp_path / "net.engine") == tmp_path / "net.timing-cache"
    custom = TrtBuildConfig(timing_cache=str(tmp_path / "shared.cache"), opt_batch=4, input_shape=[3, 8, 8])
    assert custom.timing_cache == tmp_path / "shared.cache"  # str -> Path
    assert custom.timing_cache_for(tmp_path / "net.engine") == tmp_path / "shared.cache"
    assert custom.resolved_max_batch == 4 and custom.input_shape == (3, 8, 8)
    assert json.loads(json.dumps(custom.to_dict()))["input_shape"] == [3, 8, 8]
    with pytest.raises(AttributeError):
        config.precision = "fp16"  # type: ignore[misc]  # frozen


def test_optimization_profile() -> None:
    config = TrtBuildConfig(min_batch=1, opt_batch=4, max_batch=8)
    static = InputSpec("x", np.dtype(np.float32), (1, 3, 8, 8))
    assert optimization_profile(config, static) is None
    dynamic = InputSpec("x", np.dtype(np.float32), (None, 3, 8, 8))
    assert optimization_profile(config, dynamic) == ((1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8))
    spatial = InputSpec("x", np.dtype(np.float32), (None, 3, None, None))
    with pytest.raises(ConfigError, match=r"dynamic dims \(3, '\?', '\?'\) besides the batch.*input_shape"):
        optimization_profile(config, spatial)
    sized = TrtBuildConfig(opt_batch=2, input_shape=(3, 32, 32))
    assert optimization_profile(sized, spatial) == ((1, 3, 32, 32), (2, 3, 32, 32), (2, 3, 32, 32))
    with pytest.raises(ConfigError, match="does not fit the graph"):
        optimization_profile(TrtBuildConfig(input_shape=(1, 32, 32)), spatial)
    fixed_batch = InputSpec("x", np.dtype(np.float32), (2, 3, None, None))
    assert optimization_profile(sized, fixed_batch) == ((2, 3, 32, 32),) * 3


# ------------------------------------------------------------------------- build_engine with a stand-in TensorRT
class _FakeTrt(types.ModuleType):
    """The part of TensorRT's Python API that build_engine uses, recording the calls (10.x or 11.x flavour)."""

    def __init__(self, version: str, *, parse_ok: bool = True, build_ok: bool = True) -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        major = int(version.split(".")[0])
        self.calls: list[tuple[Any, ...]] = []
        fake = self

        class Severity:
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        class ILogger:
            def __init__(self) -> None:
                pass

        ILogger.Severity = Severity  # type: ignore[attr-defined]
        self.ILogger = ILogger
        # EXPLICIT_BATCH is only a deprecated no-op in 10.x and gone from 11.x's enum.
        if major >= 11:
            self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
            self.BuilderFlag = types.SimpleNamespace(TF32=7, REFIT=3)  # FP16 / INT8 removed in 11
        else:
            self.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0, STRONGLY_TYPED=1)
            self.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8", TF32=7, REFIT=3)
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")

        class TimingCache:
            def __init__(self, data: bytes) -> None:
                self.data = bytes(data)

            def serialize(self) -> bytes:
                return self.data + b"+tuned"

        class BuilderConfig:
            def __init__(self) -> None:
                self.builder_optimization_level = 3
                self.cache: TimingCache | None = None

            def set_memory_pool_limit(self, pool: Any, size: int) -> None:
                fake.calls.append(("set_memory_pool_limit", pool, size))

            def set_flag(self, flag: Any) -> None:
                fake.calls.append(("set_flag", flag))

            def create_timing_cache(self, data: bytes) -> TimingCache:
                fake.calls.append(("create_timing_cache", bytes(data)))
                return TimingCache(data)

            def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
                fake.calls.append(("set_timing_cache", cache.data, ignore_mismatch))
                self.cache = cache
                return True

            def get_timing_cache(self) -> TimingCache | None:
                return self.cache

            def add_optimization_profile(self, profile: Any) -> int:
                fake.calls.append(("add_optimization_profile", dict(profile.shapes)))
                return 0

        class Profile:
            def __init__(self) -> None:
                self.shapes: dict[str, tuple[Any, ...]] = {}

            def set_shape(self, name: str, low: Any, opt: Any, high: Any) -> None:
                self.shapes[name] = (tuple(low), tuple(opt), tuple(high))

        class Builder:
            def __init__(self, logger: Any) -> None:
                assert isinstance(logger, ILogger)
                self.logger = logger

            def create_network(self, flags: int = 0) -> str:
                fake.calls.append(("create_network", flags))
                return "network"

            def create_builder_config(self) -> BuilderConfig:
                self.config = BuilderConfig()
                return self.config

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: Any, config: BuilderConfig) -> bytes | None:
                fake.calls.append(("build_serialized_network", config.builder_optimization_level))
                if not build_ok:
                    self.logger.log(Severity.ERROR, "out of workspace memory\nsecond line")
                    return None
                return b"ENGINE"

        class ParserError:
            def desc(self) -> str:
                return "Unsupported operator FancyOp\nmore detail"

            def node_name(self) -> str:
                return "/fancy/FancyOp_3"

            def node_operator(self) -> str:
                return "FancyOp"

        class OnnxParser:
            def __init__(self, network: Any, logger: Any) -> None:
                self.num_errors = 0

            def parse_from_file(self, path: str) -> bool:
                fake.calls.append(("parse_from_file", path))
                if not parse_ok:
                    self.num_errors = 2
                return parse_ok

            def get_error(self, index: int) -> ParserError:
                return ParserError()

        self.Builder, self.OnnxParser = Builder, OnnxParser

    def called(self, name: str) -> list[tuple[Any, ...]]:
        return [call for call in self.calls if call[0] == name]


def test_build_engine_tensorrt10_int8(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = _FakeTrt("10.3.0")
    _fake_tensorrt(monkeypatch, fake)
    onnx_path = _save(qdq_model(), tmp_path / "q.onnx")
    config = TrtBuildConfig(
        precision="int8", workspace_mb=64, opt_batch=4, max_batch=8, builder_optimization_level=5
    )
    info = build_engine(onnx_path, tmp_path / "out" / "q.engine", config)

    assert (tmp_path / "out" / "q.engine").read_bytes() == b"ENGINE"
    assert fake.called("create_network") == [("create_network", 0)]  # weakly typed, no EXPLICIT_BATCH
    assert fake.called("set_flag") == [("set_flag", "INT8")]
    assert fake.called("set_memory_pool_limit") == [("set_memory_pool_limit", "WORKSPACE", 64 << 20)]
    assert fake.called("build_serialized_network") == [("build_serialized_network", 5)]
    assert fake.called("add_optimization_profile") == [
        ("add_optimization_profile", {"x": ((1, 4), (4, 4), (8, 4))})
    ]
    assert fake.called("parse_from_file") == [("parse_from_file", str(onnx_path))]
    # timing cache: none yet -> empty cache, refusing mismatches; saved next to the engine after the build
    assert fake.called("set_timing_cache") == [("set_timing_cache", b"", False)]
    cache = tmp_path / "out" / "q.timing-cache"
    assert cache.read_bytes() == b"+tuned" and not info.timing_cache_loaded

    sidecar = json.loads(sidecar_path(info.engine_path).read_text())
    assert info.sidecar_path == tmp_path / "out" / "q.engine.json"
    assert sidecar["tensorrt"] == "10.3.0" and sidecar["precision"] == "int8"
    assert sidecar["plan"]["builder_flags"] == ["INT8"] and sidecar["plan"]["strongly_typed"] is False
    assert sidecar["onnx"]["sha256"] == info.onnx_sha256 and len(info.onnx_sha256) == 64
    assert sidecar["input"] == {"name": "x", "profile": {"min": [1, 4], "opt": [4, 4], "max": [8, 4]}}
    assert "name" in sidecar["gpu"] and sidecar["graph"]["qdq_nodes"] == 2
    assert sidecar["engine_bytes"] == 6
    assert info.to_dict() == sidecar

    # A second build reads the saved timing cache back.
    fake.calls.clear()
    again = build_engine(onnx_path, tmp_path / "out" / "q.engine", config)
    assert fake.called("create_timing_cache")[0] == ("create_timing_cache", b"+tuned")
    assert again.timing_cache_loaded and cache.read_bytes() == b"+tuned+tuned"


def test_build_engine_tensorrt11_fp16_is_strongly_typed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = _FakeTrt("11.0.0.post1")
    _fake_tensorrt(monkeypatch, fake)
    onnx_path = _save(fp16_cast_model(), tmp_path / "h.onnx")
    shared_cache = tmp_path / "caches" / "gpu.timing-cache"
    info = build_engine(
        onnx_path, tmp_path / "h.plan", TrtBuildConfig(precision="fp16", timing_cache=shared_cache)
    )
    assert fake.called("create_network") == [("create_network", 1 << 0)]  # STRONGLY_TYPED is bit 0 in 11
    assert fake.called("set_flag") == []  # the FP16 flag is gone in 11: precision is in the graph
    assert info.plan.strongly_typed and info.timing_cache == shared_cache and shared_cache.is_file()
    assert fake.called("add_optimization_profile") == [
        ("add_optimization_profile", {"x": ((1, 4), (1, 4), (1, 4))})
    ]


def test_build_engine_refuses_before_building(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = _FakeTrt("11.1.0")
    _fake_tensorrt(monkeypatch, fake)
    onnx_path = _save(plain_model(), tmp_path / "p.onnx")
    with pytest.raises(ConfigError, match="TensorRT 11 comes from the graph"):
        build_engine(onnx_path, tmp_path / "p.engine", TrtBuildConfig(precision="fp16"))
    with pytest.raises(ConfigError, match="quantize it first"):
        build_engine(onnx_path, tmp_path / "p.engine", TrtBuildConfig(precision="int8"))
    with pytest.raises(ConfigError, match="is the ONNX file"):
        build_engine(onnx_path, onnx_path)
    with pytest.raises(ExportError, match="no ONNX file"):
        build_engine(tmp_path / "absent.onnx", tmp_path / "p.engine")
    assert fake.called("create_network") == [] and not (tmp_path / "p.engine").exists()


def test_build_engine_static_input_has_no_profile(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = _FakeTrt("10.8.0")
    _fake_tensorrt(monkeypatch, fake)
    model = _model([helper.make_node("Relu", ["x"], ["y"])], batch=2)
    info = build_engine(
        _save(model, tmp_path / "s.onnx"), tmp_path / "s.engine", TrtBuildConfig(precision="fp16")
    )
    assert fake.called("add_optimization_profile") == [] and info.profile is None
    assert fake.called("set_flag") == [("set_flag", "FP16")]


@pytest.mark.parametrize(
    ("parse_ok", "build_ok", "match"),
    [
        (
            False,
            True,
            r"cannot parse '.*p\.onnx': Unsupported operator FancyOp \(name=/fancy/FancyOp_3 operator=FancyOp\) \(\+1 more\)",
        ),
        (True, False, r"failed to build an engine from '.*p\.onnx': out of workspace memory$"),
    ],
)
def test_build_engine_failures_are_one_line(monkeypatch, tmp_path: Path, parse_ok, build_ok, match) -> None:
    _fake_tensorrt(monkeypatch, _FakeTrt("10.3.0", parse_ok=parse_ok, build_ok=build_ok))
    onnx_path = _save(plain_model(), tmp_path / "p.onnx")
    with pytest.raises(ExportError, match=match) as info:
        build_engine(onnx_path, tmp_path / "p.engine")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "p.engine").exists() and not sidecar_path(tmp_path / "p.engine").exists()


# -------------------------------------------------------------------------------------------- GPU protocol
def test_self_timed_protocol() -> None:
    calls = 0
    rounds = iter([[1.0, 9.0] * 5, [5.0, 5.1] * 5])  # first round noisy (CV ~0.8), second steady

    values: list[float] = []

    def time_once() -> float:
        nonlocal calls
        calls += 1
        if calls <= 3:  # warm-up: discarded
            return 1e9
        if not values:
            values.extend(next(rounds))
        return values.pop(0) * 1e6

    samples, remeasured = timed_runs(time_once, runs=10, warmup=3, max_cv=0.1, max_remeasure=2, self_timed=True)
    assert calls == 3 + 10 + 10 and remeasured == 1
    assert samples.dtype == np.float64 and samples.size == 10
    assert np.allclose(np.sort(samples), np.sort(np.array([5.0, 5.1] * 5) * 1e6))

    steady, again = timed_runs(lambda: 2e6, runs=5, warmup=0, max_cv=0.1, max_remeasure=2, self_timed=True)
    assert again == 0 and np.all(steady == 2e6)


def test_gpu_fingerprint_is_json_and_describes_the_gpu() -> None:
    fingerprint = gpu_fingerprint(2, timer="cuda-events")
    assert json.loads(json.dumps(fingerprint)) == fingerprint
    assert fingerprint["threads"] == 2 and fingerprint["timer"] == "cuda-events"
    assert set(fingerprint["gpu"]) == {"name", "compute_capability", "memory_mb", "count", "driver", "cuda"}
    assert {"tensorrt", "onnxruntime-gpu", "cuda", "cudnn", "torch", "onnxruntime"} <= set(
        fingerprint["versions"]
    )
    assert fingerprint["versions"]["cuda"] == torch.version.cuda
    if not HAS_CUDA:
        assert gpu_info()["name"] is None and gpu_info()["count"] == 0


def test_modules_import_no_gpu_library_at_import_time() -> None:
    """Registration must not import torch, onnxruntime or tensorrt: only function bodies may."""
    heavy = {"torch", "onnxruntime", "tensorrt"}
    names = ("_tensorrt", "_trt_plan", "_trt_graph", "_trt_build", "_trt_sidecar", "_gpu_profilers", "_gpu_info",
             "_ort_gpu", "_torch_cuda", "_trt_profiler", "_latency", "_fingerprint", "_profilers", "_remote")
    for module in (importlib.import_module(f"nasforge.export.{name}") for name in names):
        tree = ast.parse(Path(module.__file__).read_text())
        top = set()
        for node in tree.body:
            if isinstance(node, ast.Import):
                top |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                top.add(node.module.split(".")[0])
        assert not top & heavy, (module.__name__, top & heavy)


# ------------------------------------------------------------------------------------ GPU backends, no GPU
def test_gpu_backends_are_registered() -> None:
    from nasforge.export import list_profilers

    assert {"ort-cuda", "ort-tensorrt", "torch-cuda", "tensorrt"} <= set(list_profilers())


@pytest.mark.parametrize(
    ("backend", "options", "match"),
    [
        ("torch-cuda", {"cuda_graphs": "yes"}, "cuda_graphs='yes' is invalid"),
        ("torch-cuda", {"device": -1}, "device=-1 is invalid"),
        ("ort-cuda", {"io_binding": 1}, "io_binding=1 is invalid"),
        ("ort-tensorrt", {"precision": "int4"}, "precision 'int4' is unknown"),
        ("tensorrt", {"precision": "bf16"}, "precision 'bf16' is unknown"),
        ("tensorrt", {"workspace_mb": 0}, "workspace_mb=0 is invalid"),
        ("tensorrt", {"device": "0"}, "device='0' is invalid"),
    ],
)
def test_gpu_backend_options_are_validated(backend: str, options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        get_profiler(backend, **options)


def test_gpu_backends_reject_the_wrong_model_kind(tmp_path: Path) -> None:
    net = torch.nn.Linear(4, 4)
    with pytest.raises(ConfigError, match="torch-cuda measures an nn.Module"):
        get_profiler("torch-cuda").measure(tmp_path / "m.onnx", input_shape=(4,))
    with pytest.raises(ConfigError, match="torch-cuda needs input_shape"):
        get_profiler("torch-cuda").measure(net)
    with pytest.raises(ConfigError, match="tensorrt measures an engine or .onnx file, got Linear"):
        get_profiler("tensorrt").measure(net)
    with pytest.raises(ConfigError, match=r"\(\.engine, \.plan, \.trt\) or an \.onnx file"):
        get_profiler("tensorrt").measure(tmp_path / "m.pt")
    for backend in ("ort-cuda", "ort-tensorrt"):
        with pytest.raises(ConfigError, match=f"{backend} measures an .onnx file"):
            get_profiler(backend).measure(net)


@pytest.mark.skipif(HAS_CUDA, reason="a CUDA device is present: the no-GPU error cannot be shown")
def test_torch_cuda_without_gpu_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"torch-cuda needs an NVIDIA GPU.*use backend='torch-cpu'") as info:
        get_profiler("torch-cuda", cuda_graphs=True).measure(torch.nn.Linear(4, 4), input_shape=(4,), **FAST)
    assert "\n" not in str(info.value) and "no CUDA device" in str(info.value)


@pytest.mark.skipif(HAS_CUDA, reason="a CUDA device is present: the no-GPU error cannot be shown")
def test_tensorrt_backend_without_gpu_is_one_line(tmp_path: Path) -> None:
    onnx_path = _save(plain_model(), tmp_path / "p.onnx")
    for model in (onnx_path, tmp_path / "p.engine"):
        with pytest.raises(ConfigError, match=r"tensorrt needs an NVIDIA GPU") as info:
            get_profiler("tensorrt").measure(model, **FAST)
        assert "\n" not in str(info.value)


@pytest.mark.skipif(
    HAS_ORT_CUDA, reason="onnxruntime-gpu is installed: the missing-provider error cannot be shown"
)
@pytest.mark.parametrize(
    ("backend", "provider"),
    [("ort-cuda", "CUDAExecutionProvider"), ("ort-tensorrt", "TensorrtExecutionProvider")],
)
def test_ort_gpu_backends_without_onnxruntime_gpu(tmp_path: Path, backend: str, provider: str) -> None:
    onnx_path = _save(plain_model(), tmp_path / "p.onnx")
    with pytest.raises(
        ConfigError, match=rf"{backend} needs onnxruntime-gpu.*{provider} is not among"
    ) as info:
        get_profiler(backend).measure(onnx_path, **FAST)
    message = str(info.value)
    assert (
        "\n" not in message and "pip install onnxruntime-gpu" in message and "CPUExecutionProvider" in message
    )


@pytest.mark.skipif(HAS_CUDA, reason="a CUDA device is present")
def test_every_gpu_backend_fails_cleanly_here(tmp_path: Path) -> None:
    """Without a GPU each GPU backend stops with a one-line NasforgeError (never a traceback from a library)."""
    onnx_path = _save(plain_model(), tmp_path / "p.onnx")
    for backend in ("ort-cuda", "ort-tensorrt", "tensorrt"):
        with pytest.raises(NasforgeError) as info:
            get_profiler(backend).measure(onnx_path, **FAST)
        assert "\n" not in str(info.value)


# --------------------------------------------------------------------------------- on a GPU (skipped here)
@needs_cuda
@needs_trt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_engine_on_gpu(static_onnx: Path, tmp_path: Path, precision: str) -> None:
    major = tensorrt_version()[0]  # type: ignore[index]
    config = TrtBuildConfig(precision=precision, workspace_mb=256, builder_optimization_level=0)
    if precision == "fp16" and major >= 11:
        with pytest.raises(ConfigError, match="comes from the graph"):
            build_engine(static_onnx, tmp_path / "net.engine", config)
        return
    info = build_engine(static_onnx, tmp_path / "net.engine", config)
    assert info.engine_path.stat().st_size > 0 and info.timing_cache.stat().st_size > 0
    sidecar = json.loads(info.sidecar_path.read_text())
    assert sidecar["gpu"]["name"] == torch.cuda.get_device_name(0)
    again = build_engine(
        static_onnx,
        tmp_path / "net2.engine",
        TrtBuildConfig(precision=precision, timing_cache=info.timing_cache, builder_optimization_level=0),
    )
    assert again.timing_cache_loaded


@needs_cuda
@needs_trt
def test_tensorrt_profiler_on_gpu(dynamic_onnx: Path, tmp_path: Path) -> None:
    info = build_engine(dynamic_onnx, tmp_path / "net.engine", TrtBuildConfig(opt_batch=2, max_batch=4))
    result = get_profiler("tensorrt").measure(info.engine_path, batch=2, **FAST)
    assert result.backend == "tensorrt" and result.batch == 2 and 0 < result.min_ms <= result.median_ms
    assert result.fingerprint["gpu"]["name"] and result.fingerprint["engine"]["precision"] == "fp32"
    with pytest.raises(ExportError, match=r"accepts batches 1\.\.4 but batch=8"):
        get_profiler("tensorrt").measure(info.engine_path, batch=8, **FAST)
    from_onnx = get_profiler("tensorrt").measure(dynamic_onnx, batch=3, **FAST)
    assert from_onnx.runs == 30 and from_onnx.fingerprint["timer"] == "cuda-events"


@needs_cuda
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_torch_cuda_profiler_on_gpu(make_net, input_shape, cuda_graphs: bool) -> None:
    net = make_net()
    result = get_profiler("torch-cuda", cuda_graphs=cuda_graphs).measure(net, input_shape=input_shape, **FAST)
    assert result.backend == "torch-cuda" and 0 < result.min_ms <= result.median_ms <= result.p99_ms
    assert result.fingerprint["cuda_graphs"] is cuda_graphs and result.fingerprint["gpu"]["name"]
    assert next(net.parameters()).device.type == "cpu" and net.training  # the caller's module is untouched


@pytest.mark.skipif(not HAS_ORT_CUDA, reason="onnxruntime-gpu not installed (no CUDAExecutionProvider)")
@needs_cuda
@pytest.mark.parametrize("io_binding", [True, False])
def test_ort_cuda_profiler_on_gpu(dynamic_onnx: Path, io_binding: bool) -> None:
    result = get_profiler("ort-cuda", io_binding=io_binding).measure(dynamic_onnx, batch=2, **FAST)
    assert result.backend == "ort-cuda" and result.median_ms > 0
    assert result.fingerprint["providers"][0] == "CUDAExecutionProvider"


@pytest.mark.skipif(not HAS_ORT_TRT, reason="onnxruntime-gpu with TensorrtExecutionProvider not installed")
@needs_cuda
@needs_trt
def test_ort_tensorrt_profiler_on_gpu(static_onnx: Path, tmp_path: Path) -> None:
    result = get_profiler("ort-tensorrt", cache_dir=tmp_path / "cache").measure(static_onnx, **FAST)
    assert result.backend == "ort-tensorrt" and result.median_ms > 0
    assert result.fingerprint["providers"][0] == "TensorrtExecutionProvider"
