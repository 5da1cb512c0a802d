"""Pruning targets (``macs=0.5``, ``params=3x``, ``latency_ms=3``) and the counts they are measured with."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from nasforge.errors import ConfigError
from nasforge.supernets.profile import count_macs, count_params

__all__ = ["Target", "parse_target", "model_macs", "model_params"]

_KINDS = ("macs", "params", "latency_ms")


@dataclass(frozen=True)
class Target:
    """What the pruned model must reach.

    Attributes:
        kind: ``"macs"``, ``"params"`` or ``"latency_ms"``.
        value: for macs/params the fraction of the original to keep (``0.5``; ``"2x"`` is parsed as 0.5);
            for latency_ms the absolute budget in milliseconds on the chosen device.
    """

    kind: str
    value: float

    @property
    def relative(self) -> bool:
        return self.kind != "latency_ms"

    def goal(self, base: float) -> float:
        """The absolute value to reach from the unpruned model's ``base``."""
        return base * self.value if self.relative else self.value

    def __str__(self) -> str:
        return f"{self.kind}={self.value:g}"


def parse_target(spec: str | Target) -> Target:
    """Parse ``KIND=VALUE``: ``macs=0.5`` / ``macs=2x`` (keep half), ``params=0.3``, ``latency_ms=3``.

    Raises:
        ConfigError: malformed text, unknown kind, or a value out of range.
    """
    if isinstance(spec, Target):
        return spec
    text = str(spec).strip().replace(" ", "")
    m = re.fullmatch(r"([a-z_]+)=([0-9.eE+-]+)(x?)", text)
    if not m:
        raise ConfigError(f"target {spec!r} is malformed; use macs=0.5, macs=2x, params=0.5 or latency_ms=3")
    kind, number, times = m.groups()
    if kind not in _KINDS:
        raise ConfigError(f"target kind {kind!r} is unknown; use one of {', '.join(_KINDS)}")
    try:
        value = float(number)
    except ValueError:
        raise ConfigError(f"target {spec!r}: {number!r} is not a number") from None
    if times:
        if kind == "latency_ms" or not value > 1:
            raise ConfigError(f"target {spec!r}: 'Nx' means N times smaller and needs N > 1 (macs/params only)")
        value = 1.0 / value
    if kind == "latency_ms":
        if not value > 0:
            raise ConfigError(f"target {spec!r}: the latency budget must be > 0 ms")
    elif not 0 < value < 1:
        raise ConfigError(f"target {spec!r}: keep a fraction in (0, 1) of the {kind}, e.g. {kind}=0.5 or {kind}=2x")
    return Target(kind, value)


def model_params(model: nn.Module) -> int:
    """Number of parameters (buffers excluded)."""
    return count_params(model)


def model_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one sample of ``example``'s shape (convs, linears, multi-head attention)."""
    return count_macs(model, tuple(example.shape[1:]))
