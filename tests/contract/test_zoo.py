"""Contract of the zoo-model plug-in family: every registered model builds from its name and the common keyword
arguments, runs a forward pass on a CIFAR-sized input, and can be pruned by group L2 in one step."""

from __future__ import annotations

import pytest
import torch

from nasforge.errors import ConfigError
from nasforge.prune import create_model, list_models, model_macs, prune

EXAMPLE = (1, 2, 32, 32)  # batch 1, in_channels 2 (every factory takes in_channels and num_classes), 32x32
CLASSES = 5


@pytest.mark.parametrize("name", list_models())
def test_model_builds_runs_and_prunes(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=CLASSES, in_channels=EXAMPLE[1]).eval()
    x = torch.randn(*EXAMPLE)
    with torch.no_grad():
        assert model(x).shape == (1, CLASSES)
    pruned, report = prune(model, x, target="macs=0.8", criterion="l2", steps=1)
    assert report.macs_after <= report.goal < report.macs_before == model_macs(model, x)
    with torch.no_grad():
        out = pruned.eval()(x)
    assert out.shape == (1, CLASSES) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_models())
def test_model_refuses_an_unknown_argument(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        create_model(name, no_such_option=1)
