"""Small helpers shared by the elastic layers."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

__all__ = ["make_divisible", "make_activation", "ACTIVATIONS"]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=False),
    "hswish": lambda: nn.Hardswish(inplace=False),
    "none": nn.Identity,
}


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to a multiple of ``divisor`` (at least ``min_value``), never more than 10% below it.

    This is the channel-rounding rule of MobileNet-family code: ``max(d, int(v + d/2) // d * d)``, plus one
    ``divisor`` if that fell under 90% of ``v``.
    """
    min_value = divisor if min_value is None else min_value
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name (``relu``, ``hswish``, ``none``)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None
