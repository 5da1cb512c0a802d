"""Sorted (SortedNet-style nested) supernets: nesting, extraction parity, exact costs, selection and ONNX export."""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nasforge.data import load_data
from nasforge.errors import ArchitectureError, ConfigError
from nasforge.export import export_onnx
from nasforge.supernets import (
    Architecture,
    Dimension,
    SearchSpace,
    count_macs,
    count_params,
    create_supernet,
    list_supernets,
)
from nasforge.supernets.checkpoint import load_supernet, save_checkpoint
from nasforge.supernets.evaluate import accuracy
from nasforge.supernets.layers import DynamicLinear, ElasticDepth
from nasforge.supernets.sorted import (
    ElasticSize,
    SelfAttention,
    SortedLinear,
    SortedNetwork,
    percent_of,
    select,
    sub_models,
)

MEMBERS = ["sorted-mlp", "sorted-resnet", "sorted-transformer"]
SIZES = {"sorted-mlp": 160, "sorted-resnet": 12, "sorted-transformer": 48}
PARITY_TOL = 1e-6


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def _warmed(name: str, perturb) -> SortedNetwork:
    """A member with non-trivial BN statistics (perturbed, then moved by a few train-mode steps), in eval mode.

    Linear weights are redrawn larger than their (fan-in of the full width) initialisation, so that even the
    narrowest sub-models produce logits of order 1.
    """
    net = create_supernet(name)
    assert isinstance(net, SortedNetwork)
    perturb(net, seed=1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, DynamicLinear):
                m.weight.normal_(0.0, 0.25)
                m.bias.normal_(0.0, 0.1)
    net.train()
    rng = random.Random(0)
    for _ in range(2):
        arch = net.set_active(net.space.sample(rng))
        net(torch.randn(4, *net.input_shape(arch)))
    return net.eval()


def _larger_or_equal(space: SearchSpace, arch: Architecture, rng: random.Random) -> Architecture:
    """A random architecture at least as large as ``arch`` in every dimension."""
    return space.canonical({d.name: rng.choice([c for c in d.choices if c >= arch[d.name]]) for d in space.dims})


def _step_up(space: SearchSpace, arch: Architecture, name: str) -> Architecture | None:
    """``arch`` with dimension ``name`` at its next larger choice (``None`` at the top)."""
    choices = space.dim(name).choices
    i = choices.index(arch[name])
    return arch.replace(**{name: choices[i + 1]}) if i + 1 < len(choices) else None


# -- registry and spaces ---------------------------------------------------------------------------------------------
def test_members_are_registered_with_their_space_sizes():
    assert set(MEMBERS) <= set(list_supernets())
    for name in MEMBERS:
        net = create_supernet(name)
        assert net.space.size() == SIZES[name]
        archs = sub_models(net)
        assert len(archs) == len(set(archs)) == SIZES[name]
        assert all(d.is_scalar for d in net.space.dims)
    mlp = create_supernet("sorted-mlp")
    assert mlp.space.dim("w").choices == tuple(range(4, 129, 4)) and mlp.space.dim("d").choices == (1, 2, 3, 4, 5)
    assert mlp.input_shape() == (1, 8, 8)
    assert create_supernet("sorted-resnet").input_shape() == create_supernet("sorted-transformer").input_shape() == (
        1, 16, 16)


# -- extraction ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MEMBERS)
def test_extract_computes_exactly_the_supernet_output(name, perturb):
    net = _warmed(name, perturb)
    space = net.space
    rng = random.Random(1)
    archs = [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(8)]
    for arch in archs:
        net.set_active(arch)
        x = torch.randn(3, *net.input_shape(arch))
        y_net = _logits(net, x)
        other = space.sample(rng)
        sub = net.extract(arch)
        assert isinstance(sub, nn.Sequential) and not sub.training
        assert net.extract(other) is not None and net.active == arch  # extract never changes the active arch
        assert y_net.shape == (3, 10) and float(y_net.abs().max()) > 0.1
        assert float((y_net - _logits(sub, x)).abs().max()) <= PARITY_TOL, arch
        assert net.params(arch) == count_params(sub)
        assert net.macs(arch) == count_macs(sub, net.input_shape(arch))
    assert net.train().extract().training


