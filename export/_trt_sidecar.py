"""The JSON sidecar written next to a TensorRT engine: how it was built, for which TensorRT and GPU."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._trt_graph import GraphPrecision
from ._trt_plan import BuildPlan, TrtBuildConfig

__all__ = ["EngineInfo", "read_sidecar", "sidecar_path"]


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


def read_sidecar(engine_path: str | Path) -> dict[str, Any] | None:
    """The JSON sidecar of an engine, or ``None`` if it has none (or it is unreadable)."""
    try:
        return json.loads(sidecar_path(engine_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
