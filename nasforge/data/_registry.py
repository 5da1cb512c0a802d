"""The dataset registry and the contract between :func:`load_data` and a dataset loader.

A loader is a function ``loader(request: DatasetRequest) -> RawDataset`` registered with
:func:`register_dataset`. :func:`load_data` calls it as follows:

1. parse the spec, look the name up, check the path rule and that every option key is declared;
2. call the loader once with a :class:`DatasetRequest` (the loader converts its own option values
   with the ``request.*_option`` helpers, which raise :class:`DataError` on a bad value);
3. split, resize and normalise what the loader returned (a loader never does this itself).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from nasforge.errors import DataError
from nasforge.registry import Registry

__all__ = ["DatasetRequest", "RawDataset", "DatasetEntry", "register_dataset", "list_datasets", "get_dataset"]

PathRule = Literal["none", "required", "optional"]
Kind = Literal["memory", "files"]
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class DatasetRequest:
    """What a loader is asked to produce.

    Attributes:
        name: the registered dataset name (for messages).
        path: the ``:PATH`` part of the spec, or ``None``.
        options: the spec's options, keys already checked against the loader's declared ones.
        image_size: the target side length (the dataset's default when the caller gave none).
        seed: the caller's seed; loaders that generate or subsample data must depend only on it.
    """

    name: str
    path: Path | None
    options: Mapping[str, str]
    image_size: int
    seed: int

    def int_option(self, key: str, default: int, *, low: int, high: int) -> int:
        """Return option ``key`` as an int in ``[low, high]`` (``default`` when absent)."""
        raw = self.options.get(key)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise DataError(
                f"{self.name}: option {key}={raw!r} is not an integer; use a whole number in [{low}, {high}]"
            ) from None
        if not low <= value <= high:
            raise DataError(
                f"{self.name}: option {key}={value} is out of range; use a whole number in [{low}, {high}]"
            )
        return value

    def float_option(self, key: str, default: float, *, low: float, high: float) -> float:
        """Return option ``key`` as a finite float in ``[low, high]`` (``default`` when absent)."""
        raw = self.options.get(key)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise DataError(
                f"{self.name}: option {key}={raw!r} is not a number; use a value in [{low}, {high}]"
            ) from None
        if not math.isfinite(value) or not low <= value <= high:
            raise DataError(
                f"{self.name}: option {key}={raw} is out of range; use a value in [{low}, {high}]"
            )
        return value

    def choice_option(self, key: str, default: str, choices: Iterable[str]) -> str:
        """Return option ``key`` matched case-insensitively against ``choices`` (``default`` when absent)."""
        raw = self.options.get(key)
        if raw is None:
            return default
        by_folded = {choice.casefold(): choice for choice in choices}
        if raw.casefold() not in by_folded:
            raise DataError(
                f"{self.name}: option {key}={raw!r} is not allowed; use one of {sorted(by_folded.values())}"
            )
        return by_folded[raw.casefold()]


@dataclass(frozen=True, eq=False)
class RawDataset:
    """Images as a loader returns them, before splitting, resizing and normalisation.

    Attributes:
        x: ``[N, C, H, W]`` images, ``uint8`` (0..255) or floating point in ``[0, 1]``.
        y: ``[N]`` integer labels in ``[0, len(classes))``.
        classes: class names; the label ``i`` means ``classes[i]``.
        test_x: an official test set (same layout as ``x``), or ``None`` to carve test out of ``x``.
        test_y: labels of ``test_x``, or ``None``.
    """

    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]
    test_x: np.ndarray | None = None
    test_y: np.ndarray | None = None


Loader = Callable[[DatasetRequest], Any]


@dataclass(frozen=True)
class DatasetEntry:
    """One registered dataset: its loader and what its spec may contain."""

    name: str
    loader: Loader
    options: tuple[str, ...]
    path: PathRule
    default_image_size: int
    description: str = field(default="")
    kind: Kind = "memory"


_REGISTRY: Registry[DatasetEntry] = Registry("dataset", missing=DataError)


def register_dataset(
    name: str,
    *,
    options: Iterable[str] = (),
    path: PathRule = "none",
    default_image_size: int = 32,
    kind: Kind = "memory",
) -> Callable[[Loader], Loader]:
    """Register a dataset loader under ``name`` (decorator).

    Args:
        name: the spec name, e.g. ``"digits"``.
        options: the option keys the spec may set; any other key is rejected before the loader runs.
        path: whether the spec needs a ``:PATH`` (``"required"``), must not have one (``"none"``) or may.
        default_image_size: the image side used when the caller passes ``image_size=None``.
        kind: ``"memory"``: the loader returns a :class:`RawDataset` held in memory; ``"files"``: it returns a
            :class:`nasforge.data._files.FileListing` whose images are decoded on demand.

    Returns:
        A decorator that records the loader and returns it unchanged.

    Raises:
        ValueError: ``name`` is malformed or already registered, or ``path`` is not a known rule.
    """
    if not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"dataset name {name!r} is malformed; start with a letter, then letters, digits, '_', '.', '-'"
        )
    if (
        isinstance(default_image_size, bool)
        or not isinstance(default_image_size, int)
        or default_image_size < 4
    ):
        raise ValueError(f"default_image_size {default_image_size!r} is invalid; use an integer >= 4")
    if kind not in ("memory", "files"):
        raise ValueError(f"dataset kind {kind!r} is unknown; use 'memory' or 'files'")
    if path not in ("none", "required", "optional"):
        raise ValueError(f"path rule {path!r} is unknown; use 'none', 'required' or 'optional'")
    keys = tuple(options)

    def decorator(loader: Loader) -> Loader:
        doc = (loader.__doc__ or "").strip().splitlines()
        _REGISTRY.add(name, DatasetEntry(name, loader, keys, path, default_image_size, doc[0] if doc else "", kind))
        return loader

    return decorator


def list_datasets() -> list[str]:
    """Return the registered dataset names, sorted."""
    return _REGISTRY.names()


def get_dataset(name: str) -> DatasetEntry:
    """Return the entry registered as ``name``.

    Raises:
        DataError: no dataset has that name; the message lists the known ones.
    """
    return _REGISTRY.get(name)
