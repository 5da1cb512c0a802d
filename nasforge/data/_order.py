"""The order in which training samples are visited, shared by in-memory and streamed splits.

One epoch is a seeded permutation of the split, cut into global batches (the last partial batch is dropped).
Process ``rank`` of ``world`` takes the ``rank``-th contiguous share of every global batch, so N processes at a
global batch B see exactly the samples that one process sees at B (with B/N-sized micro-batches), every sample
once per epoch. Each sample's augmentation seed depends only on the epoch seed and its position in the
permutation, never on which process or loader worker decodes it, and a run resumed at batch ``start`` sees
exactly the batches it would have seen.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

__all__ = ["EpochPlan", "StreamStats", "sample_seed"]

ResolutionFn = Callable[[int], int]


def sample_seed(epoch_seed: int, position: int) -> int:
    """Augmentation seed of the sample at ``position`` of the epoch's permutation."""
    return (epoch_seed * 1_000_003 + position * 7_919 + 17) % (2**63)


@dataclass(frozen=True)
class EpochPlan:
    """The batches of one epoch for one process.

    Attributes:
        size: samples in the split.
        batch_size: the global batch (divisible by ``world``).
        seed: the epoch's seed (the permutation is ``torch.randperm(size)`` from a generator seeded with it).
        rank, world: this process and the number of processes.
        start: the first global batch to yield (a resumed epoch skips the ones already trained).
        resolution_of: input resolution of global batch ``i`` (``None``: the split's own size).
    """

    size: int
    batch_size: int
    seed: int
    rank: int = 0
    world: int = 1
    start: int = 0
    resolution_of: ResolutionFn | None = None

    @property
    def batches(self) -> int:
        """Global batches in the epoch (the remainder of the split is dropped)."""
        return self.size // self.batch_size

    @property
    def per_rank(self) -> int:
        return self.batch_size // self.world

    def order(self) -> torch.Tensor:
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed))

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor, list[int]]]:
        """``(batch index, this rank's sample indices, their augmentation seeds)`` from ``start`` on."""
        order = self.order()
        for b in range(self.start, self.batches):
            first = b * self.batch_size + self.rank * self.per_rank
            positions = range(first, first + self.per_rank)
            yield b, order[first : first + self.per_rank], [sample_seed(self.seed, p) for p in positions]


@dataclass
class StreamStats:
    """What an epoch stream measured: time spent waiting for batches, bad images met."""

    wait_s: float = 0.0
    batches: int = 0
    images: int = 0
    bad: list[str] = field(default_factory=list)

    def timed(self, it: Iterator[object]) -> Iterator[object]:
        """Yield from ``it``, adding the time spent inside ``next`` to ``wait_s``."""
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                self.wait_s += time.perf_counter() - t0
                return
            self.wait_s += time.perf_counter() - t0
            self.batches += 1
            yield item
