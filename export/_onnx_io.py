"""The ONNX input helpers, re-exported from their home :mod:`nasforge.onnx_io` for export's own modules."""

from nasforge.onnx_io import (
    InputSpec,
    first_line,
    load_onnx,
    open_session,
    ort_errors,
    read_metadata,
    single_input_spec,
)

__all__ = [
    "InputSpec",
    "first_line",
    "load_onnx",
    "open_session",
    "ort_errors",
    "read_metadata",
    "single_input_spec",
]
