"""Load ONNX files and open onnxruntime sessions, with one-line errors instead of protobuf tracebacks.

A foundation module, below ``quantize`` and ``export`` which both read ONNX inputs with it; ``onnx`` and
``onnxruntime`` are imported inside the functions that need them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nasforge.errors import ExportError

if TYPE_CHECKING:
    import numpy as np
    import onnx
    import onnxruntime

__all__ = [
    "InputSpec",
    "first_line",
    "load_onnx",
    "open_session",
    "ort_errors",
    "read_metadata",
    "single_input_spec",
]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# onnxruntime's pybind exceptions derive from Exception directly; these are raised for a bad model or input.
_ORT_ERROR_NAMES = (
    "Fail",
    "InvalidArgument",
    "InvalidGraph",
    "InvalidProtobuf",
    "NoSuchFile",
    "NotImplemented",
    "RuntimeException",
    "EPFail",
)


def ort_errors() -> tuple[type[Exception], ...]:
    """The exception classes onnxruntime raises for a bad model or a bad input (for ``except`` clauses)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return tuple(getattr(state, name) for name in _ORT_ERROR_NAMES if hasattr(state, name))


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message without colour codes (messages can span pages)."""
    for line in _ANSI.sub("", str(err)).splitlines():
        if line.strip():
            return line.strip()
    return type(err).__name__


def load_onnx(path: str | Path, *, load_external_data: bool = False, check: bool = True) -> onnx.ModelProto:
    """Load and validate an ONNX file.

    Args:
        path: the ``.onnx`` file.
        load_external_data: also read weights stored in side files.
        check: run ``onnx.checker.check_model`` (catches empty or truncated files that still parse).

    Raises:
        ExportError: the file is missing or is not a valid ONNX model (one-line message).
    """
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"no ONNX file at '{path}'; export one first with nasforge.export.export_onnx")
    try:
        model = onnx.load(str(path), load_external_data=load_external_data)
        if check:
            onnx.checker.check_model(model)
    except (DecodeError, onnx.checker.ValidationError, OSError, ValueError) as err:
        raise ExportError(
            f"'{path}' is not a valid ONNX model ({first_line(err)}); re-export it with export_onnx"
        ) from err
    return model


def read_metadata(path: str | Path) -> dict[str, str]:
    """Return the ``metadata_props`` of an ONNX file as a dict.

    Raises:
        ExportError: the file is missing or is not a valid ONNX model.
    """
    model = load_onnx(path, load_external_data=False, check=False)
    if not model.HasField("graph"):
        raise ExportError(
            f"'{path}' is not a valid ONNX model (it has no graph); re-export it with export_onnx"
        )
    return {prop.key: prop.value for prop in model.metadata_props}


def open_session(
    model: str | Path | bytes, *, threads: int | None = None, optimization: str = "all"
) -> onnxruntime.InferenceSession:
    """Open an onnxruntime CPU session on a file path or serialized model bytes.

    Args:
        model: path of an ``.onnx`` file, or the bytes of a serialized model.
        threads: ``intra_op_num_threads`` (``None`` leaves onnxruntime's default); inter-op threads are 1 and
            execution is sequential.
        optimization: graph optimisation level, ``"all"``, ``"extended"``, ``"basic"`` or ``"disable"``.

    Raises:
        ExportError: onnxruntime cannot load the model.
    """
    import onnxruntime as ort

    levels = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[optimization]
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads is not None:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: ORT's warnings would otherwise go straight to stderr
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])
    except ort_errors() as err:
        name = "the exported model" if isinstance(model, bytes) else f"'{model}'"
        raise ExportError(f"onnxruntime cannot load {name}: {first_line(err)}") from err


@dataclass(frozen=True)
class InputSpec:
    """The one graph input of a model: its name, numpy dtype and dims (``None`` for a dynamic dim)."""

    name: str
    dtype: np.dtype[Any]
    dims: tuple[int | None, ...]


def single_input_spec(model: onnx.ModelProto, path: str | Path) -> InputSpec:
    """Describe the single runtime input of ``model`` (graph inputs that are initializers do not count).

    Raises:
        ExportError: the model has zero or several runtime inputs, or a non-tensor input.
    """
    from onnx.helper import tensor_dtype_to_np_dtype

    initializers = {init.name for init in model.graph.initializer}
    inputs = [inp for inp in model.graph.input if inp.name not in initializers]
    if len(inputs) != 1:
        names = [inp.name for inp in inputs]
        raise ExportError(
            f"'{path}' has {len(inputs)} inputs {names}; only single-input models are supported"
        )
    inp = inputs[0]
    if not inp.type.HasField("tensor_type"):
        raise ExportError(f"input '{inp.name}' of '{path}' is not a tensor; only tensor inputs are supported")
    tensor = inp.type.tensor_type
    dims = tuple(
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim
    )
    return InputSpec(inp.name, tensor_dtype_to_np_dtype(tensor.elem_type), dims)
