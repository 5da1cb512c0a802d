"""Graph slimming: onnxruntime's hardware-independent ("basic") optimisations, kept only when they help.

Basic-level rewrites (constant folding, redundant-node elimination, semantics-preserving fusions such as
Conv+BatchNorm) produce a graph that any ONNX runtime can execute, unlike the "extended"/"all" levels, which
insert onnxruntime-specific operators. The slimmed graph replaces the file only if it has fewer nodes, passes
``onnx.checker`` and gives the original's outputs within ``atol`` on the given inputs.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nasforge.errors import ExportError
from nasforge.runlock import temp_prefix

from ._onnx_io import first_line, load_onnx, open_session, ort_errors, single_input_spec

__all__ = ["slim_onnx"]


def slim_onnx(path: str | Path, inputs: Sequence[np.ndarray], *, atol: float = 1e-4) -> dict[str, Any]:
    """Try to slim the ONNX file at ``path`` in place; returns what happened.

    Returns:
        ``{"nodes_before", "nodes_after", "kept", "max_abs_diff", "reason"}``; ``kept`` says whether the file was
        replaced.

    Raises:
        ExportError: the original file cannot be loaded or run.
    """
    import onnx
    import onnxruntime as ort

    path = Path(path)
    original = load_onnx(path)
    name = single_input_spec(original, path).name
    before = len(original.graph.node)
    with tempfile.TemporaryDirectory(prefix=temp_prefix(path.name), suffix=".slim", dir=path.parent) as tmp:
        slim_path = Path(tmp) / path.name
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(slim_path)
        options.log_severity_level = 3
        try:
            ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except ort_errors() as err:
            raise ExportError(f"onnxruntime cannot optimise '{path}': {first_line(err)}") from err
        slim = onnx.load(str(slim_path))
        after = len(slim.graph.node)
        report: dict[str, Any] = {"nodes_before": before, "nodes_after": after, "kept": False,
                                  "max_abs_diff": None, "reason": ""}
        if after >= before:
            report["reason"] = "no nodes removed"
            return report
        # keep the file's identity: metadata, IR version and opsets of the original
        del slim.metadata_props[:]
        slim.metadata_props.extend(original.metadata_props)
        slim.ir_version = original.ir_version
        try:
            onnx.checker.check_model(slim)
        except onnx.checker.ValidationError as err:
            report["reason"] = f"the slimmed graph fails onnx.checker: {first_line(err)}"
            return report
        data = slim.SerializeToString()
        worst = _max_abs_diff(path, data, name, inputs)
        report["max_abs_diff"] = worst
        if worst > atol:
            report["reason"] = f"outputs differ by {worst:.3g} > atol {atol:g}"
            return report
        staged = Path(tmp) / "staged.onnx"
        staged.write_bytes(data)
        os.replace(staged, path)
        report["kept"] = True
        report["reason"] = f"removed {before - after} of {before} nodes"
        return report


def _max_abs_diff(path: Path, data: bytes, name: str, inputs: Sequence[np.ndarray]) -> float:
    """Largest absolute difference of the first output between the file at ``path`` and the model ``data``."""
    reference = open_session(path, threads=1, optimization="disable")
    candidate = open_session(data, threads=1, optimization="disable")
    worst = 0.0
    for x in inputs:
        a = reference.run(None, {name: x})[0]
        b = candidate.run(None, {name: x})[0]
        worst = max(worst, float(np.max(np.abs(a - b))) if a.size else 0.0)
    return worst
