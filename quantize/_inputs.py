"""Feed task data to an ONNX model: fit images to its input and hand batches to onnxruntime's calibrator."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from nasforge.errors import DataError

if TYPE_CHECKING:
    import torch

__all__ = ["ArrayReader", "fit_inputs"]


def fit_inputs(x: torch.Tensor | np.ndarray, dims: Sequence[int | None], name: str = "the model") -> np.ndarray:
    """``x`` (``[N, C, H, W]`` images) shaped for an input of ``dims`` (batch dim first): images are resized
    bilinearly to its H x W; a rank-2 input gets the images flattened.

    Raises:
        DataError: the channels or the flattened size do not match (the message gives both shapes).
    """
    import torch

    t = torch.as_tensor(np.asarray(x, dtype=np.float32))
    want = list(dims[1:])
    if len(dims) == 4 and t.dim() == 4:
        c, h, w = want
        if c is not None and t.shape[1] != c:
            raise DataError(f"{name} takes {c}-channel images but the data has {t.shape[1]} channels; "
                            "pass the --data the model was trained on")
        if h is not None and w is not None and tuple(t.shape[2:]) != (h, w):
            t = torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
        return t.numpy()
    if len(dims) == 2:
        flat = t.reshape(t.shape[0], -1)
        if want[0] is not None and flat.shape[1] != want[0]:
            raise DataError(f"{name} takes {want[0]} features but the data gives {flat.shape[1]} per sample; "
                            "pass the --data the model was trained on")
        return flat.numpy()
    if t.dim() == len(dims) and all(d is None or d == s for d, s in zip(want, t.shape[1:], strict=True)):
        return t.numpy()
    raise DataError(f"{name} takes inputs of shape {list(dims)} but the data has shape {list(t.shape)}")


class ArrayReader:
    """onnxruntime ``CalibrationDataReader`` over an array: one ``{input: batch}`` feed per call, then ``None``."""

    def __init__(self, input_name: str, x: np.ndarray, batch: int = 32, fixed_batch: int | None = None) -> None:
        self.input_name = input_name
        step = fixed_batch or batch
        stop = len(x) - len(x) % step if fixed_batch else len(x)
        self._batches: Iterator[np.ndarray] = iter([x[i : i + step] for i in range(0, stop, step)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:  # part of the CalibrationDataReader protocol; calibration reads once
        pass
