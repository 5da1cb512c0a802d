"""Split a listing of image files into train/val/test :class:`FileSplit` objects (nothing is decoded)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from nasforge.data._augment import AugmentRecipe
from nasforge.data._files import FileListing
from nasforge.data._registry import DatasetRequest
from nasforge.data._splits import DataSplits
from nasforge.data._stream import FileSplit, LoaderOptions
from nasforge.errors import DataError

__all__ = ["file_splits", "make_recipe"]

#: Once-for-All holds out this many training images as its validation split on ImageNet
DEFAULT_VAL_IMAGES = 10_000

Splitter = Callable[[np.ndarray, np.ndarray, float, int, str], tuple[np.ndarray, np.ndarray]]


def make_recipe(augment: AugmentRecipe | Mapping[str, Any] | None, mode: str) -> AugmentRecipe:
    """The recipe from ``augment`` (a recipe, a mapping of its fields, or ``None`` for the default), in
    ``mode`` (``RGB``/``L``); a grayscale recipe without its own normalisation uses the RGB constants' means."""
    if isinstance(augment, AugmentRecipe):
        recipe = augment
    else:
        values = dict(augment or {})
        gray_default = mode == "L" and "mean" not in values and "std" not in values
        recipe = AugmentRecipe.from_dict({**values, "mode": mode} if not gray_default else values)
        if gray_default:
            recipe = replace(recipe, mode="L", mean=(float(np.mean(recipe.mean)),), std=(float(np.mean(recipe.std)),))
    if recipe.mode != mode:
        recipe = replace(recipe, mode=mode)
    return recipe


def file_splits(listing: FileListing, request: DatasetRequest, split: Splitter, *, val_fraction: float,
                test_fraction: float, augment: AugmentRecipe | Mapping[str, Any] | None,
                loading: LoaderOptions | None, spec: str) -> DataSplits:
    """Stratified train/val/test :class:`FileSplit` objects, each in its own seeded random order.

    With an official test set (``imagenet:DIR/val``), val is ``?val=N`` training images (default
    ``min(10000, val_fraction x train)``); otherwise val and test are the usual fractions of the listing.
    """
    mode = request.choice_option("mode", "RGB", ("RGB", "L"))
    recipe = make_recipe(augment, mode)
    loading = loading or LoaderOptions()
    name, labels, seed = request.name, listing.labels, request.seed
    seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(4)]
    everything = np.arange(len(labels))
    if listing.test_files is None:
        rest, test = split(everything, labels, test_fraction, seeds[0], name)
        train, val = split(rest, labels[rest], val_fraction / (1.0 - test_fraction), seeds[1], name)
        test_table, test_labels = listing.files.take(test), labels[test]
    else:
        default = min(DEFAULT_VAL_IMAGES, max(len(listing.classes), round(val_fraction * len(labels))))
        count = request.int_option("val", default, low=len(listing.classes), high=max(len(listing.classes),
                                                                                      len(labels) // 2))
        train, val = split(everything, labels, count / len(labels), seeds[1], name)
        test_table, test_labels = listing.test_files, listing.test_labels
        assert test_labels is not None
    _check_classes(labels, {"train": train, "val": val}, len(listing.classes), name)

    def make(table: Any, y: np.ndarray, salt: int) -> FileSplit:
        order = np.random.default_rng([seed, salt]).permutation(len(y))
        return FileSplit(table.take(order), np.ascontiguousarray(y[order]), request.image_size, recipe, loading)

    return DataSplits(
        name=name, train=make(listing.files.take(train), labels[train], 1),  # type: ignore[arg-type]
        val=make(listing.files.take(val), labels[val], 2),  # type: ignore[arg-type]
        test=make(test_table, np.asarray(test_labels), 3),  # type: ignore[arg-type]
        num_classes=len(listing.classes), in_channels=recipe.channels, image_size=request.image_size,
        classes=tuple(listing.classes), mean=tuple(recipe.mean), std=tuple(recipe.std), spec=spec.strip(), seed=seed,
    )


def _check_classes(y: np.ndarray, splits: dict[str, np.ndarray], num_classes: int, name: str) -> None:
    for split_name, index in splits.items():
        missing = sorted(set(range(num_classes)) - set(np.unique(y[index]).tolist()))
        if missing:
            raise DataError(f"{name}: the {split_name} split has no image of class(es) {missing[:5]}; use more "
                            "images per class or a larger val fraction")
