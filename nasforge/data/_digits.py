"""``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes, no download)."""

from __future__ import annotations

import numpy as np

from nasforge.data._registry import DatasetRequest, RawDataset, register_dataset

__all__ = ["load_digits_raw"]

_MAX_PIXEL = 16.0  # load_digits stores counts 0..16 per pixel


@register_dataset("digits", default_image_size=16)
def load_digits_raw(request: DatasetRequest) -> RawDataset:
    """scikit-learn's 8x8 handwritten digits, scaled to [0, 1], 1 channel (bilinear upsampling to image_size)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / _MAX_PIXEL)[:, None, :, :]
    y = np.asarray(bunch.target, dtype=np.int64)
    return RawDataset(x=x, y=y, classes=tuple(str(digit) for digit in range(10)))
