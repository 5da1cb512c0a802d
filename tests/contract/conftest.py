"""Fixtures for the contract tests that the plug-in families share."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from supernet_helpers import perturb_net


@pytest.fixture
def perturb() -> Callable[..., None]:
    """``perturb(net, seed=0, scale=0.1)``: random BN statistics/affine and non-identity kernel transforms."""
    return perturb_net
