"""``load_data``: spec -> loader -> stratified split -> resize -> per-channel normalisation."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nasforge.data._augment import AugmentRecipe
from nasforge.data._file_splits import file_splits
from nasforge.data._registry import DatasetEntry, DatasetRequest, RawDataset, get_dataset
from nasforge.data._spec import parse_spec
from nasforge.data._splits import DataSplits, Split
from nasforge.data._stream import LoaderOptions
from nasforge.errors import DataError

__all__ = ["check_spec", "load_data"]

_MIN_IMAGE_SIZE = 4


def load_data(
    spec: str,
    *,
    image_size: int | None = None,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    augment: AugmentRecipe | Mapping[str, Any] | None = None,
    loading: LoaderOptions | None = None,
) -> DataSplits:
    """Load a registered dataset and split it into train, val and test.

    Splits are stratified and depend only on ``seed``. In-memory datasets (digits, shapes, cifar10) are
    normalised with the train split's per-channel mean and std; image-file datasets (``folder:``,
    ``imagenet:``) are listed, not read: their splits are :class:`FileSplit` objects decoded on demand with
    the ``augment`` recipe (Once-for-All's ImageNet recipe by default, its normalisation included).

    Args:
        spec: ``NAME[:PATH][?key=value&...]``, e.g. ``"digits"``, ``"shapes?n=500&classes=4"``,
            ``"cifar10:/data/cifar?limit=5000"``, ``"folder:/data/pets?mode=L"``.
        image_size: side length of the square images; ``None`` uses the dataset's default.
        seed: a non-negative integer; the same seed gives the same splits (and generated images).
        val_fraction: share of the images that goes to val, in ``(0, 0.5)``. For datasets with an
            official test set (cifar10) it is the share of the official training images.
        test_fraction: share of the images that goes to test, in ``(0, 0.5)``; ignored by datasets
            with an official test set.
        augment: image-file datasets only: an :class:`AugmentRecipe` or a mapping of its fields (``preset``
            too).
        loading: image-file datasets only: loader workers, prefetch and the bad-image threshold.

    Returns:
        The :class:`DataSplits`.

    Raises:
        DataError: the spec, an option, a path, a file or an argument is invalid, or a split would
            miss a class.
    """
    entry, request = _make_request(spec, image_size, seed, val_fraction, test_fraction)
    if entry.kind == "files":
        return file_splits(entry.loader(request), request, _stratified_split, val_fraction=val_fraction,
                           test_fraction=test_fraction, augment=augment, loading=loading, spec=spec)
    return _memory_splits(entry.loader(request), request, spec, val_fraction, test_fraction)


def _make_request(
    spec: str, image_size: int | None, seed: int, val_fraction: float, test_fraction: float
) -> tuple[DatasetEntry, DatasetRequest]:
    """Check the spec and the arguments of :func:`load_data`; return the dataset's entry and its request."""
    name, path, options = parse_spec(spec)
    entry = get_dataset(name)
    _check_spec_against(entry, spec, path, options)
    size = _check_image_size(entry.default_image_size if image_size is None else image_size)
    _check_seed(seed)
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    request = DatasetRequest(
        name, Path(path).expanduser() if path else None, MappingProxyType(options), size, seed
    )
    return entry, request


def _memory_splits(
    raw: RawDataset, request: DatasetRequest, spec: str, val_fraction: float, test_fraction: float
) -> DataSplits:
    """Split, resize and normalise what an in-memory loader returned."""
    name, size, seed = request.name, request.image_size, request.seed
    labels, num_classes = _check_raw(raw, name)
    train_idx, val_idx, test_idx = _split_indices(raw, labels, seed, val_fraction, test_fraction, name)
    train_x = _to_float(raw.x[train_idx], size)
    mean, std = _channel_stats(train_x)
    test_x, test_y = (
        (raw.x[test_idx], labels[test_idx]) if raw.test_x is None else (raw.test_x, _labels(raw.test_y))
    )
    return DataSplits(
        name=name,
        train=_make_split(train_x, labels[train_idx], mean, std),
        val=_make_split(_to_float(raw.x[val_idx], size), labels[val_idx], mean, std),
        test=_make_split(_to_float(test_x, size), test_y, mean, std),
        num_classes=num_classes,
        in_channels=int(train_x.shape[1]),
        image_size=size,
        classes=tuple(raw.classes),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        spec=spec.strip(),
        seed=seed,
    )


def check_spec(spec: str) -> None:
    """Check ``spec`` without reading data: it parses, names a registered dataset with the options it declares,
    and its path (if any) exists.

    Raises:
        DataError: one line naming what is wrong and what to write instead.
    """
    name, path, options = parse_spec(spec)
    entry = get_dataset(name)
    _check_spec_against(entry, spec, path, options)
    if path is not None and not Path(path).expanduser().exists():
        raise DataError(f"dataset spec {spec!r}: {path} does not exist; pass the folder that holds the data")


def _check_spec_against(entry: DatasetEntry, spec: str, path: str | None, options: dict[str, str]) -> None:
    """Apply the entry's path rule and reject option keys it did not declare."""
    if entry.path == "required" and path is None:
        raise DataError(
            f"dataset {entry.name!r} needs a path; write '{entry.name}:/path/to/data' (got {spec!r})"
        )
    if entry.path == "none" and path is not None:
        raise DataError(
            f"dataset {entry.name!r} takes no path but {spec!r} gives {path!r}; drop the ':{path}' part"
        )
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        allowed = ", ".join(entry.options) if entry.options else "none"
        raise DataError(
            f"dataset {entry.name!r} has no option {unknown[0]!r} (in {spec!r}); allowed keys: {allowed}"
        )


def _check_image_size(image_size: object) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < _MIN_IMAGE_SIZE:
        raise DataError(
            f"image_size {image_size!r} is invalid; pass an integer >= {_MIN_IMAGE_SIZE}, e.g. 32"
        )
    return image_size


def _check_seed(seed: object) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise DataError(f"seed {seed!r} is invalid; pass an integer in [0, 2**32), e.g. 0")


def _check_fraction(label: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 0.5:
        raise DataError(f"{label} {value!r} is invalid; pass a number strictly between 0 and 0.5, e.g. 0.2")


def _labels(y: np.ndarray | None) -> np.ndarray:
    return np.asarray(y).astype(np.int64, copy=False).reshape(-1)


def _check_raw(raw: RawDataset, name: str) -> tuple[np.ndarray, int]:
    """Check a loader's output; return the int64 labels and the number of classes."""
    num_classes = len(raw.classes)
    if (raw.test_x is None) != (raw.test_y is None):
        raise DataError(f"{name}: loader returned only one of test_x/test_y; return both or neither")
    if raw.test_x is not None and raw.test_x.shape[1:2] != raw.x.shape[1:2]:
        raise DataError(
            f"{name}: test images have {raw.test_x.shape[1]} channels but train images {raw.x.shape[1]}"
        )
    pairs = [("", raw.x, raw.y)] + ([] if raw.test_x is None else [("test_", raw.test_x, raw.test_y)])
    for prefix, x, y in pairs:
        y = _labels(y)
        if x.ndim != 4 or x.shape[0] != len(y):
            raise DataError(
                f"{name}: loader returned {prefix}x {x.shape} for {len(y)} labels; expected [N, C, H, W]"
            )
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise DataError(f"{name}: labels must lie in [0, {num_classes}) but span [{y.min()}, {y.max()}]")
    if num_classes < 2:
        raise DataError(
            f"{name}: found {num_classes} class(es) {list(raw.classes)}; a classifier needs at least 2"
        )
    return _labels(raw.y), num_classes


def _split_indices(
    raw: RawDataset, y: np.ndarray, seed: int, val_fraction: float, test_fraction: float, name: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified train/val/test indices into ``raw.x`` (test is empty when ``raw`` has its own test set)."""
    seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(2)]
    num_classes = len(raw.classes)
    if raw.test_x is None:
        rest, test = _stratified_split(np.arange(len(y)), y, test_fraction, seeds[0], name)
        train, val = _stratified_split(rest, y[rest], val_fraction / (1.0 - test_fraction), seeds[1], name)
        _check_every_class(y, {"train": train, "val": val, "test": test}, num_classes, name)
    else:
        train, val = _stratified_split(np.arange(len(y)), y, val_fraction, seeds[1], name)
        test = np.arange(0)
        _check_every_class(y, {"train": train, "val": val}, num_classes, name)
        _check_every_class(_labels(raw.test_y), {"test": np.arange(len(raw.test_x))}, num_classes, name)
    return np.sort(train), np.sort(val), np.sort(test)


def _stratified_split(
    index: np.ndarray, y: np.ndarray, fraction: float, seed: int, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``index`` into ``(keep, taken)`` with ``taken`` a stratified ``fraction`` of it."""
    from sklearn.model_selection import train_test_split

    counts = np.bincount(y)
    smallest = int(counts[counts > 0].min()) if len(y) else 0
    if smallest < 2:
        raise DataError(f"{name}: a class has only {smallest} image(s) in a pool of {len(y)}; {_SUGGESTION}")
    try:
        keep, taken = train_test_split(index, test_size=fraction, stratify=y, random_state=seed, shuffle=True)
    except ValueError as err:  # sklearn's message says which split is smaller than the number of classes
        raise DataError(f"{name}: cannot split {len(y)} images by class ({err}); {_SUGGESTION}") from None
    return np.asarray(keep), np.asarray(taken)


_SUGGESTION = (
    "every split needs each class at least once: use more images per class or a larger val/test fraction"
)


def _check_every_class(y: np.ndarray, splits: dict[str, np.ndarray], num_classes: int, name: str) -> None:
    for split_name, index in splits.items():
        missing = sorted(set(range(num_classes)) - set(np.unique(y[index]).tolist()))
        if missing:
            raise DataError(
                f"{name}: the {split_name} split has no image of class(es) {missing}; {_SUGGESTION}"
            )


def _to_float(x: np.ndarray, size: int) -> torch.Tensor:
    """Convert ``uint8`` (0..255) or float ([0, 1]) images to float32 and resize them to ``size`` (bilinear)."""
    tensor = torch.from_numpy(np.ascontiguousarray(x))
    tensor = (
        tensor.float().div_(255.0) if tensor.dtype == torch.uint8 else tensor.to(torch.float32, copy=True)
    )
    height, width = tensor.shape[-2:]
    if (height, width) == (size, size):
        return tensor.contiguous()
    shrink = size < min(height, width)  # antialias only matters (and only helps) when shrinking
    return F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (population) std of ``x``; a constant channel gets std 1."""
    std, mean = torch.std_mean(x, dim=(0, 2, 3), correction=0)
    return mean, torch.where(std > 1e-6, std, torch.ones_like(std))


def _make_split(x: torch.Tensor, y: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> Split:
    x = x.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))
    return Split(x=x, y=torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)))
