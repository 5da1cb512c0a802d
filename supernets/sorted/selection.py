"""Search-free deployment of nested models: take the largest sub-model that fits a budget.

In a sorted network every sub-model is a prefix of the larger ones, and a trained one is usually better the
larger it is, so no search is needed: :func:`select` orders the sub-models by MACs (ties by parameters) and
returns the largest whose cost is within the budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from torch import nn

from nasforge.errors import ConfigError
from nasforge.supernets.arch import Architecture
from nasforge.supernets.base import Supernet

__all__ = ["METRICS", "LatencyFn", "select", "sub_models"]

METRICS = ("macs", "params", "latency_ms")
LatencyFn = Callable[[nn.Module, tuple[int, ...]], float]


def sub_models(net: Supernet) -> list[Architecture]:
    """Every sub-model (canonical architecture) of ``net``, in the space's enumeration order."""
    return list(net.space.enumerate())


def select(
    net: Supernet,
    budget: float,
    metric: str = "macs",
    *,
    latency_fn: LatencyFn | None = None,
    candidates: Iterable[Architecture | Mapping[str, Any] | str] | None = None,
) -> Architecture:
    """The largest sub-model of ``net`` (by MACs, ties by parameters) whose ``metric`` is at most ``budget``.

    Args:
        net: a supernet (typically a :class:`~nasforge.supernets.sorted.SortedNetwork`).
        budget: the largest acceptable value of ``metric``.
        metric: ``"macs"`` or ``"params"`` (exact, from ``net``), or ``"latency_ms"`` (measured).
        latency_fn: ``(static module, input shape without batch) -> milliseconds``, required for
            ``"latency_ms"`` (e.g. :func:`nasforge.export.torch_cpu_latency`). Candidates are measured in
            descending-MACs order and the first that fits is returned, so only the sub-models above it are timed.
        candidates: the architectures to choose from (default: all of :func:`sub_models`).

    Returns:
        The chosen canonical :class:`Architecture`.

    Raises:
        ConfigError: unknown metric, a budget that is not a number, ``"latency_ms"`` without ``latency_fn``, no
            candidates, or no candidate within the budget (the message names the smallest achievable value).
    """
    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; choose one of {list(METRICS)}")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or math.isnan(budget):
        raise ConfigError(f"budget must be a number, got {budget!r}")
    if metric == "latency_ms" and latency_fn is None:
        raise ConfigError("metric 'latency_ms' needs a latency measure: pass latency_fn=nasforge.export.torch_cpu_latency"
                          " (or your own (module, input_shape) -> ms)")
    archs = _ordered(net, sub_models(net) if candidates is None else [net.space.canonical(a) for a in candidates])
    if latency_fn is not None and metric == "latency_ms":
        values: list[float] = []
        for arch in archs:
            value = float(latency_fn(net.extract(arch).eval(), tuple(net.input_shape(arch))))
            if value <= budget:
                return arch
            values.append(value)
        smallest = min(values)
    else:
        cost = net.macs if metric == "macs" else net.params
        fits = [arch for arch in archs if cost(arch) <= budget]
        if fits:
            return fits[0]
        smallest = min(cost(arch) for arch in archs)
    raise ConfigError(
        f"no sub-model of {net.space.name!r} has {metric} <= {budget:g}; the smallest achievable is {smallest:g}"
    )


def _ordered(net: Supernet, archs: Sequence[Architecture]) -> list[Architecture]:
    """Distinct ``archs``, largest first by ``(macs, params)`` (ties keep their given order)."""
    unique = list(dict.fromkeys(archs))
    if not unique:
        raise ConfigError("select() got no candidate sub-models; pass a non-empty candidates list or omit it")
    return sorted(unique, key=lambda a: (net.macs(a), net.params(a)), reverse=True)
