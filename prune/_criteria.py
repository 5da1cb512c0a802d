"""Importance criteria: which channel groups to remove first. A registry of Torch-Pruning importance factories.

An entry may also rewrite the model before it is ranked (``prepare``): ``gmn`` runs the graph metanetwork
(``needs_metanet``), then ranks by group L2 with the max normaliser (each group's scores divided by their
maximum, as the reference implementation ranks); prune with it in many small steps (``steps=``, e.g. 16).
:func:`nasforge.prune.prune` treats every entry alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nasforge.registry import Registry

Prepare = Callable[[Any, Any, Any], dict[str, Any]]
"""``prepare(model, metanet, example) -> dict`` (the extras go into :attr:`PruneReport.extra`)."""

__all__ = ["Criterion", "register_criterion", "list_criteria", "get_criterion"]


@dataclass(frozen=True)
class Criterion:
    """One importance criterion.

    Attributes:
        name: registry name.
        make: builds the Torch-Pruning importance object.
        needs_grad: the criterion reads ``param.grad`` (a loss must be back-propagated before each pruning step).
        description: one line for ``--help`` and docs.
        needs_metanet: ``prepare`` needs a trained graph metanetwork (``metanet=``; the CLI's ``--metanet``).
        prepare: ``prepare(model, metanet, example) -> report extras`` rewrites the model's weights in place
            before pruning (structure unchanged); None ranks the model as it is.
    """

    name: str
    make: Callable[[], Any]
    needs_grad: bool = False
    description: str = ""
    needs_metanet: bool = False
    prepare: Prepare | None = None


_CRITERIA: Registry[Criterion] = Registry("pruning criterion")


def register_criterion(name: str, make: Callable[[], Any], *, needs_grad: bool = False, description: str = "",
                       needs_metanet: bool = False, prepare: Prepare | None = None) -> Criterion:
    """Register a criterion; ``make()`` returns a ``torch_pruning.importance.Importance``.

    ``prepare`` and ``needs_metanet`` are described on :class:`Criterion`.
    """
    return _CRITERIA.add(name, Criterion(name, make, needs_grad, description, needs_metanet, prepare))


def list_criteria(*, include_metanet: bool = False) -> list[str]:
    """Names of the registered criteria, sorted.

    Args:
        include_metanet: also list those that need a trained metanetwork (``gmn``), after the others.
    """
    names = _CRITERIA.names()
    plain = [n for n in names if not _CRITERIA.get(n).needs_metanet]
    return plain + [n for n in names if n not in plain] if include_metanet else plain


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


def _apply_metanet(model: Any, metanet: Any, example: Any) -> dict[str, Any]:
    from ._gmn import apply_metanet

    return {"metanet": apply_metanet(model, metanet, example)}


register_criterion("gmn", lambda: _tp().importance.GroupMagnitudeImportance(p=2, normalizer="max"),
                   needs_metanet=True,
                   prepare=_apply_metanet,
                   description="graph metanetwork rewrites the weights, then group L2 with the max normaliser (needs "
                               "--metanet; use many small steps, e.g. --steps 16)")
