"""Small trained models exported to ONNX, shared by the quantization tests (trained once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from nasforge.data import DataSplits, load_data


def _cnn(c: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
        nn.Conv2d(c, 2 * c, 3, padding=1, stride=2), nn.BatchNorm2d(2 * c), nn.ReLU(),
        nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * c, 10))


def _mlp(features: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(features, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, 10))


@pytest.fixture(scope="session")
def digits() -> DataSplits:
    return load_data("digits", seed=0)


def _train(model: nn.Module, data: DataSplits, epochs: int) -> nn.Module:
    from nasforge.prune import train_classifier

    torch.manual_seed(0)
    train_classifier(model, data.train, epochs=epochs, lr=0.05, augment=False)
    return model.eval()


@pytest.fixture(scope="session")
def cnn(digits: DataSplits, tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    """A 3-conv CNN trained on digits (~97% val) and its FP32 ONNX file (dynamic batch, dataset recorded)."""
    from nasforge.export import export_onnx

    torch.manual_seed(0)
    model = _train(_cnn(32), digits, 6)
    path = tmp_path_factory.mktemp("cnn") / "model.onnx"
    export_onnx(model, digits.val.x[:1], path, exporter="torchscript", dynamic_batch=True,
                check_inputs=[digits.val.x[:4]], metadata={"dataset": "digits"})
    return model, path


@pytest.fixture(scope="session")
def mlp(digits: DataSplits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Linear-only MLP trained on digits, as an FP32 ONNX file without a recorded dataset."""
    from nasforge.export import export_onnx

    torch.manual_seed(0)
    model = _train(_mlp(digits.val.x[0].numel()), digits, 4)
    path = tmp_path_factory.mktemp("mlp") / "mlp.onnx"
    export_onnx(model, digits.val.x[:1], path, exporter="torchscript", dynamic_batch=True,
                check_inputs=[digits.val.x[:4]])
    return path
