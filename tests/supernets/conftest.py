"""Shared fixtures for the nasforge.supernets tests: small spaces, a tiny supernet, tiny digits data.

Everything here is sized so that the whole ``tests/supernets`` folder runs in well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

import pytest
import torch
from supernet_helpers import perturb_net as _perturb

from nasforge.data import DataSplits, Split, load_data
from nasforge.supernets import Supernet, create_supernet
from nasforge.supernets.arch import DepthGate, Dimension, SearchSpace

# A tiny member of the mbv3 family (about 30k parameters, 800 architectures): fast enough to train in tests.
TINY_OPTIONS: dict[str, Any] = {
    "stem_width": 8,
    "first_block_width": 8,
    "stages": ((16, 2, "relu", False), (24, 2, "hswish", True)),
    "kernel_sizes": (3, 5),
    "expand_ratios": (2, 4),
    "depths": (1, 2),
    "resolutions": (12, 16),
    "final_expand_width": 48,
    "feature_width": 64,
}


@pytest.fixture(autouse=True)
def _one_thread_and_seed() -> Iterator[None]:
    """One intra-op thread (the machine is shared) and a fixed global seed for every test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def gated_space() -> SearchSpace:
    """A small gated space: 2 units of at most 2 blocks, an ungated per-block width and a resolution.

    Small enough to enumerate every raw gene combination (8192) by brute force.
    """
    return SearchSpace(
        "gated",
        (
            Dimension("ks", (3, 5), 4),
            Dimension("e", (3, 6), 4),
            Dimension("d", (1, 2), 2),
            Dimension("w", (8, 16), 2),
            Dimension("r", (12, 16), default=16),
        ),
        (DepthGate("d", ("ks", "e"), 2),),
    )


@pytest.fixture(scope="session")
def spaces() -> dict[str, SearchSpace]:
    """The search space of every registered supernet (built once)."""
    from nasforge.supernets import list_supernets

    return {name: create_supernet(name).space for name in list_supernets()}


def _make_tiny_net(seed: int | None = None, **overrides: Any) -> Supernet:
    if seed is not None:
        torch.manual_seed(seed)
    return create_supernet("mbv3-small", **{**TINY_OPTIONS, **overrides})


@pytest.fixture(scope="session")
def make_tiny_net() -> Callable[..., Supernet]:
    """``make_tiny_net(seed=None, **overrides)``: a fresh tiny mbv3 supernet (weights from ``seed`` if given)."""
    return _make_tiny_net


@pytest.fixture
def tiny_net() -> Supernet:
    """A fresh tiny mbv3 supernet (seeded by the autouse fixture)."""
    return _make_tiny_net()


@pytest.fixture(scope="session")
def tiny_options() -> Mapping[str, Any]:
    """The ``create_supernet("mbv3-small", ...)`` options of the tiny supernet (read-only)."""
    return MappingProxyType(TINY_OPTIONS)


@pytest.fixture(scope="session")
def digits() -> DataSplits:
    """The full digits dataset at 16x16 (loaded once per session)."""
    return load_data("digits", image_size=16, seed=0)


@pytest.fixture(scope="session")
def tiny_digits(digits: DataSplits) -> DataSplits:
    """128 training and 64 validation images of digits."""
    return dataclasses.replace(
        digits,
        train=Split(digits.train.x[:128].clone(), digits.train.y[:128].clone()),
        val=Split(digits.val.x[:64].clone(), digits.val.y[:64].clone()),
    )


@pytest.fixture
def perturb() -> Callable[..., None]:
    """``perturb(net, seed=0, scale=0.1)``: random BN statistics/affine and non-identity kernel transforms."""
    return _perturb
