"""Building TensorRT engines with TensorRT's Python API: import checks, the build itself and its timing cache.

:func:`build_engine` carries out :func:`~nasforge.export._trt_plan.plan_build`'s plan and writes the engine,
its timing cache and its sidecar (:mod:`nasforge.export._trt_sidecar`). TensorRT is imported lazily: this
module imports without it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from nasforge.errors import ConfigError, ExportError, MissingDependencyError
from nasforge.io import atomic_write, atomic_write_json, sha256_file

from ._gpu_info import gpu_info
from ._onnx_io import first_line, load_onnx, single_input_spec
from ._trt_graph import graph_precision, optimization_profile
from ._trt_plan import MIN_MAJOR, BuildPlan, TrtBuildConfig, parse_version, plan_build
from ._trt_sidecar import EngineInfo, sidecar_path

__all__ = ["build_engine", "make_logger", "require_tensorrt", "tensorrt_version"]

log = logging.getLogger("nasforge.export._tensorrt")  # the name it had before the split

_INSTALL = "pip install 'nasforge[tensorrt]' (needs an NVIDIA GPU and driver)"


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


def make_logger(trt: Any) -> Any:
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
    started = time.perf_counter()
    cache_path = config.timing_cache_for(engine_path)
    serialized, cache, cache_loaded = _build_serialized(
        trt, onnx_path, config, plan, (spec.name, profile_shapes), cache_path
    )
    build_seconds = time.perf_counter() - started
    engine_bytes = atomic_write(engine_path, lambda fh: fh.write(memoryview(serialized))).stat().st_size
    _save_timing_cache(cache, cache_path)
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


def _build_serialized(
    trt: Any,
    onnx_path: Path,
    config: TrtBuildConfig,
    plan: BuildPlan,
    profile: tuple[str, tuple[tuple[int, ...], ...] | None],
    cache_path: Path,
) -> tuple[Any, Any, bool]:
    """Parse ``onnx_path``, configure the builder and build; returns the serialized engine, the timing cache
    as augmented by this build, and whether the cache was loaded from ``cache_path``.

    Raises:
        ExportError: TensorRT cannot parse the file or the build fails (one line, TensorRT's first error).
    """
    version_text = str(trt.__version__)
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, plan))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from the file: external weights are found next to it
        raise ExportError(f"TensorRT {version_text} cannot parse '{onnx_path}': {_parser_errors(parser)}")
    trt_config = builder.create_builder_config()
    trt_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_mb << 20)
    trt_config.builder_optimization_level = config.builder_optimization_level
    for name in plan.builder_flags:
        trt_config.set_flag(_enum_member(trt.BuilderFlag, name, "BuilderFlag"))
    cache, cache_loaded = _load_timing_cache(trt_config, cache_path)
    input_name, shapes = profile
    if shapes is not None:
        optimization = builder.create_optimization_profile()
        optimization.set_shape(input_name, *shapes)
        trt_config.add_optimization_profile(optimization)
    serialized = builder.build_serialized_network(network, trt_config)
    if serialized is None:
        reason = logger.errors[0] if logger.errors else "no reason given; see the TensorRT log"
        raise ExportError(
            f"TensorRT {version_text} failed to build an engine from '{onnx_path}': {_one_line(reason)}"
        )
    return serialized, trt_config.get_timing_cache() or cache, cache_loaded


def _network_flags(trt: Any, plan: BuildPlan) -> int:
    """The ``create_network`` bit mask of the plan's network flags."""
    flags = 0
    for name in plan.network_flags:
        member = getattr(trt.NetworkDefinitionCreationFlag, name, None)
        if member is not None:  # a flag that a later TensorRT dropped because it is always on
            flags |= 1 << int(member)
    return flags


def _save_timing_cache(cache: Any, path: Path) -> None:
    """Write the timing cache; a failure only logs a warning."""
    try:
        atomic_write(path, lambda fh: fh.write(memoryview(cache.serialize())))
    except OSError as err:
        log.warning("cannot save TensorRT timing cache %s: %s", path, err)
