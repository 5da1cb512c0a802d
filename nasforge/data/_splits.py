"""In-memory splits: :class:`Split` (one split) and :class:`DataSplits` (train, val and test)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from nasforge.data._order import EpochPlan, StreamStats
from nasforge.errors import DataError

__all__ = ["Split", "DataSplits", "resize_batch", "batch_indices"]


@dataclass(frozen=True, eq=False)
class Split:
    """One split of a dataset, held in memory.

    Attributes:
        x: float32 ``[N, C, H, W]`` images, normalised with the train split's per-channel mean/std.
        y: int64 ``[N]`` labels.
    """

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.dtype != torch.float32 or self.x.dim() != 4:
            raise DataError(
                f"Split.x must be a float32 [N, C, H, W] tensor, got {self.x.dtype} {tuple(self.x.shape)}"
            )
        if self.y.dtype != torch.int64 or self.y.dim() != 1:
            raise DataError(f"Split.y must be an int64 [N] tensor, got {self.y.dtype} {tuple(self.y.shape)}")
        if len(self.x) != len(self.y):
            raise DataError(
                f"Split has {len(self.x)} images but {len(self.y)} labels; give one label per image"
            )

    def __len__(self) -> int:
        return len(self.y)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate over ``(x, y)`` mini-batches covering every sample once.

        Args:
            batch_size: samples per batch (the last batch may be smaller unless ``drop_last``).
            shuffle: visit samples in a random order drawn from ``generator``.
            generator: the source of the shuffle order; the same seeded generator state gives the same
                order. ``None`` uses torch's default generator.
            drop_last: skip the final batch when it is smaller than ``batch_size``.

        Returns:
            An iterator of ``(images, labels)`` pairs.

        Raises:
            DataError: ``batch_size`` is not a positive integer.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"batch_size {batch_size!r} is not a positive integer; pass e.g. 64")
        order = torch.randperm(len(self), generator=generator) if shuffle else None
        return self._iter_batches(batch_size, order, drop_last)

    def head(self, n: int) -> torch.Tensor:
        """The first ``n`` images (all when fewer)."""
        return self.x[:n]

    def epoch_stream(self, plan: EpochPlan, device: torch.device | str = "cpu",
                     stats: StreamStats | None = None) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """This process's batches of one training epoch: ``(global batch index, x, y)`` on ``device``, ``x``
        resized to ``plan.resolution_of(index)`` (see :class:`EpochPlan`)."""
        stats = stats if stats is not None else StreamStats()
        return stats.timed(self._epoch(plan, torch.device(device), stats))  # type: ignore[return-value]

    def _epoch(self, plan: EpochPlan, device: torch.device,
               stats: StreamStats) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        for b, index, _ in plan:
            x, y = self.x[index], self.y[index]
            if plan.resolution_of is not None:
                x = resize_batch(x, plan.resolution_of(b))
            stats.images += len(y)
            yield b, x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def eval_batches(self, batch_size: int, resolution: int | None = None, *, rank: int = 0, world: int = 1,
                     limit: int | None = None, device: torch.device | str = "cpu",
                     augment_seed: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches over the first ``limit`` samples (all by default), resized to ``resolution``; process ``rank``
        of ``world`` takes batches ``rank``, ``rank + world``, ... (the batches are the same whatever the number of
        processes). In-memory images are already transformed, so ``augment_seed`` (random training transforms
        for BN calibration) changes nothing here."""
        for index in batch_indices(len(self) if limit is None else min(limit, len(self)), batch_size, rank, world):
            x = self.x[index]
            if resolution is not None:
                x = resize_batch(x, resolution)
            yield x.to(device), self.y[index].to(device)

    def _iter_batches(
        self, batch_size: int, order: torch.Tensor | None, drop_last: bool
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            if order is None:
                yield self.x[start : start + batch_size], self.y[start : start + batch_size]
            else:
                index = order[start : start + batch_size]
                yield self.x[index], self.y[index]


def batch_indices(n: int, batch_size: int, rank: int = 0, world: int = 1) -> Iterator[torch.Tensor]:
    """Consecutive batches of ``range(n)``, every ``world``-th one from ``rank``."""
    for start in range(rank * batch_size, n, world * batch_size):
        yield torch.arange(start, min(n, start + batch_size))


def resize_batch(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Bilinearly resize ``[N, C, H, W]`` to ``resolution`` x ``resolution`` (no-op when equal)."""
    if x.shape[-1] == resolution and x.shape[-2] == resolution:
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)


@dataclass(frozen=True, eq=False)
class DataSplits:
    """A dataset split into train, val and test, with the metadata a model needs.

    Attributes:
        name: the dataset name, e.g. ``"digits"``.
        train, val, test: the splits.
        num_classes: number of classes (``len(classes)``).
        in_channels: image channels (1 for grayscale, 3 for RGB).
        image_size: image side length (``H == W``).
        classes: class names; label ``i`` means ``classes[i]``.
        mean, std: the per-channel normalisation applied to every split (computed on train).
        spec: the spec the data was loaded from (empty when built by hand).
        seed: the seed the data was loaded with.
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    in_channels: int
    image_size: int
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    spec: str = ""
    seed: int = 0

    def describe(self) -> dict[str, Any]:
        """Return a JSON-able summary: name, spec, seed, shape, classes, normalisation, sizes and class counts."""
        splits = {"train": self.train, "val": self.val, "test": self.test}
        return {
            "name": self.name,
            "spec": self.spec,
            "seed": self.seed,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "classes": list(self.classes),
            "mean": [float(m) for m in self.mean],
            "std": [float(s) for s in self.std],
            "sizes": {key: len(split) for key, split in splits.items()},
            "class_counts": {key: self._class_counts(split) for key, split in splits.items()},
        }

    def _class_counts(self, split: Split) -> list[int]:
        return [int(c) for c in torch.bincount(split.y, minlength=self.num_classes).tolist()]
