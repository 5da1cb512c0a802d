"""Latency-aware pruning: per-layer latency tables and the allocation that reads them."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from nasforge.errors import ConfigError
from nasforge.export import device_latency, layer_latency
from nasforge.prune import (
    LayerLatencyTable,
    LayerShape,
    create_model,
    layer_widths,
    model_macs,
    prune,
    replay_history,
)


def _staircase(layer: nn.Module, input_shape: tuple[int, ...]) -> float:
    """A device whose kernels work on blocks of 16 channels: cost grows with the blocks, not the channels."""
    if isinstance(layer, nn.Linear):
        return 0.01 * math.ceil(layer.in_features / 16) * math.ceil(layer.out_features / 16)
    positions = math.prod(input_shape[1:])
    cin = 1 if layer.groups > 1 else math.ceil(layer.in_channels / 16)
    return 1e-4 * positions * cin * math.ceil(layer.out_channels / 16)


_staircase.device_name = "staircase"  # type: ignore[attr-defined]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return create_model("resnet8", num_classes=4, widths=[16, 32, 64]).eval()


@pytest.mark.parametrize("layer, shape", [
    (nn.Conv2d(6, 10, 3, 2, 1), (6, 9, 9)),
    (nn.Conv2d(8, 8, 3, 1, 1, groups=8), (8, 7, 7)),
    (nn.Conv1d(4, 12, 5, 1, 2), (4, 20)),
    (nn.Linear(16, 5), (3, 16)),
])
def test_layer_shape_counts_macs_as_the_model_counter(layer: nn.Module, shape: tuple[int, ...]) -> None:
    with torch.no_grad():
        out = layer(torch.zeros(1, *shape))
    ls = LayerShape.of(layer, shape, tuple(out.shape[1:]))
    cin = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
    cout = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    assert ls.macs(cin, cout) == model_macs(layer, torch.zeros(1, *shape))
    rebuilt, rebuilt_shape = ls.module(cin, cout)
    assert rebuilt_shape == shape and rebuilt(torch.zeros(1, *shape)).shape == out.shape


def test_table_measures_each_entry_once_and_round_trips(tmp_path) -> None:
    calls = []
    real = layer_latency("cpu", runs=5)

    def counted(layer: nn.Module, shape: tuple[int, ...]) -> float:
        calls.append(shape)
        return real(layer, shape)

    counted.device_name = "cpu"  # type: ignore[attr-defined]
    path = tmp_path / "layers.json"
    table = LayerLatencyTable(counted, path=path)
    shape = LayerShape("conv2d", (3, 3), (1, 1), (1, 1), (1, 1), False, (8, 8), 64)
    first = table.latency(shape, 8, 8)
    assert first > 0 and table.latency(shape, 8, 8) == first and len(calls) == 1
    table.latency(shape, 8, 4)
    assert len(calls) == 2 and table.save() == path
    again = LayerLatencyTable(counted, path=path)
    assert again.latency(shape, 8, 4) == table.latency(shape, 8, 4) and len(calls) == 2
    with pytest.raises(ConfigError, match="measured on 'cpu'"):
        LayerLatencyTable(_staircase, path=path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable"):
        LayerLatencyTable(counted, path=path)
    path.write_text(json.dumps({"format": "nasforge-layer-latency/1", "device": "cpu", "entries": {"a": "x"}}))
    with pytest.raises(ConfigError, match="damaged"):
        LayerLatencyTable(counted, path=path)


def _table_cost(model: nn.Module, example: torch.Tensor) -> float:
    """The staircase device's cost of every conv/linear layer of ``model``."""
    total = 0.0
    handles = []
    shapes: dict[nn.Module, tuple[int, ...]] = {}
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            handles.append(m.register_forward_hook(lambda m, i, o: shapes.__setitem__(m, tuple(i[0].shape[1:]))))
    with torch.no_grad():
        model(example[:1])
    for h in handles:
        h.remove()
    for m, shape in shapes.items():
        total += _staircase(m, shape)
    return total


def test_latency_aware_allocation_beats_ratio_pruning_on_a_staircase_device() -> None:
    net, example = _net(), torch.randn(2, 3, 16, 16)
    table = LayerLatencyTable(_staircase)
    aware, report = prune(net, example, target="macs=0.5", layer_latency=table)
    plain, _ = prune(net, example, target="macs=0.5", round_to=4)
    goal = 0.5 * model_macs(net, example)
    assert goal * 0.97 <= model_macs(aware, example) <= goal
    assert _table_cost(aware, example) < 0.8 * _table_cost(plain, example)
    assert report.extra["allocation"] == "latency" and report.extra["layer_table"]["entries"] > 0
    rebuilt = replay_history(_net(), example, report.history)
    assert layer_widths(rebuilt) == layer_widths(aware)
    assert torch.isfinite(aware(example)).all() and aware(example).shape == (2, 4)


def test_latency_aware_pruning_meets_a_measured_latency_target() -> None:
    net, example = _net(), torch.randn(2, 3, 16, 16)
    measure = device_latency("cpu", example, runs=30)
    base = min(measure(net) for _ in range(3))
    table = LayerLatencyTable(layer_latency("cpu", runs=30))
    pruned, report = prune(net, example, target=f"latency_ms={0.7 * base:.4f}", latency=measure, layer_latency=table)
    assert report.steps[-1]["reached"] <= 0.7 * base  # as measured when the allocation was accepted
    assert report.latency_after_ms is not None and report.latency_after_ms < base and model_macs(pruned, example) < model_macs(net, example)
    assert report.extra["rounds"] and report.extra["layer_table"]["device"] == "cpu"


def test_groups_left_out_of_the_allocation_are_named() -> None:
    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 16, 3, padding=1)
            self.up = nn.ConvTranspose2d(16, 16, 2, stride=2)
            self.b = nn.Conv2d(16, 32, 3, padding=1)
            self.fc = nn.Linear(32, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.b(torch.relu(self.up(torch.relu(self.a(x)))))
            return self.fc(x.mean((2, 3)))

    example = torch.randn(2, 3, 8, 8)
    pruned, report = prune(Decoder().eval(), example, target="macs=0.7", layer_latency=LayerLatencyTable(_staircase))
    assert "ConvTranspose2d" in report.extra["left_out"]["a"]
    assert layer_widths(pruned)["a"] == 16 and layer_widths(pruned)["b"] < 32


def test_channel_cost_grows_as_a_group_thins_and_with_the_layers_it_spans() -> None:
    from nasforge.prune._latency_aware import _costs

    uniform = _costs(torch.ones(8), layers=2)
    assert uniform == pytest.approx([(8 / (8 - k)) ** 2 for k in range(8)])  # the last channel costs 64x the first
    assert _costs(torch.ones(8), layers=6) == pytest.approx([3 * c for c in uniform])  # a residual stream: 3x dearer
    ranked = _costs(torch.tensor([0.1, 0.5, 1.0, 2.0]), layers=2)
    assert ranked == sorted(ranked) and ranked[0] < 0.01  # a weak channel stays cheap to remove
