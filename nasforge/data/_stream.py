"""Splits of image files, decoded on demand by DataLoader worker processes (:class:`FileSplit`).

Training batches follow an :class:`~nasforge.data._order.EpochPlan` (each process reads only its share; one
resolution per global batch, the same on every process and worker), are decoded and augmented in workers as
``uint8`` (a quarter of the bytes of float32 to pin and copy), and are finished (float conversion, colour jitter,
normalisation) on the training device, which on a GPU costs almost nothing. A corrupt or truncated image is
replaced by another image of its batch and counted; past ``max_bad_images`` the stream stops with one line
naming the files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from nasforge.data._augment import AugmentRecipe, eval_sample, finish_batch, train_sample
from nasforge.data._files import PathTable
from nasforge.data._order import EpochPlan, StreamStats
from nasforge.data._splits import Split, batch_indices
from nasforge.errors import DataError

__all__ = ["LoaderOptions", "FileSplit", "default_workers"]

#: a split that would take more memory than this as float32 is refused where a step needs it all in memory
MAX_IN_MEMORY_BYTES = 4 * 2**30


def default_workers() -> int:
    """Loader workers per process: the CPUs this process may use, shared among the local processes, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(8, cpus // max(1, local)))


@dataclass(frozen=True)
class LoaderOptions:
    """How streamed images are loaded (not part of what is learned; may change on resume).

    Attributes:
        workers: DataLoader worker processes per training process (``None``: :func:`default_workers`; 0 decodes
            in the training process).
        prefetch: batches each worker prepares ahead.
        max_bad_images: unreadable images a run tolerates (each is replaced by another image of its batch and
            counted); one more stops the run with a message naming them.
    """

    workers: int | None = None
    prefetch: int = 4
    max_bad_images: int = 100

    def __post_init__(self) -> None:
        if self.workers is not None and (isinstance(self.workers, bool) or self.workers < 0):
            raise DataError(f"workers={self.workers!r} is invalid; use 0 (load in the main process) or more")
        if self.prefetch < 1:
            raise DataError(f"prefetch={self.prefetch!r} is invalid; use 1 or more batches per worker")
        if self.max_bad_images < 0:
            raise DataError(f"max_bad_images={self.max_bad_images!r} is invalid; use 0 or more")

    @property
    def num_workers(self) -> int:
        return default_workers() if self.workers is None else self.workers


class _Images(Dataset[tuple[np.ndarray, np.ndarray, int, str | None]]):
    """Decodes sample ``index`` at a requested resolution; an item is ``(index, resolution, seed or -1)``.

    ``files`` is a table of samples (:class:`PathTable`, or a shard index): ``source(i)`` is what the decoder
    reads (a path or the bytes), ``path(i)`` names the sample in messages, ``take(indices)`` a sub-table.
    """

    def __init__(self, files: PathTable, labels: np.ndarray, recipe: AugmentRecipe) -> None:
        self.files, self.labels, self.recipe = files, labels, recipe

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, int, str | None]:
        index, resolution, seed = item
        source = self.files.source(index)
        label = int(self.labels[index])
        try:
            if seed >= 0:
                image, jitter = train_sample(source, resolution, np.random.default_rng(seed), self.recipe)
            else:
                image, jitter = eval_sample(source, resolution, self.recipe), _IDENTITY
        except DataError:  # corrupt, truncated, vanished or unreadable: skipped and counted, never fatal alone
            name = self.files.path(index)
            return np.zeros((self.recipe.channels, resolution, resolution), np.uint8), _IDENTITY, label, name
        return image, jitter, label, None


_IDENTITY = np.array([1.0, 1.0, 0.0], dtype=np.float32)


def _collate(items: list[tuple[np.ndarray, np.ndarray, int, str | None]]) -> dict[str, Any]:
    """Stack a batch; every unreadable image is replaced by (a copy of) a readable one of the same batch."""
    good = [k for k, item in enumerate(items) if item[3] is None]
    bad = [item[3] for item in items if item[3] is not None]
    if good and bad:
        items = [item if item[3] is None else items[good[k % len(good)]] for k, item in enumerate(items)]
    return {
        "x": torch.from_numpy(np.stack([item[0] for item in items])),
        "jitter": torch.from_numpy(np.stack([item[1] for item in items])),
        "y": torch.tensor([item[2] for item in items], dtype=torch.int64),
        "bad": bad,
        "bad_positions": [k for k in range(len(items)) if k not in set(good)],
        "all_bad": not good,
    }


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding is per image; torch threads in every worker would oversubscribe the CPUs


