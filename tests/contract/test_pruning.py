"""Contract of the pruning-criterion plug-in family: every registered criterion (``gmn`` included) prunes a tiny
zoo model to a MACs target through :func:`nasforge.prune.prune`, and the pruned model still runs.

Criteria that read gradients get a loss; criteria that need a metanetwork get a fresh, random tiny one (its
update is small, so pruning still works) and are refused with one clear error without it.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nasforge.errors import ConfigError
from nasforge.prune import Criterion, create_model, get_criterion, list_criteria, prune
from nasforge.prune._metanet import GraphMetanetwork

EXAMPLE = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=4, widths=[8, 8, 16]).eval()
    for m in model.modules():  # trained-looking BatchNorms: a fresh one's scales all tie at 1 (bn-scale)
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.1, 0.1)
    return model


def _loss(model: nn.Module) -> torch.Tensor:
    return nn.functional.cross_entropy(model(EXAMPLE), torch.tensor([0, 1]))


def _extra_args(crit: Criterion) -> dict[str, object]:
    args: dict[str, object] = {}
    if crit.needs_grad:
        args["loss_fn"] = _loss
    if crit.needs_metanet:
        torch.manual_seed(0)
        args["metanet"] = GraphMetanetwork(hidden=8, layers=1)
    return args


def test_the_registry_lists_every_criterion_once() -> None:
    every = list_criteria(include_metanet=True)
    assert len(every) == len(set(every)) and set(list_criteria()) <= set(every)
    assert [n for n in every if get_criterion(n).needs_metanet] == [n for n in every if n not in list_criteria()]
    assert "gmn" in every and "gmn" not in list_criteria()


@pytest.mark.parametrize("name", list_criteria(include_metanet=True))
def test_criterion_prunes_to_the_target(name: str) -> None:
    crit = get_criterion(name)
    assert crit.name == name and callable(crit.make)
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    pruned, report = prune(model, EXAMPLE, target="macs=0.6", criterion=name, **_extra_args(crit))
    assert report.criterion == name and report.reached <= report.goal
    assert report.macs_after < report.macs_before and report.history
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # input untouched
    with torch.no_grad():
        out = pruned.eval()(EXAMPLE)
    assert out.shape == (2, 4) and torch.isfinite(out).all()
    if crit.prepare is not None:
        assert report.extra, "a criterion that rewrites the model reports what it did"


@pytest.mark.parametrize("name", [n for n in list_criteria(include_metanet=True) if get_criterion(n).needs_grad])
def test_gradient_criteria_need_a_loss(name: str) -> None:
    with pytest.raises(ConfigError, match="needs gradients"):
        prune(_model(), EXAMPLE, target="macs=0.6", criterion=name)


@pytest.mark.parametrize("name", [n for n in list_criteria(include_metanet=True) if get_criterion(n).needs_metanet])
def test_metanet_criteria_need_a_metanetwork(name: str) -> None:
    with pytest.raises(ConfigError, match=f"criterion '{name}' needs a trained metanetwork"):
        prune(_model(), EXAMPLE, target="macs=0.6", criterion=name)
