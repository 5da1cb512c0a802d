"""TensorRT build planning, without TensorRT: versions, :class:`TrtBuildConfig` and :func:`plan_build`.

:func:`plan_build` decides which network and builder flags a build uses on TensorRT 10 (weakly typed,
precision builder flags) or 11+ (strongly typed, precision from the graph), and refuses combinations that
cannot give the precision asked for. See :mod:`nasforge.export._tensorrt` for the background.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasforge.errors import ConfigError, MissingDependencyError

__all__ = ["MIN_MAJOR", "PRECISIONS", "BuildPlan", "TrtBuildConfig", "parse_version", "plan_build"]

PRECISIONS = ("fp32", "fp16", "int8")
MIN_MAJOR = 10
_VERSION = re.compile(r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?")


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
    if config.strongly_typed is False and trt_major >= 11:
        raise ConfigError(
            f"TensorRT {trt_major} builds only strongly typed networks (weak typing was removed in 11); "
            "drop strongly_typed=False"
        )
    strongly_typed = trt_major >= 11 or config.strongly_typed is True
    where = f"TensorRT {trt_major}" + (" (strongly typed)" if trt_major < 11 else "")
    _check_graph_fits(config.precision, strongly_typed, where, onnx_has_qdq, onnx_has_fp16_casts)
    if strongly_typed:
        network_flags: tuple[str, ...] = ("STRONGLY_TYPED",)
        builder_flags: tuple[str, ...] = ()
        notes = [f"{where}: precision taken from the ONNX graph, no precision builder flag"]
        if trt_major >= 11:
            notes.append("STRONGLY_TYPED is always on in TensorRT 11+; the flag is passed for clarity only")
    else:
        network_flags = ()
        builder_flags, notes = _weak_typing_flags(config.precision, trt_major, onnx_has_fp16_casts)
    return BuildPlan(
        trt_major=trt_major,
        precision=config.precision,
        strongly_typed=strongly_typed,
        network_flags=network_flags,
        builder_flags=builder_flags,
        notes=tuple(notes),
    )


def _check_graph_fits(precision: str, strongly_typed: bool, where: str, has_qdq: bool, has_fp16: bool) -> None:
    """Refuse a precision that this graph cannot give.

    Raises:
        ConfigError: the message says which file to build instead.
    """
    if precision == "int8" and not has_qdq:
        raise ConfigError(
            "precision='int8' needs an ONNX graph with QuantizeLinear/DequantizeLinear (Q/DQ) nodes and this "
            "one has none; quantize it first (nasforge quantize writes a Q/DQ ONNX file) and build that file"
        )
    if precision != "int8" and has_qdq:
        raise ConfigError(
            f"the ONNX graph has Q/DQ nodes (an INT8 model) but precision={precision!r} was asked; "
            "build it with precision='int8', or build the unquantized ONNX file"
        )
    if precision == "fp32" and has_fp16:
        raise ConfigError(
            "the ONNX graph carries FP16 (casts to FLOAT16 or FP16 weights) but precision='fp32' was asked; "
            "build it with precision='fp16', or build the FP32 ONNX file"
        )
    if precision == "fp16" and strongly_typed and not has_fp16:
        raise ConfigError(
            f"precision='fp16' on {where} comes from the graph (no FP16 builder flag), and this ONNX "
            "graph is all FP32; export an FP16 model (model.half()) or insert FP16 casts (e.g. ModelOpt "
            "AutoCast) and build that file"
        )


def _weak_typing_flags(precision: str, trt_major: int, has_fp16: bool) -> tuple[tuple[str, ...], list[str]]:
    """Builder flags and notes of a weakly typed TensorRT 10 build."""
    notes: list[str] = []
    builder_flags: tuple[str, ...] = ()
    if precision == "fp16":
        builder_flags = ("FP16",)
    elif precision == "int8":
        builder_flags = ("INT8", "FP16") if has_fp16 else ("INT8",)
        notes.append("INT8 from the graph's Q/DQ nodes (explicit quantization; no calibrator)")
    notes.append(f"TensorRT {trt_major}: weakly typed network, precision from builder flags")
    return builder_flags, notes