@dataclass(frozen=True, eq=False)
class FileSplit:
    """One split of an image-file dataset, decoded on demand.

    Attributes:
        files, labels: the images (in a seeded random order) and their labels.
        image_size: the default (evaluation) resolution.
        recipe: the augmentation and normalisation recipe.
        loading: workers, prefetch and the bad-image threshold.
    """

    files: PathTable
    labels: np.ndarray
    image_size: int
    recipe: AugmentRecipe
    loading: LoaderOptions = field(default_factory=LoaderOptions)
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def y(self) -> torch.Tensor:
        return torch.from_numpy(self.labels)

    @property
    def x(self) -> torch.Tensor:
        """All images at ``image_size`` (evaluation transform, normalised), decoded once and kept in memory.

        For the steps that need a whole split at hand (search on a small dataset, export checks); training never
        calls it. Raises :class:`DataError` when that would take more than 4 GiB.
        """
        if "x" not in self._cache:
            need = len(self) * self.recipe.channels * self.image_size**2 * 4
            if need > MAX_IN_MEMORY_BYTES:
                raise DataError(f"this step needs the whole split in memory ({len(self)} images at {self.image_size}"
                                f" px = {need / 2**30:.1f} GiB); hold out fewer images (e.g. ?val=2000) or use "
                                "a smaller --image-size")
            self._cache["x"] = torch.cat([x for x, _ in self.eval_batches(256, strict=True)]) if len(self) else (
                torch.zeros((0, self.recipe.channels, self.image_size, self.image_size)))
        return self._cache["x"]

    def head(self, n: int) -> torch.Tensor:
        """The first ``n`` images (evaluation transform at ``image_size``), decoded without the rest."""
        if "x" in self._cache:
            return self._cache["x"][:n]
        parts = [x for x, _ in self.eval_batches(256, limit=n, strict=True)]
        return torch.cat(parts) if parts else torch.zeros((0, self.recipe.channels, self.image_size, self.image_size))

    def in_memory(self) -> Split:
        """This split decoded into an in-memory :class:`Split` (see :attr:`x`)."""
        return Split(self.x, self.y)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """As :meth:`Split.batches`, on the decoded split (evaluation transform)."""
        return self.in_memory().batches(batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last)

    # -- streaming ----------------------------------------------------------------------------------------------
    def _loader(self, batches: list[list[tuple[int, int, int]]] | Iterator[list[tuple[int, int, int]]],
                device: torch.device, workers: int | None = None) -> DataLoader[Any]:
        workers = self.loading.num_workers if workers is None else workers
        return DataLoader(
            _Images(self.files, self.labels, self.recipe), batch_sampler=batches,  # type: ignore[arg-type]
            num_workers=workers, collate_fn=_collate, pin_memory=device.type == "cuda",
            prefetch_factor=self.loading.prefetch if workers else None, worker_init_fn=_worker_init if workers else None,
        )

    def epoch_stream(self, plan: EpochPlan, device: torch.device | str = "cpu",
                     stats: StreamStats | None = None) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """This process's batches of one training epoch, ``(global batch index, x, y)``: random-resized crops to
        ``plan.resolution_of(index)`` (default ``image_size``), flipped, colour-jittered and normalised on
        ``device`` (see :class:`EpochPlan`)."""
        device = torch.device(device)
        stats = stats if stats is not None else StreamStats()
        items: list[int] = []

        def requests() -> Iterator[list[tuple[int, int, int]]]:
            for b, index, seeds in plan:
                r = plan.resolution_of(b) if plan.resolution_of is not None else self.image_size
                items.append(b)
                yield [(int(i), r, s) for i, s in zip(index.tolist(), seeds, strict=True)]

        loader = self._loader(_Sized(requests(), plan.batches - plan.start), device)
        return self._finish(stats.timed(iter(loader)), items, device, stats)  # type: ignore[arg-type]

    def _finish(self, batches: Iterator[dict[str, Any]], items: list[int], device: torch.device,
                stats: StreamStats) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        for k, batch in enumerate(batches):
            self._count_bad(batch, stats)
            x = batch["x"].to(device, non_blocking=True)
            jitter = batch["jitter"].to(device, non_blocking=True)
            stats.images += len(batch["y"])
            yield items[k], finish_batch(x, jitter, self.recipe), batch["y"].to(device, non_blocking=True)

    def _count_bad(self, batch: dict[str, Any], stats: StreamStats) -> None:
        stats.bad.extend(batch["bad"])
        limit = self.loading.max_bad_images
        if len(stats.bad) > limit or batch["all_bad"]:
            shown = ", ".join(repr(p) for p in stats.bad[:3]) + (" ..." if len(stats.bad) > 3 else "")
            why = "a whole batch was unreadable" if batch["all_bad"] else f"more than max_bad_images={limit}"
            raise DataError(f"{len(stats.bad)} unreadable image(s), {why}: {shown}; replace or delete them, or "
                            "raise --max-bad-images")

    def eval_batches(self, batch_size: int, resolution: int | None = None, *, rank: int = 0, world: int = 1,
                     limit: int | None = None, device: torch.device | str = "cpu",
                     augment_seed: int | None = None, strict: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches over the first ``limit`` images (all by default), process ``rank`` of ``world`` taking batches
        ``rank``, ``rank + world``, ...: resize + centre crop to ``resolution`` (default ``image_size``), or, with
        ``augment_seed``, the training transforms drawn from that seed and the image's number (Once-for-All
        recalibrates BN on augmented training images). Unreadable images are left out (``strict``: a
        :class:`DataError` naming them)."""
        device = torch.device(device)
        r = resolution or self.image_size
        n = len(self) if limit is None else min(limit, len(self))
        requests = [[(i, r, -1 if augment_seed is None else (augment_seed * 1_000_003 + i) % 2**63)
                     for i in index.tolist()] for index in batch_indices(n, batch_size, rank, world)]
        workers = min(self.loading.num_workers, max(0, len(requests) - 1))
        for batch in self._loader(requests, device, workers):
            if strict and batch["bad"]:
                raise DataError(f"cannot read image(s) {', '.join(repr(b) for b in batch['bad'][:3])}; replace or "
                                "delete them")
            skip = set(batch["bad_positions"])
            keep = torch.tensor([k for k in range(len(batch["y"])) if k not in skip], dtype=torch.int64)
            if not len(keep):
                continue
            x = finish_batch(batch["x"][keep].to(device), batch["jitter"][keep].to(device), self.recipe)
            yield x, batch["y"][keep].to(device)


class _Sized:
    """An iterator with a length (DataLoader asks its batch sampler for ``len``)."""

    def __init__(self, it: Iterator[list[tuple[int, int, int]]], length: int) -> None:
        self._it, self._length = it, max(0, length)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        return self._it

    def __len__(self) -> int:
        return self._length
