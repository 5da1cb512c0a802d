"""Structured pruning: dependency patterns, targets, criteria, ignore lists, save/reload, ONNX parity."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from patterns import SUPPORTED, UNSUPPORTED, TinyViT

from nasforge.errors import CheckpointError, ConfigError
from nasforge.export import export_onnx
from nasforge.prune import (
    PruneError,
    create_model,
    find_unsupported,
    layer_widths,
    list_criteria,
    load_pruned,
    make_loss_fn,
    model_macs,
    model_params,
    parse_target,
    prune,
    save_pruned,
)

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _small_resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("resnet8", widths=[16, 24, 32]).eval()
    for m in model.modules():  # trained-looking BN scales (fresh ones are all 1: every bn-scale score would tie)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.2, 1.5)
    return model


def _onnx_parity(model: torch.nn.Module, tmp_path: Path) -> float:
    return export_onnx(model.eval(), X[:1], tmp_path / "m.onnx", exporter="torchscript", check_inputs=[X[1:]],
                       atol=1e-4).max_abs_diff


@pytest.mark.parametrize("text, kind, value", [("macs=0.5", "macs", 0.5), ("macs=2x", "macs", 0.5),
                                                ("params=0.25", "params", 0.25), ("params=4x", "params", 0.25),
                                                ("latency_ms=3", "latency_ms", 3.0)])
def test_parse_target(text: str, kind: str, value: float) -> None:
    t = parse_target(text)
    assert (t.kind, t.value) == (kind, pytest.approx(value))


@pytest.mark.parametrize("text", ["macs", "macs=1.5", "macs=0", "flops=0.5", "latency_ms=0", "latency_ms=2x",
                                  "macs=0.5x"])
def test_parse_target_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_target(text)


def test_residual_groups_are_consistent() -> None:
    """Every channel group of a ResNet and a MobileNetV2 (residual adds, projections, depthwise convs): removing
    one channel computes exactly what zeroing it computes."""
    torch.manual_seed(0)
    for model in (_small_resnet(), create_model("mobilenetv2", width_mult=0.25, last_channels=64).eval()):
        for m in model.modules():  # non-trivial BN statistics so that a mis-coupled channel shows
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.bias.data.uniform_(-0.5, 0.5)
        assert find_unsupported(model, X, probe_all=True) == {}


@pytest.mark.parametrize("name", sorted(SUPPORTED))
def test_supported_patterns_prune_consistently(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SUPPORTED[name]().eval()
    assert find_unsupported(model, X, probe_all=True) == {}
    pruned, report = prune(model, X, target="macs=0.6")
    assert pruned(X).shape == model(X).shape
    assert report.macs_after <= 0.6 * report.macs_before
    assert not any("unsupported" in why for why in report.ignored.values())
    assert _onnx_parity(pruned, tmp_path) < 1e-4


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_known_weak_spots_are_left_alone(name: str, tmp_path: Path) -> None:
    cls, culprits = UNSUPPORTED[name]
    torch.manual_seed(0)
    model = cls().eval()
    bad = find_unsupported(model, X)
    assert culprits <= set(bad), bad
    pruned, report = prune(model, X, target="macs=0.8")
    widths = layer_widths(pruned)
    for layer in culprits:
        assert widths[layer] == layer_widths(model)[layer]
        assert report.ignored[layer].startswith("unsupported pattern")
    assert report.macs_after <= 0.8 * report.macs_before
    assert pruned(X).shape == (2, 5)
    assert _onnx_parity(pruned, tmp_path) < 1e-4
    with pytest.raises(PruneError, match="cannot be pruned safely"):
        prune(model, X, target="macs=0.8", unsupported="error")


def test_transformer_heads_prune(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyViT().eval()
    pruned, report = prune(model, X, target="macs=0.7")
    attn = pruned.encoder.self_attn
    assert attn.num_heads == 4 and attn.embed_dim % attn.num_heads == 0 and attn.embed_dim < 32
    assert report.macs_after <= 0.7 * report.macs_before
    assert _onnx_parity(pruned, tmp_path) < 1e-4


@pytest.mark.parametrize("target", ["macs=0.5", "macs=3x", "params=0.4"])
def test_targets_are_met_within_tolerance(target: str) -> None:
    model = _small_resnet()
    pruned, report = prune(model, X, target=target)
    kind = parse_target(target).kind
    before = model_macs(model, X) if kind == "macs" else model_params(model)
    after = model_macs(pruned, X) if kind == "macs" else model_params(pruned)
    goal = parse_target(target).value * before
    # met from below; within 5% of the goal (channel granularity of a small net)
    assert 0.95 * goal <= after <= goal
    assert report.reached == after


def test_iterative_per_layer_and_ignore() -> None:
    model = _small_resnet()
    calls: list[int] = []
    pruned, report = prune(model, X, target="macs=0.5", steps=3, global_pruning=False, ignore=["conv1"],
                           finetune=lambda m: calls.append(model_macs(m, X)))
    assert len(report.steps) == 3 and len(calls) == 3
    assert calls[0] > calls[1] > calls[2] and calls[2] <= 0.5 * model_macs(model, X)
    assert report.widths["conv1"] == [16, 16]
    assert "conv1" in report.ignored and "fc" in report.ignored
    assert layer_widths(model)["layers.0.conv1"] == 16  # the input model is untouched
    with pytest.raises(ConfigError, match="matches no module"):
        prune(model, X, ignore=["nope*"])


@pytest.mark.parametrize("criterion", list_criteria())
def test_every_criterion_prunes(criterion: str) -> None:
    """Contract test over the registry: each criterion reaches the target and keeps the network runnable."""
    model = _small_resnet()
    from nasforge.data import Split

    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(1))
    split = Split(torch.randn(64, 3, 32, 32), y)
    pruned, report = prune(model, X, target="macs=0.6", criterion=criterion,
                           loss_fn=make_loss_fn(split, batches=1, batch_size=32))
    assert report.macs_after <= 0.6 * report.macs_before
    assert torch.isfinite(pruned(X)).all()


def test_taylor_needs_a_loss() -> None:
    with pytest.raises(ConfigError, match="needs gradients"):
        prune(_small_resnet(), X, criterion="taylor")


def test_magnitude_pruning_keeps_the_strong_channels() -> None:
    """Per-layer L1 on the stem: the channels whose group has the largest norm survive."""
    model = _small_resnet()
    with torch.no_grad():
        model.conv1.weight.mul_(0.01)
        model.conv1.weight[:4].mul_(1000)  # 4 dominant stem channels
    pruned, report = prune(model, X, target="macs=0.7", criterion="l1")
    kept = pruned.conv1.weight.abs().sum((1, 2, 3))
    assert (kept > 1.0).sum() == 4


def test_latency_target_on_the_cpu() -> None:
    from nasforge.export import device_latency

    model = _small_resnet()
    measure = device_latency("cpu", X, runs=60)
    base = measure(model)
    pruned, report = prune(model, X, target=f"latency_ms={0.6 * base:.4f}", latency=measure)
    assert report.device == "cpu" and report.latency_before_ms is not None
    assert report.latency_after_ms < report.latency_before_ms
    assert report.macs_after < 0.8 * report.macs_before


def test_latency_is_a_callable_passed_in() -> None:
    """prune() does not resolve device names itself: the caller builds the measure at the export layer."""
    with pytest.raises(ConfigError, match=r"nasforge\.export\.device_latency\('cpu', example_inputs\)") as exc:
        prune(_small_resnet(), X, target="macs=0.5", latency="cpu")  # type: ignore[arg-type]
    assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="device_latency"):
        prune(_small_resnet(), X, target="latency_ms=1")


def test_save_and_reload(tmp_path: Path) -> None:
    model = _small_resnet()
    pruned, report = prune(model, X, target="macs=0.5", steps=2)
    base = {"kind": "zoo", "name": "resnet8", "kwargs": {"widths": [16, 24, 32]}}
    path = save_pruned(tmp_path / "p.pt", pruned, base=base, input_shape=[3, 32, 32], history=report.history)
    again, state = load_pruned(path)
    assert torch.equal(again(X), pruned.eval()(X))
    assert state["base"] == base
    # a model of the user's own class needs a fresh instance
    save_pruned(tmp_path / "u.pt", pruned, base=None, input_shape=[3, 32, 32], history=report.history)
    with pytest.raises(ConfigError, match="your own class"):
        load_pruned(tmp_path / "u.pt")
    mine, _ = load_pruned(tmp_path / "u.pt", model=_small_resnet())
    assert torch.equal(mine(X), pruned(X))
    (tmp_path / "bad.pt").write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_pruned(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="does not fit"):
        load_pruned(path, model=create_model("resnet8", widths=[8, 8, 8]))


def test_unreachable_target_is_a_clear_error() -> None:
    with pytest.raises(PruneError, match="out of reach"):
        prune(_small_resnet(), X, target="params=0.001")


def test_bad_example_input() -> None:
    with pytest.raises(ConfigError, match="example_inputs"):
        prune(_small_resnet(), [X])