def test_mlp_forward_is_a_hand_built_slice_of_the_full_weights():
    net = create_supernet("sorted-mlp").eval()
    stage = net.stages[0]
    assert isinstance(stage, ElasticDepth)
    x = torch.randn(5, 1, 8, 8)
    for w, d in [(4, 1), (8, 2), (36, 3), (128, 5)]:
        net.set_active({"w": w, "d": d})
        h = x.flatten(1)
        for i in range(d):
            lin = stage.blocks[i].linear
            h = F.relu(F.linear(h, lin.weight[:w, : h.shape[1]], lin.bias[:w]))
        head = net.head.linear
        expected = F.linear(h, head.weight[:, :w], head.bias)
        assert torch.allclose(_logits(net, x), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", MEMBERS)
def test_smaller_sub_models_use_a_prefix_of_the_larger_ones_parameters(name, perturb):
    net = _warmed(name, perturb)
    space = net.space
    rng = random.Random(2)
    pairs = [(space.smallest(), space.largest())]
    for _ in range(6):
        small = space.sample(rng)
        pairs.append((small, _larger_or_equal(space, small, rng)))
    for small, big in pairs:
        s_state, b_state = net.extract(small).state_dict(), net.extract(big).state_dict()
        assert set(s_state) <= set(b_state)
        for key, tensor in s_state.items():
            prefix = b_state[key][tuple(slice(0, n) for n in tensor.shape)]
            assert torch.equal(prefix, tensor), (small, big, key)
    # a strictly smaller sub-model really drops units or blocks
    assert count_params(net.extract(space.smallest())) < count_params(net.extract(space.largest()))


def test_resnet_width_is_the_same_percentage_of_every_layer():
    net = create_supernet("sorted-resnet")
    assert [percent_of(c, 25) for c in (16, 32, 64)] == [4, 8, 16]
    assert percent_of(10, 75) == 8 and percent_of(3, 1) == 1
    for w, expected in [(25, {4, 8, 16}), (50, {8, 16, 32}), (100, {16, 32, 64})]:
        sub = net.extract({"w": w, "d": 2})
        widths = {m.out_channels for m in sub.modules() if isinstance(m, nn.Conv2d)}
        assert widths == expected
        blocks = [k for k in sub._modules if k.startswith("stage")]
        assert blocks == [f"stage{i}_block{j}" for i in range(3) for j in range(2)]


# -- exact costs -----------------------------------------------------------------------------------------------------
def test_mlp_costs_match_hand_computed_values():
    net = create_supernet("sorted-mlp")
    assert net.macs({"w": 4, "d": 1}) == 64 * 4 + 4 * 10
    assert net.params({"w": 4, "d": 1}) == (64 * 4 + 4) + (4 * 10 + 10)
    for arch in sub_models(net):
        w, d = arch["w"], arch["d"]
        macs = 64 * w + (d - 1) * w * w + w * 10
        assert net.macs(arch) == macs
        assert net.params(arch) == macs + d * w + 10


@pytest.mark.parametrize("name", MEMBERS)
def test_costs_grow_along_every_dimension(name):
    net = create_supernet(name)
    for arch in sub_models(net):
        for dim in net.space.names:
            up = _step_up(net.space, arch, dim)
            if up is not None:
                assert net.macs(up) > net.macs(arch) and net.params(up) > net.params(arch), (arch, dim)


def test_transformer_macs_include_the_attention_matmuls():
    net = create_supernet("sorted-transformer")
    tokens, head_dim = (16 // 4) ** 2, 16
    for arch, layers, heads in [(net.space.largest(), 4, 4), (Architecture.from_dict({"d": 2, "h": 1, "f": 32}), 2, 1)]:
        sub = net.extract(arch)
        layer_macs = 0

        def hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            nonlocal layer_macs
            if isinstance(m, nn.Conv2d):
                layer_macs += out[0].numel() * m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            else:
                layer_macs += out[0].numel() * m.in_features

        handles = [m.register_forward_hook(hook) for m in sub.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        with torch.no_grad():
            sub(torch.zeros(1, 1, 16, 16))
        for h in handles:
            h.remove()
        attention = layers * 2 * tokens * tokens * heads * head_dim  # Q K^T and A V per layer
        assert sum(isinstance(m, SelfAttention) for m in sub.modules()) == layers
        assert net.macs(arch) == count_macs(sub, (1, 16, 16)) == layer_macs + attention


def test_macs_at_another_resolution():
    resnet = create_supernet("sorted-resnet")
    arch = resnet.space.largest()
    assert resnet.macs(arch, resolution=32) == count_macs(resnet.extract(arch), (1, 32, 32)) > resnet.macs(arch)
    with pytest.raises(ConfigError, match="8x8"):
        create_supernet("sorted-mlp").macs({"w": 4, "d": 1}, resolution=16)


# -- config round trip, options, hand-built networks ------------------------------------------------------------------
@pytest.mark.parametrize("name", MEMBERS)
def test_config_dict_rebuilds_the_same_network(name, tmp_path):
    net = create_supernet(name, num_classes=7, in_channels=3).eval()
    options = net.config_dict()
    assert json.loads(json.dumps(options)) == options
    twin = create_supernet(name, **options).eval()
    assert twin.space == net.space and twin.config_dict() == options
    assert {k: v.shape for k, v in twin.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}
    twin.load_state_dict(net.state_dict())
    x = torch.randn(2, *net.input_shape())
    assert torch.equal(_logits(twin, x), _logits(net, x)) and _logits(net, x).shape == (2, 7)
    save_checkpoint(tmp_path / "net.pt", net, name, options)
    loaded, _ = load_supernet(tmp_path / "net.pt")
    assert torch.equal(_logits(loaded.eval(), x), _logits(net, x))


def test_options_change_the_members():
    mlp = create_supernet("sorted-mlp", widths=[16, 8], depths=[1, 2], image_size=4, num_classes=3)
    assert mlp.space.size() == 4 and mlp.space.dim("w").choices == (8, 16)
    assert mlp.macs({"w": 8, "d": 1}) == 16 * 8 + 8 * 3
    resnet = create_supernet("sorted-resnet", stage_channels=[8, 16], stage_strides=[1, 2], depths=[1, 2])
    assert resnet.space.size() == 8 and len(resnet.stages) == 2
    vit = create_supernet("sorted-transformer", image_size=8, patch_size=2, heads=[2], ffn_widths=[16, 32])
    assert vit.space.size() == 4 * 2 and vit.input_shape() == (1, 8, 8)


@pytest.mark.parametrize(
    ("name", "options", "pattern"),
    [
        ("sorted-mlp", {"widht": [4]}, "widths"),
        ("sorted-mlp", {"num_classes": 1}, "num_classes"),
        ("sorted-mlp", {"depths": []}, "depths"),
        ("sorted-mlp", {"widths": [0, 4]}, "widths"),
        ("sorted-resnet", {"width_percents": [50, 150]}, "width_percents"),
        ("sorted-resnet", {"stage_strides": [1, 2]}, "stage"),
        ("sorted-transformer", {"patch_size": 3}, "patch_size"),
    ],
)
def test_bad_options_raise_config_error(name, options, pattern):
    with pytest.raises(ConfigError, match=pattern):
        create_supernet(name, **options)


def test_a_user_can_build_a_sorted_network_from_the_blocks():
    w = ElasticSize(32, "w")
    space = SearchSpace("my-mlp", (Dimension("w", (8, 16, 32)), Dimension("d", (1, 2, 3))))
    net = SortedNetwork(
        space,
        stem=nn.Flatten(),
        stages=[ElasticDepth([SortedLinear(48, w, activation="relu")]
                             + [SortedLinear(w, w, activation="relu") for _ in range(2)])],
        head=SortedLinear(w, 5),
        in_channels=3, resolution=4,
    ).eval()
    arch = net.set_active({"w": 16, "d": 2})
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(_logits(net, x), _logits(net.extract(arch), x))
    assert net.macs(arch) == 48 * 16 + 16 * 16 + 16 * 5 and select(net, 48 * 16 + 16 * 16 + 16 * 5) == arch
    with pytest.raises(ConfigError, match="config"):
        net.config_dict()
    with pytest.raises(ArchitectureError):
        net.set_active({"w": 12, "d": 1})
    too_deep = SearchSpace("deep", (Dimension("w", (8, 32)), Dimension("d", (1, 4))))
    with pytest.raises(ConfigError, match="depth"):
        SortedNetwork(too_deep, nn.Flatten(), [ElasticDepth([SortedLinear(48, w)])], SortedLinear(w, 5),
                      in_channels=3, resolution=4)
    missing = SearchSpace("missing", (Dimension("d", (1,)),))
    with pytest.raises(ConfigError, match="'w'"):
        SortedNetwork(missing, nn.Flatten(), [ElasticDepth([SortedLinear(48, w)])], SortedLinear(w, 5),
                      in_channels=3, resolution=4)


# -- select() --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_mlp():
    """A small sorted MLP trained by the ``sorted`` trainer (SortedNet: g_acc sub-models per step, mean loss)
    for a few epochs on 8x8 digits (a few seconds)."""
    from nasforge.supernets.trainers import TrainConfig, get_trainer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = load_data("digits", image_size=8, seed=0)
    net = create_supernet("sorted-mlp", widths=[8, 16, 32, 64], depths=[1, 2, 3])
    config = TrainConfig(epochs=6, optimizer="adamw", lr=1e-2, weight_decay=0.0, warmup_epochs=0,
                         label_smoothing=0.0, eval_every=0, trainer_options={"g_acc": 2})
    get_trainer("sorted", config).fit(net, data, supernet_name="sorted-mlp")
    torch.set_num_threads(threads)
    return net.eval(), data


def _key(net, arch):
    return (net.macs(arch), net.params(arch))


@pytest.mark.parametrize("metric", ["macs", "params"])
def test_select_returns_the_largest_sub_model_within_budget(trained_mlp, metric):
    net, _ = trained_mlp
    archs = sub_models(net)
    cost = net.macs if metric == "macs" else net.params
    values = sorted({cost(a) for a in archs})
    budgets = [values[0], values[len(values) // 3], values[len(values) // 2] + 1, values[-1] - 1, values[-1], 1e12]
    for budget in budgets:
        chosen = select(net, budget, metric)
        assert cost(chosen) <= budget
        fitting = [a for a in archs if cost(a) <= budget]
        assert _key(net, chosen) == max(_key(net, a) for a in fitting)
        assert not any(net.macs(a) > net.macs(chosen) for a in fitting)
    assert select(net, 1e12, metric) == net.space.largest()
    assert select(net, values[0], metric) == net.space.smallest()


def test_selected_sub_model_of_the_trained_net_is_accurate(trained_mlp):
    net, data = trained_mlp
    arch = select(net, net.macs({"w": 32, "d": 2}))
    assert arch == Architecture.from_dict({"w": 32, "d": 2})
    acc = accuracy(net.extract(arch), data.val.x, data.val.y, net.resolution(arch))
    assert acc > 0.5
    smallest_acc = accuracy(net.extract(net.space.smallest()), data.val.x, data.val.y, 8)
    assert smallest_acc > 0.3  # even 8 units of one layer learned something (chance is 0.1)


def test_select_by_latency_measures_from_the_largest_down(trained_mlp):
    net, _ = trained_mlp
    measured: list[int] = []

    def fake_latency(module: nn.Module, shape: tuple[int, ...]) -> float:
        macs = count_macs(module, shape)
        measured.append(macs)
        return macs / 1000.0

    for budget_ms in (0.6, 1.0, 2.5, 10.0):
        measured.clear()
        chosen = select(net, budget_ms, "latency_ms", latency_fn=fake_latency)
        assert chosen == select(net, budget_ms * 1000, "macs")
        assert measured == sorted(measured, reverse=True) and measured[-1] == net.macs(chosen)
        assert len(measured) == 1 + sum(net.macs(a) > net.macs(chosen) for a in sub_models(net))
    small = net.space.smallest()
    from nasforge.export import torch_cpu_latency  # the timer lives at the export layer and is passed down

    assert select(net, float("inf"), "latency_ms", latency_fn=torch_cpu_latency, candidates=[small]) == small


def test_select_with_candidates_and_bad_requests(trained_mlp):
    net, _ = trained_mlp
    candidates = [{"w": 8, "d": 3}, {"w": 16, "d": 1}, {"w": 64, "d": 1}]
    budget = net.macs({"w": 16, "d": 1})
    assert select(net, budget, candidates=candidates) == Architecture.from_dict({"w": 16, "d": 1})
    smallest = net.macs(net.space.smallest())
    with pytest.raises(ConfigError, match=f"smallest achievable is {smallest}") as exc:
        select(net, smallest - 1)
    assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="latency_ms <= 0.001; the smallest achievable is 1"):
        select(net, 0.001, "latency_ms", latency_fn=lambda module, shape: 1.0)
    with pytest.raises(ConfigError, match="metric"):
        select(net, 100, "flops")
    with pytest.raises(ConfigError, match=r"pass latency_fn=nasforge\.export\.torch_cpu_latency") as exc:
        select(net, 1.0, "latency_ms")  # no timer of its own: supernets does not import the export layer
    assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="candidates"):
        select(net, 100, candidates=[])


# -- ONNX --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MEMBERS)
def test_extracted_sub_models_export_to_onnx(name, tmp_path, perturb):
    net = _warmed(name, perturb)
    smaller = net.space.canonical({d.name: d.choices[len(d.choices) // 2 - 1] for d in net.space.dims})
    # the default (dynamo) exporter for the largest sub-model, the fast torchscript one for a smaller one
    for arch, exporter in [(net.space.largest(), "dynamo"), (smaller, "torchscript")]:
        sub = net.extract(arch)
        x = torch.randn(1, *net.input_shape(arch))
        result = export_onnx(sub, x, tmp_path / f"{exporter}.onnx", exporter=exporter)
        assert result.path.is_file() and result.parity_inputs >= 3
        scale = max(1.0, float(_logits(sub, x).abs().max()))
        assert result.max_abs_diff <= 1e-5 * scale, (result.max_abs_diff, scale)  # float32 rounding, relative
