"""Importance criteria: which channel groups to remove first. A registry of Torch-Pruning importance factories."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nasforge.registry import Registry

__all__ = ["Criterion", "register_criterion", "list_criteria", "get_criterion"]


@dataclass(frozen=True)
class Criterion:
    """One importance criterion.

    Attributes:
        name: registry name.
        make: builds the Torch-Pruning importance object.
        needs_grad: the criterion reads ``param.grad`` (a loss must be back-propagated before each pruning step).
        description: one line for ``--help`` and docs.
    """

    name: str
    make: Callable[[], Any]
    needs_grad: bool = False
    description: str = ""


_CRITERIA: Registry[Criterion] = Registry("pruning criterion")


def register_criterion(name: str, make: Callable[[], Any], *, needs_grad: bool = False,
                       description: str = "") -> Criterion:
    """Register a criterion; ``make()`` returns a ``torch_pruning.importance.Importance``."""
    return _CRITERIA.add(name, Criterion(name, make, needs_grad, description))


def list_criteria() -> list[str]:
    """Names of the registered criteria (``gmn`` is handled by :func:`nasforge.prune.prune` on top of ``l2``)."""
    return _CRITERIA.names()


def get_criterion(name: str) -> Criterion:
    """The criterion called ``name`` (:class:`~nasforge.errors.ConfigError` listing the known ones otherwise)."""
    return _CRITERIA.get(name)


def _tp() -> Any:
    import torch_pruning

    return torch_pruning


register_criterion("l1", lambda: _tp().importance.GroupMagnitudeImportance(p=1),
                   description="L1 norm of each channel group (all coupled weights)")
register_criterion("l2", lambda: _tp().importance.GroupMagnitudeImportance(p=2),
                   description="L2 norm of each channel group (all coupled weights)")
register_criterion("taylor", lambda: _tp().importance.GroupTaylorImportance(), needs_grad=True,
                   description="first-order Taylor estimate |w * dL/dw| of each group (needs data)")
register_criterion("bn-scale", lambda: _tp().importance.BNScaleImportance(),
                   description="|gamma| of the BatchNorm that follows each channel")
register_criterion("lamp", lambda: _tp().importance.LAMPImportance(p=2),
                   description="layer-adaptive magnitude (LAMP) scores, comparable across layers")
register_criterion("random", lambda: _tp().importance.RandomImportance(),
                   description="random groups (a baseline)")
