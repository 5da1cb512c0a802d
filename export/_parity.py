"""Parity between a PyTorch module and its ONNX export, measured in onnxruntime."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nasforge.errors import ConfigError, ExportError

from ._onnx_io import first_line, load_onnx, open_session, ort_errors

if TYPE_CHECKING:
    import onnxruntime
    import torch

__all__ = ["check_parity", "eval_mode", "max_abs_diff", "session_parity"]


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put every submodule of ``model`` in eval mode, then restore each one's previous mode."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def max_abs_diff(expected: np.ndarray, actual: np.ndarray) -> float:
    """Largest absolute difference; NaN in both arrays at one position counts as equal, NaN in one as inf.

    Raises:
        ExportError: the shapes differ.
    """
    if expected.shape != actual.shape:
        raise ExportError(
            f"ONNX output shape {actual.shape} differs from PyTorch output shape {expected.shape}"
        )
    if expected.size == 0:
        return 0.0
    diff = np.abs(expected.astype(np.float64) - actual.astype(np.float64))
    diff[np.isnan(expected) & np.isnan(actual)] = 0.0
    diff[np.isnan(diff)] = np.inf
    return float(diff.max())


def _torch_output(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """Run ``model`` eagerly on ``x`` and return its single tensor output as numpy."""
    import torch

    with torch.no_grad():
        out = model(x)
    if not isinstance(out, torch.Tensor):
        raise ExportError(
            f"the model returned {type(out).__name__}, not a tensor; wrap it so forward returns one tensor"
        )
    return out.detach().cpu().numpy()


def session_parity(
    model: torch.nn.Module, session: onnxruntime.InferenceSession, inputs: Sequence[torch.Tensor]
) -> float:
    """Worst max-abs-diff between ``model`` (eval mode, no grad) and ``session`` over ``inputs``.

    Raises:
        ExportError: onnxruntime rejects an input, or an output shape differs.
    """
    input_name = session.get_inputs()[0].name
    worst = 0.0
    with eval_mode(model):
        for x in inputs:
            expected = _torch_output(model, x)
            try:
                actual = session.run(None, {input_name: x.detach().cpu().numpy()})[0]
            except ort_errors() as err:
                raise ExportError(
                    f"onnxruntime failed on an input of shape {tuple(x.shape)}: {first_line(err)}"
                ) from err
            worst = max(worst, max_abs_diff(expected, actual))
    return worst


def check_parity(model: torch.nn.Module, onnx_path: str | Path, inputs: Sequence[torch.Tensor]) -> float:
    """Compare ``model`` with the ONNX file ``onnx_path`` in onnxruntime (CPU) on every tensor in ``inputs``.

    The model runs in eval mode under ``torch.no_grad()``; its previous mode is restored afterwards.

    Args:
        model: the PyTorch module the file was exported from; its forward takes one tensor, returns one.
        onnx_path: the exported ``.onnx`` file (single input).
        inputs: input tensors, each a valid input of both models.

    Returns:
        The largest absolute difference between the outputs over all inputs.

    Raises:
        ConfigError: ``inputs`` is empty.
        ExportError: the file is missing or invalid, onnxruntime rejects an input, or output shapes differ.
    """
    if len(inputs) == 0:
        raise ConfigError("check_parity got no inputs; pass at least one input tensor")
    load_onnx(onnx_path)
    session = open_session(onnx_path)
    return session_parity(model, session, inputs)
