"""TensorRT engines from ONNX files, for TensorRT 10 (precision builder flags) and 11+ (precision from the graph).

TensorRT 10 builds *weakly typed* networks by default: ``BuilderFlag.FP16`` lets it pick FP16 kernels anywhere,
and ``BuilderFlag.INT8`` on a graph with QuantizeLinear/DequantizeLinear (Q/DQ) nodes gives explicit
quantization (no calibrator). TensorRT 11 removed those flags, the INT8 calibrator and weak typing: every
network is strongly typed, so an engine runs in exactly the precisions written in the ONNX graph (Q/DQ nodes
for INT8, FP16 casts or FP16 weights for FP16). :func:`plan_build` decides, without importing TensorRT, which
flags a build uses and refuses combinations that cannot give the precision asked for;
:func:`build_engine` carries the plan out with TensorRT's Python API.

Everything that imports ``tensorrt`` does so lazily: this module imports without TensorRT installed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nasforge.errors import ConfigError, ExportError, MissingDependencyError
from nasforge.io import atomic_write, atomic_write_json, sha256_file

from ._onnx_io import InputSpec, first_line, load_onnx, single_input_spec

if TYPE_CHECKING:
    import onnx

__all__ = [
    "PRECISIONS",
    "BuildPlan",
    "EngineInfo",
    "GraphPrecision",
    "TrtBuildConfig",
    "build_engine",
    "graph_precision",
    "optimization_profile",
    "parse_version",
    "plan_build",
    "read_sidecar",
    "require_tensorrt",
    "sidecar_path",
    "tensorrt_version",
]

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
MIN_MAJOR = 10
_INSTALL = "pip install 'nasforge[tensorrt]' (needs an NVIDIA GPU and driver)"
_VERSION = re.compile(r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?")
_QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
_FLOAT16 = 10  # onnx.TensorProto.FLOAT16 (kept literal so graph inspection needs no onnx import)


# --------------------------------------------------------------------------------------------------- versions
def parse_version(text: str) -> tuple[int, int, int]:
    """``(major, minor, patch)`` of a version string such as ``"10.3.0"``, ``"10.3.0.26"`` or ``"11.0.0.post1"``.

    Raises:
        ConfigError: ``text`` does not start with ``MAJOR.MINOR``.
    """
    match = _VERSION.match(text) if isinstance(text, str) else None
    if match is None:
        raise ConfigError(f"cannot read a TensorRT version from {text!r}; expected MAJOR.MINOR[.PATCH]")
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def _import_tensorrt() -> Any:
    """The ``tensorrt`` module, or ``None`` if it cannot be imported (absent, or its CUDA libraries are)."""
    try:
        import tensorrt
    except (ImportError, OSError):
        return None
    return tensorrt


def tensorrt_version() -> tuple[int, int, int] | None:
    """Version of the importable TensorRT, or ``None`` when TensorRT is not installed (imports it lazily).

    Raises:
        MissingDependencyError: TensorRT imports but reports an unreadable version (a broken install).
    """
    trt = _import_tensorrt()
    if trt is None:
        return None
    text = getattr(trt, "__version__", "")
    try:
        return parse_version(text)
    except ConfigError:
        raise MissingDependencyError(
            f"TensorRT reports the version {text!r}, which nasforge cannot read; reinstall it: {_INSTALL}"
        ) from None


def require_tensorrt() -> Any:
    """Import TensorRT (>= 10) and return the module.

    Raises:
        MissingDependencyError: TensorRT is not installed, or is older than 10; the message names the extra.
    """
    trt = _import_tensorrt()
    if trt is None:
        raise MissingDependencyError(
            f"TensorRT is not installed: {_INSTALL}; or measure with backend='ort-cuda' / 'torch-cuda'"
        )
    version = tensorrt_version()
    assert version is not None
    if version[0] < MIN_MAJOR:
        raise MissingDependencyError(
            f"TensorRT {'.'.join(map(str, version))} is too old; nasforge needs TensorRT >= {MIN_MAJOR}: "
            f"pip install -U 'nasforge[tensorrt]'"
        )
    return trt


# ------------------------------------------------------------------------------------------------ build config
def _positive_int(name: str, value: object, low: int = 1, high: int | None = None) -> None:
    bad = isinstance(value, bool) or not isinstance(value, int) or value < low
    if bad or (high is not None and value > high):  # type: ignore[operator]
        limit = f"an int in [{low}, {high}]" if high is not None else f"an int >= {low}"
        raise ConfigError(f"TensorRT {name}={value!r} is invalid; pass {limit}")


@dataclass(frozen=True)
class TrtBuildConfig:
    """How to build a TensorRT engine from an ONNX file.

    Attributes:
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"``. INT8 needs a graph with Q/DQ nodes (``nasforge
            quantize``); on TensorRT 11 FP16 needs a graph that carries FP16 (casts or FP16 weights).
        workspace_mb: limit of the builder's scratch GPU memory (``MemoryPoolType.WORKSPACE``), MiB.
        timing_cache: file of TensorRT's layer-timing cache, read before and written after the build
            (``None``: next to the engine, ``<engine>.timing-cache``). It speeds up rebuilds on the same GPU
            and TensorRT version; a cache from another one is ignored.
        min_batch, opt_batch, max_batch: the optimization profile of an ONNX input with a dynamic batch dim:
            the engine accepts batches in ``[min_batch, max_batch]`` and is tuned for ``opt_batch``
            (``max_batch=None``: ``opt_batch``). Ignored for a fixed batch dim.
        input_shape: shape of one sample without the batch dim, needed only when the ONNX input has dynamic
            dims besides the batch.
        builder_optimization_level: TensorRT's builder optimisation level, 0 (fast build) to 5 (slowest
            build, most tactics); TensorRT's default is 3.
        strongly_typed: ``None`` picks per version (weakly typed with flags on TensorRT 10, strongly typed on
            11+); ``True`` builds a strongly typed network on TensorRT 10 too (precision from the graph);
            ``False`` is refused on TensorRT 11+.

    Raises:
        ConfigError: a field out of range (one line naming it).
    """

    precision: str = "fp32"
    workspace_mb: int = 1024
    timing_cache: Path | None = None
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int | None = None
    input_shape: tuple[int, ...] | None = None
    builder_optimization_level: int = 3
    strongly_typed: bool | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"TensorRT precision {self.precision!r} is unknown; pick one of {PRECISIONS}")
        _positive_int("workspace_mb", self.workspace_mb)
        _positive_int("builder_optimization_level", self.builder_optimization_level, 0, 5)
        for name in ("min_batch", "opt_batch"):
            _positive_int(name, getattr(self, name))
        if self.max_batch is not None:
            _positive_int("max_batch", self.max_batch)
        if not self.min_batch <= self.opt_batch <= self.resolved_max_batch:
            raise ConfigError(
                f"TensorRT batch profile min={self.min_batch} opt={self.opt_batch} "
                f"max={self.resolved_max_batch} is invalid; pass min_batch <= opt_batch <= max_batch"
            )
        if self.timing_cache is not None:
            if not isinstance(self.timing_cache, (str, Path)):
                raise ConfigError(f"TensorRT timing_cache={self.timing_cache!r} is invalid; pass a file path")
            object.__setattr__(self, "timing_cache", Path(self.timing_cache))
        if self.input_shape is not None:
            shape = tuple(self.input_shape) if isinstance(self.input_shape, (list, tuple)) else None
            if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape):
                raise ConfigError(
                    f"TensorRT input_shape={self.input_shape!r} is invalid; pass positive ints without the "
                    "batch dim, e.g. (3, 224, 224)"
                )
            object.__setattr__(self, "input_shape", shape)
        if self.strongly_typed not in (None, True, False):
            raise ConfigError(
                f"TensorRT strongly_typed={self.strongly_typed!r} is invalid; pass None, True or False"
            )

    @property
    def resolved_max_batch(self) -> int:
        """``max_batch``, or ``opt_batch`` when it is ``None``."""
        return self.opt_batch if self.max_batch is None else self.max_batch

    def timing_cache_for(self, engine_path: str | Path) -> Path:
        """The timing-cache file used when building ``engine_path``."""
        if self.timing_cache is not None:
            return self.timing_cache
        engine_path = Path(engine_path)
        return engine_path.with_name(engine_path.stem + ".timing-cache")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        out = dataclasses.asdict(self)
        out["timing_cache"] = None if self.timing_cache is None else str(self.timing_cache)
        out["max_batch"] = self.resolved_max_batch
        out["input_shape"] = None if self.input_shape is None else list(self.input_shape)
        return out


# ------------------------------------------------------------------------------------------------------ plan
@dataclass(frozen=True)
class BuildPlan:
    """What a build does, decided from the config, the TensorRT major version and the graph's precision.

    Attributes:
        trt_major: TensorRT major version planned for.
        precision: the precision asked for.
        strongly_typed: whether the network is strongly typed (precision from the graph).
        network_flags: ``NetworkDefinitionCreationFlag`` member names passed to ``create_network``.
        builder_flags: ``BuilderFlag`` member names set on the builder config.
        notes: what the plan decided and why, for the engine's sidecar.
    """

    trt_major: int
    precision: str
    strongly_typed: bool
    network_flags: tuple[str, ...] = ()
    builder_flags: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "trt_major": self.trt_major,
            "precision": self.precision,
            "strongly_typed": self.strongly_typed,
            "network_flags": list(self.network_flags),
            "builder_flags": list(self.builder_flags),
            "notes": list(self.notes),
        }


def plan_build(
    config: TrtBuildConfig, trt_major: int, onnx_has_qdq: bool, onnx_has_fp16_casts: bool
) -> BuildPlan:
    """Decide the network and builder flags of a build (pure: no TensorRT import).

    TensorRT 10, weakly typed (the default there): no network flag (``EXPLICIT_BATCH`` is ignored since 10.0),
    builder flags ``FP16`` for fp16, ``INT8`` for int8 (explicit quantization from the Q/DQ nodes, no
    calibrator) plus ``FP16`` when the graph also carries FP16. TensorRT 11+, or 10 with
    ``strongly_typed=True``: network flag ``STRONGLY_TYPED`` (always on and ignored on 11), no precision flag;
    the graph must carry the precision asked for.

    Args:
        config: the build config (its ``precision`` and ``strongly_typed`` matter here).
        trt_major: TensorRT major version.
        onnx_has_qdq: the ONNX graph has QuantizeLinear/DequantizeLinear nodes (:func:`graph_precision`).
        onnx_has_fp16_casts: the graph carries FP16 (casts to FLOAT16, FP16 weights or inputs).

    Raises:
        MissingDependencyError: ``trt_major`` is older than 10.
        ConfigError: the precision cannot be had from this graph on this version (the message says what to do).
    """
    if isinstance(trt_major, bool) or not isinstance(trt_major, int):
        raise ConfigError(f"TensorRT major version {trt_major!r} is invalid; pass an int such as 10")
    if trt_major < MIN_MAJOR:
        raise MissingDependencyError(
            f"TensorRT {trt_major} is not supported; nasforge needs TensorRT >= {MIN_MAJOR}: "
            "pip install -U 'nasforge[tensorrt]'"
        )
    precision = config.precision
    if config.strongly_typed is False and trt_major >= 11:
        raise ConfigError(
            f"TensorRT {trt_major} builds only strongly typed networks (weak typing was removed in 11); "
            "drop strongly_typed=False"
        )
    strongly_typed = trt_major >= 11 or config.strongly_typed is True
    where = f"TensorRT {trt_major}" + (" (strongly typed)" if trt_major < 11 else "")

    if precision == "int8" and not onnx_has_qdq:
        raise ConfigError(
            "precision='int8' needs an ONNX graph with QuantizeLinear/DequantizeLinear (Q/DQ) nodes and this "
            "one has none; quantize it first (nasforge quantize writes a Q/DQ ONNX file) and build that file"
        )
    if precision != "int8" and onnx_has_qdq:
        raise ConfigError(
            f"the ONNX graph has Q/DQ nodes (an INT8 model) but precision={precision!r} was asked; "
            "build it with precision='int8', or build the unquantized ONNX file"
        )
    if precision == "fp32" and onnx_has_fp16_casts:
        raise ConfigError(
            "the ONNX graph carries FP16 (casts to FLOAT16 or FP16 weights) but precision='fp32' was asked; "
            "build it with precision='fp16', or build the FP32 ONNX file"
        )
    if precision == "fp16" and strongly_typed and not onnx_has_fp16_casts:
        raise ConfigError(
            f"precision='fp16' on {where} comes from the graph (no FP16 builder flag), and this ONNX "
            "graph is all FP32; export an FP16 model (model.half()) or insert FP16 casts (e.g. ModelOpt "
            "AutoCast) and build that file"
        )

    notes: list[str] = []
    if strongly_typed:
        network_flags: tuple[str, ...] = ("STRONGLY_TYPED",)
        builder_flags: tuple[str, ...] = ()
        notes.append(f"{where}: precision taken from the ONNX graph, no precision builder flag")
        if trt_major >= 11:
            notes.append("STRONGLY_TYPED is always on in TensorRT 11+; the flag is passed for clarity only")
    else:
        network_flags = ()
        if precision == "fp16":
            builder_flags = ("FP16",)
        elif precision == "int8":
            builder_flags = ("INT8", "FP16") if onnx_has_fp16_casts else ("INT8",)
            notes.append("INT8 from the graph's Q/DQ nodes (explicit quantization; no calibrator)")
        else:
            builder_flags = ()
        notes.append(f"TensorRT {trt_major}: weakly typed network, precision from builder flags")
    return BuildPlan(
        trt_major=trt_major,
        precision=precision,
        strongly_typed=strongly_typed,
        network_flags=network_flags,
        builder_flags=builder_flags,
        notes=tuple(notes),
    )


# ------------------------------------------------------------------------------------------- graph precision
@dataclass(frozen=True)
class GraphPrecision:
    """The reduced precisions written in an ONNX graph.

    Attributes:
        qdq_nodes: QuantizeLinear / DequantizeLinear nodes (any domain, subgraphs included).
        fp16_casts: Cast nodes whose ``to`` is FLOAT16.
        fp16_tensors: FLOAT16 initializers, Constant values and graph inputs.
    """

    qdq_nodes: int = 0
    fp16_casts: int = 0
    fp16_tensors: int = 0

    @property
    def has_qdq(self) -> bool:
        """The graph is explicitly quantized."""
        return self.qdq_nodes > 0

    @property
    def has_fp16(self) -> bool:
        """The graph computes (partly) in FP16."""
        return self.fp16_casts > 0 or self.fp16_tensors > 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {**dataclasses.asdict(self), "has_qdq": self.has_qdq, "has_fp16": self.has_fp16}


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph (If / Loop / Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def graph_precision(model: onnx.ModelProto | str | Path) -> GraphPrecision:
    """Count the Q/DQ nodes, FP16 casts and FP16 tensors of an ONNX model (a ModelProto or a file path).

    Raises:
        ExportError: a path that is not a readable ONNX file.
    """
    if isinstance(model, (str, Path)):
        model = load_onnx(model, load_external_data=False, check=False)
    qdq = casts = tensors = 0
    for graph in _graphs(model.graph):
        tensors += sum(init.data_type == _FLOAT16 for init in graph.initializer)
        tensors += sum(
            inp.type.HasField("tensor_type") and inp.type.tensor_type.elem_type == _FLOAT16
            for inp in graph.input
        )
        for node in graph.node:
            if node.op_type in _QDQ_OPS:
                qdq += 1
            elif node.op_type == "Cast":
                casts += any(a.name == "to" and a.i == _FLOAT16 for a in node.attribute)
            elif node.op_type == "Constant":
                tensors += any(a.name == "value" and a.t.data_type == _FLOAT16 for a in node.attribute)
    return GraphPrecision(qdq_nodes=qdq, fp16_casts=casts, fp16_tensors=tensors)


# ------------------------------------------------------------------------------------ optimization profile
def optimization_profile(
    config: TrtBuildConfig, spec: InputSpec
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None:
    """The (min, opt, max) input shapes of the build's optimization profile, or ``None`` for a static input.

    Raises:
        ConfigError: the input has dynamic dims besides the batch and ``config.input_shape`` does not fill
            them, or ``config.input_shape`` contradicts the graph.
    """
    dims = spec.dims
    if not dims:
        raise ConfigError(f"input '{spec.name}' is a scalar; TensorRT needs a batch dim to build a profile")
    if all(d is not None for d in dims):
        return None
    rest = dims[1:]
    if config.input_shape is not None:
        sample = config.input_shape
        if len(sample) != len(rest) or any(
            d is not None and d != s for d, s in zip(rest, sample, strict=True)
        ):
            shown = tuple("?" if d is None else d for d in rest)
            raise ConfigError(
                f"TensorRT input_shape {sample} does not fit the graph's {shown}; pass a matching shape"
            )
    elif any(d is None for d in rest):
        shown = tuple("?" if d is None else d for d in rest)
        raise ConfigError(
            f"input '{spec.name}' has dynamic dims {shown} besides the batch; pass "
            "TrtBuildConfig(input_shape=(...)) without the batch dim"
        )
    else:
        sample = tuple(d for d in rest if d is not None)
    first = dims[0]
    if first is not None:  # fixed batch, dynamic dims elsewhere
        return (first, *sample), (first, *sample), (first, *sample)
    return (
        (config.min_batch, *sample),
        (config.opt_batch, *sample),
        (config.resolved_max_batch, *sample),
    )


# ------------------------------------------------------------------------------------------------------ build
@dataclass(frozen=True)
class EngineInfo:
    """A built engine and how it was built (the content of its JSON sidecar, plus the paths)."""

    engine_path: Path
    sidecar_path: Path
    onnx_path: Path
    onnx_sha256: str
    tensorrt_version: str
    plan: BuildPlan
    graph: GraphPrecision
    config: TrtBuildConfig
    input_name: str
    profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None
    gpu: dict[str, Any]
    timing_cache: Path
    timing_cache_loaded: bool
    build_seconds: float
    engine_bytes: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (what the sidecar holds)."""
        return {
            "format": "nasforge-tensorrt-engine",
            "engine": str(self.engine_path),
            "engine_bytes": self.engine_bytes,
            "tensorrt": self.tensorrt_version,
            "precision": self.plan.precision,
            "plan": self.plan.to_dict(),
            "graph": self.graph.to_dict(),
            "build": self.config.to_dict(),
            "input": {
                "name": self.input_name,
                "profile": None
                if self.profile is None
                else {k: list(v) for k, v in zip(("min", "opt", "max"), self.profile, strict=True)},
            },
            "gpu": self.gpu,
            "onnx": {"path": str(self.onnx_path), "sha256": self.onnx_sha256},
            "timing_cache": {"path": str(self.timing_cache), "loaded": self.timing_cache_loaded},
            "build_seconds": round(self.build_seconds, 3),
        }


