"""A toy search space and an analytic evaluator for the search tests (no networks, no training)."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import pytest

from nasforge.supernets.arch import Architecture, DepthGate, Dimension, SearchSpace


def make_toy_space() -> SearchSpace:
    """Kernel sizes and expand ratios for 6 blocks in 2 units of at most 3 blocks, depth 2 or 3 per unit."""
    return SearchSpace(
        "toy",
        (Dimension("ks", (3, 5, 7), 6), Dimension("e", (3, 4, 6), 6), Dimension("d", (2, 3), 2)),
        (DepthGate("d", ("ks", "e"), 3),),
    )


def toy_metrics(arch: Architecture) -> dict[str, float]:
    """MACs grow with kernel size, expansion and depth; accuracy grows with them too, with diminishing returns."""
    ks, e, d = arch["ks"], arch["e"], arch["d"]
    active = [(k, x) for i, (k, x) in enumerate(zip(ks, e, strict=True)) if i % 3 < d[i // 3]]
    macs = sum(k * k * x for k, x in active) * 1e5
    capacity = sum((k / 7) ** 0.5 + x / 6 for k, x in active)
    return {"accuracy": 1.0 - 1.0 / (1.0 + capacity), "macs": macs, "params": float(len(active))}


def make_wide_space() -> SearchSpace:
    """Few parameters (4) but 131072 architectures: cheap per trial on disk storage, duplicates unlikely."""
    return SearchSpace("wide", (Dimension("w", tuple(range(8, 72, 2)), 3), Dimension("r", (128, 160, 192, 224))))


def wide_metrics(arch: Architecture) -> dict[str, float]:
    """Width and resolution raise both accuracy and MACs."""
    width = sum(arch["w"])
    macs = width**2 * arch["r"] ** 2 * 10.0
    return {"accuracy": 1.0 - 1.0 / (1.0 + width * arch["r"] / 5000), "macs": macs}


class CountingEvaluator:
    """Wraps a metrics function and records the architectures it was called on."""

    def __init__(self, metrics: Callable[[Architecture], dict[str, float]] = toy_metrics) -> None:
        self.metrics = metrics
        self.seen: list[Architecture] = []

    @property
    def calls(self) -> int:
        return len(self.seen)

    def __call__(self, arch: Architecture) -> dict[str, float]:
        self.seen.append(arch)
        return self.metrics(arch)


@pytest.fixture
def toy_space() -> SearchSpace:
    return make_toy_space()


@pytest.fixture
def counting_evaluator() -> CountingEvaluator:
    return CountingEvaluator()


@pytest.fixture
def metrics_fn():
    """The analytic evaluator itself (architecture -> metrics)."""
    return toy_metrics


@pytest.fixture
def random_macs(toy_space: SearchSpace) -> np.ndarray:
    """MACs of 4000 uniformly sampled architectures (what a random sampler draws), for picking bounds."""
    rng = random.Random(123)
    return np.array([toy_metrics(toy_space.sample(rng))["macs"] for _ in range(4000)])


@pytest.fixture
def wide_space() -> SearchSpace:
    return make_wide_space()


@pytest.fixture
def wide_counter() -> CountingEvaluator:
    return CountingEvaluator(wide_metrics)
