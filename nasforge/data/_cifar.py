"""``cifar10:DIR``: the CIFAR-10 *binary* release, parsed with numpy (never pickle).

Each record is 3073 bytes: one label byte, then 1024 red, 1024 green and 1024 blue bytes of a 32x32
image in row-major order. ``data_batch_1.bin`` .. ``data_batch_5.bin`` are the training pool (val is
carved out of it), ``test_batch.bin`` becomes the test split, and ``batches.meta.txt`` (optional)
names the classes, one per line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nasforge.data._registry import DatasetRequest, RawDataset, register_dataset
from nasforge.errors import DataError

__all__ = ["CIFAR10_CLASSES", "read_cifar_batch", "load_cifar10"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_SIDE = 32
_RECORD_BYTES = 1 + 3 * _SIDE * _SIDE
_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_TEST_FILE = "test_batch.bin"
_META_FILE = "batches.meta.txt"
_SUBFOLDER = "cifar-10-batches-bin"


def _find_release(path: Path) -> Path:
    """Return the folder holding the .bin files: ``path`` itself or its ``cifar-10-batches-bin/``."""
    if not path.exists():
        raise DataError(
            f"cifar10: {str(path)!r} does not exist; pass the folder of the CIFAR-10 binary release"
        )
    if not path.is_dir():
        raise DataError(
            f"cifar10: {str(path)!r} is not a directory; pass the folder of the CIFAR-10 binary release "
            f"(holding {_TEST_FILE} or a {_SUBFOLDER}/ subfolder)"
        )
    for folder in (path, path / _SUBFOLDER):
        if any((folder / name).is_file() for name in (*_TRAIN_FILES, _TEST_FILE)):
            return folder
    raise DataError(
        f"cifar10: no CIFAR-10 binary files in {str(path)!r} nor in its {_SUBFOLDER}/; expected "
        f"{', '.join(_TRAIN_FILES)} and {_TEST_FILE} (the 'CIFAR-10 binary version', not the python one)"
    )


def _check_complete(folder: Path) -> None:
    missing = [name for name in (*_TRAIN_FILES, _TEST_FILE) if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"cifar10: {str(folder)!r} lacks {', '.join(missing)}; the release has all six .bin files"
        )


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 binary batch file.

    Returns:
        ``(x, y)``: uint8 ``[N, 3, 32, 32]`` images (channels R, G, B) and int64 ``[N]`` labels.

    Raises:
        DataError: the file is empty or its size is not a multiple of 3073 bytes.
    """
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _RECORD_BYTES:
        raise DataError(
            f"cifar10: {str(path)!r} has {raw.size} bytes, not a positive multiple of {_RECORD_BYTES} "
            f"(1 label byte + 3072 pixel bytes per image); the file is truncated or not a CIFAR-10 binary batch"
        )
    records = raw.reshape(-1, _RECORD_BYTES)
    return records[:, 1:].reshape(-1, 3, _SIDE, _SIDE), records[:, 0].astype(np.int64)


def _read_classes(folder: Path) -> tuple[str, ...]:
    meta = folder / _META_FILE
    if not meta.is_file():
        return CIFAR10_CLASSES
    names = tuple(line.strip() for line in meta.read_text(encoding="utf-8").splitlines() if line.strip())
    if len(names) != len(CIFAR10_CLASSES):
        raise DataError(
            f"cifar10: {str(meta)!r} names {len(names)} classes, expected {len(CIFAR10_CLASSES)} "
            f"(one per line); fix or delete the file to use the standard names"
        )
    return names


def _read_batches(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    parts = [read_cifar_batch(path) for path in paths]
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])


def _stratified_subset(y: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Indices of a seeded, class-stratified subset of ``limit`` labels (sorted)."""
    from sklearn.model_selection import train_test_split

    try:
        keep, _ = train_test_split(np.arange(len(y)), train_size=limit, stratify=y, random_state=seed)
    except ValueError as err:  # sklearn says which class cannot be kept
        raise DataError(f"cifar10: limit={limit} cannot keep every class ({err}); raise limit") from None
    return np.sort(keep)


@register_dataset("cifar10", options=("limit",), path="required", default_image_size=32)
def load_cifar10(request: DatasetRequest) -> RawDataset:
    """CIFAR-10 binary release in DIR (or DIR/cifar-10-batches-bin); option limit caps the training images."""
    assert request.path is not None  # guaranteed by path="required"
    limit = request.int_option("limit", 10**9, low=1, high=10**9)
    folder = _find_release(request.path)
    _check_complete(folder)
    x, y = _read_batches([folder / name for name in _TRAIN_FILES])
    if limit < len(y):
        keep = _stratified_subset(y, limit, request.seed)
        x, y = x[keep], y[keep]
    test_x, test_y = read_cifar_batch(folder / _TEST_FILE)
    return RawDataset(x=x, y=y, classes=_read_classes(folder), test_x=test_x, test_y=test_y)