def sidecar_path(engine_path: str | Path) -> Path:
    """The JSON sidecar written next to an engine: ``<engine>.json`` (``net.engine`` -> ``net.engine.json``)."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def _make_logger(trt: Any) -> Any:
    """A ``trt.ILogger`` that sends TensorRT's messages to :mod:`logging` and keeps the errors."""

    class _Logger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
                log.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return _Logger()


def _enum_member(enum: Any, name: str, what: str) -> Any:
    member = getattr(enum, name, None)
    if member is None:
        raise ExportError(
            f"this TensorRT has no {what} {name}; the build plan does not fit it (report a bug)"
        )
    return member


def _one_line(message: object) -> str:
    """The first non-empty line of a TensorRT message."""
    return first_line(Exception(str(message)))


def _parser_errors(parser: Any) -> str:
    """The parser's first error as one line, with the node it came from."""
    messages = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        desc = _one_line(err.desc() if hasattr(err, "desc") else err)
        node = ""
        for attr in ("node_name", "node_operator"):
            getter = getattr(err, attr, None)
            value = getter() if callable(getter) else None
            if value:
                node += f" {attr.split('_')[1]}={value}"
        messages.append(desc + (f" ({node.strip()})" if node else ""))
    if not messages:
        return "unknown parser error"
    more = f" (+{len(messages) - 1} more)" if len(messages) > 1 else ""
    return messages[0] + more


def _load_timing_cache(trt_config: Any, path: Path) -> tuple[Any, bool]:
    """Create the build's timing cache from ``path`` (empty if absent or unusable); returns it and loaded?."""
    data = b""
    if path.is_file():
        try:
            data = path.read_bytes()
        except OSError as err:
            log.warning("cannot read TensorRT timing cache %s (%s); starting an empty one", path, err)
    cache = None
    if data:
        try:
            cache = trt_config.create_timing_cache(data)
        except Exception as err:  # noqa: BLE001 - TensorRT raises plain RuntimeError/TypeError
            log.warning(
                "TensorRT timing cache %s is unusable (%s); starting an empty one", path, first_line(err)
            )
    loaded = cache is not None
    if cache is None:
        cache = trt_config.create_timing_cache(b"")
    if not trt_config.set_timing_cache(cache, False):  # False: refuse a cache from another device/version
        log.warning(
            "TensorRT timing cache %s belongs to another GPU or TensorRT; starting an empty one", path
        )
        cache = trt_config.create_timing_cache(b"")
        trt_config.set_timing_cache(cache, False)
        loaded = False
    return cache, loaded


def build_engine(
    onnx_path: str | Path, engine_path: str | Path, config: TrtBuildConfig | None = None
) -> EngineInfo:
    """Build a TensorRT engine from an ONNX file and write it, its timing cache and a JSON sidecar.

    Steps: read the graph's precision (:func:`graph_precision`) and plan the build (:func:`plan_build`);
    ``Builder`` -> ``create_network(flags)`` -> ``OnnxParser.parse_from_file``; builder config with the
    workspace limit, optimisation level, precision flags (TensorRT 10), the timing cache and, for a dynamic
    input, one optimization profile; ``build_serialized_network``; the engine is written atomically, the
    updated timing cache saved back, and ``<engine>.json`` (:func:`sidecar_path`) records the TensorRT
    version, plan, GPU and the ONNX file's SHA-256.

    Raises:
        MissingDependencyError: TensorRT (>= 10) is not installed.
        ConfigError: the config does not fit the graph (see :func:`plan_build`, :func:`optimization_profile`).
        ExportError: the ONNX file is missing or invalid, TensorRT cannot parse it, or the build fails.
    """
    config = TrtBuildConfig() if config is None else config
    if not isinstance(config, TrtBuildConfig):
        raise ConfigError(f"build_engine config must be a TrtBuildConfig, got {type(config).__name__}")
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if engine_path.resolve() == onnx_path.resolve():
        raise ConfigError(
            f"engine path '{engine_path}' is the ONNX file; pass another path, e.g. model.engine"
        )
    trt = require_tensorrt()
    version_text = str(trt.__version__)
    model = load_onnx(onnx_path, load_external_data=False, check=True)
    spec = single_input_spec(model, onnx_path)
    precision = graph_precision(model)
    del model
    plan = plan_build(config, parse_version(version_text)[0], precision.has_qdq, precision.has_fp16)
    profile_shapes = optimization_profile(config, spec)

    from ._gpu_profilers import gpu_info

    logger = _make_logger(trt)
    started = time.perf_counter()
    builder = trt.Builder(logger)
    flags = 0
    for name in plan.network_flags:
        member = getattr(trt.NetworkDefinitionCreationFlag, name, None)
        if member is not None:  # a flag that a later TensorRT dropped because it is always on
            flags |= 1 << int(member)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from the file: external weights are found next to it
        raise ExportError(f"TensorRT {version_text} cannot parse '{onnx_path}': {_parser_errors(parser)}")

    trt_config = builder.create_builder_config()
    trt_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_mb << 20)
    trt_config.builder_optimization_level = config.builder_optimization_level
    for name in plan.builder_flags:
        trt_config.set_flag(_enum_member(trt.BuilderFlag, name, "BuilderFlag"))
    cache_path = config.timing_cache_for(engine_path)
    cache, cache_loaded = _load_timing_cache(trt_config, cache_path)
    if profile_shapes is not None:
        profile = builder.create_optimization_profile()
        profile.set_shape(spec.name, *profile_shapes)
        trt_config.add_optimization_profile(profile)

    serialized = builder.build_serialized_network(network, trt_config)
    if serialized is None:
        reason = logger.errors[0] if logger.errors else "no reason given; see the TensorRT log"
        raise ExportError(
            f"TensorRT {version_text} failed to build an engine from '{onnx_path}': {_one_line(reason)}"
        )
    build_seconds = time.perf_counter() - started
    engine_bytes = atomic_write(engine_path, lambda fh: fh.write(memoryview(serialized))).stat().st_size
    try:
        updated = trt_config.get_timing_cache() or cache  # the cache as augmented by this build
        atomic_write(cache_path, lambda fh: fh.write(memoryview(updated.serialize())))
    except OSError as err:
        log.warning("cannot save TensorRT timing cache %s: %s", cache_path, err)

    info = EngineInfo(
        engine_path=engine_path,
        sidecar_path=sidecar_path(engine_path),
        onnx_path=onnx_path,
        onnx_sha256=sha256_file(onnx_path),
        tensorrt_version=version_text,
        plan=plan,
        graph=precision,
        config=config,
        input_name=spec.name,
        profile=profile_shapes,
        gpu=gpu_info(),
        timing_cache=cache_path,
        timing_cache_loaded=cache_loaded,
        build_seconds=build_seconds,
        engine_bytes=engine_bytes,
    )
    atomic_write_json(info.sidecar_path, info.to_dict())
    return info


def read_sidecar(engine_path: str | Path) -> dict[str, Any] | None:
    """The JSON sidecar of an engine, or ``None`` if it has none (or it is unreadable)."""
    try:
        return json.loads(sidecar_path(engine_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
