"""Regression tests for four pruning defects (issue 21, item 4): refused layers named in the error, transposed
convolutions counted and reported, round_to overshoot found closer or noted, the deep CIFAR ResNets registered."""

from __future__ import annotations

import pytest
import torch
from patterns import ChunkAdd, ConcatGrouped
from torch import nn

from nasforge.prune import (
    PruneError,
    create_model,
    find_unsupported,
    layer_widths,
    list_models,
    model_macs,
    output_layers,
    prune,
)
from nasforge.supernets import count_macs

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


class _OnlyChunkAdd(nn.Module):
    """Every group is refused: the conv feeds a chunk-then-add, and the classifier is the output."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, v = torch.chunk(self.a(x), 2, 1)
        return self.fc((self.b(u) + v).mean((2, 3)))


def test_nothing_prunable_names_every_layer_left_alone() -> None:
    torch.manual_seed(0)
    with pytest.raises(PruneError) as info:
        prune(_OnlyChunkAdd().eval(), X, target="macs=0.5")
    text = str(info.value)
    assert "\n" not in text and text.startswith("no layer can be pruned: ")
    assert "'a' (unsupported pattern: " in text and "'b' (unsupported pattern: " in text
    assert "'fc' (produces the model's output)" in text


def test_out_of_reach_says_the_smallest_and_who_holds_the_macs() -> None:
    torch.manual_seed(0)
    with pytest.raises(PruneError) as info:
        prune(ConcatGrouped().eval(), X, target="macs=0.05", ignore=["mid.0"])
    text = str(info.value)
    assert "\n" not in text and text.startswith("the target is out of reach")
    smallest = float(text.split("(")[1].split(" of the original MACs")[0])
    assert 0.05 < smallest < 1
    assert "'mid.0' (asked to leave alone)" in text and "'a.0' (unsupported pattern" in text
    assert "the 5 layer(s) left alone" in text and text.count(" (unsupported pattern") + 1 == 4
    assert " and 1 more; " in text  # the classifier, with the fewest MACs, is the one not named
    share = int(text.split("layer(s) left alone hold ")[1].split("%")[0])
    assert 50 < share < 100


def test_report_carries_the_layers_left_alone() -> None:
    torch.manual_seed(0)
    pruned, report = prune(ChunkAdd().eval(), X, target="macs=0.8")
    assert report.macs_after <= 0.8 * report.macs_before
    assert 0 < report.ignored_macs_share < 1
    assert any("left alone for patterns" in n and "'a.0' (unsupported pattern" in n for n in report.notes)
    assert report.to_dict()["notes"] == report.notes


def _decoder() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.ConvTranspose2d(32, 16, 4, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.ConvTranspose2d(16, 8, 4, 2, 1), nn.ReLU(),
        nn.Conv2d(8, 2, 1),
    ).eval()


def test_transposed_conv_macs_per_input_pixel() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False),            # 16x16 -> 8x8
                          nn.ConvTranspose2d(8, 4, 4, 2, 1, groups=2),     # 8x8 -> 16x16
                          nn.ConvTranspose2d(4, 6, 3, 1, 1))               # 16x16 -> 16x16
    conv = (8 * 8 * 8) * 3 * 9
    up = (8 * 8 * 8) * (4 // 2) * 16  # every INPUT pixel of every input channel meets out/groups kernels
    same = (4 * 16 * 16) * 6 * 9
    assert count_macs(model, (3, 16, 16)) == conv + up + same
    line = nn.ConvTranspose1d(5, 7, 4, stride=3)
    assert count_macs(line, (5, 10)) == 5 * 10 * 7 * 4


def test_decoder_prunes_and_reports_transposed_widths() -> None:
    model = _decoder()
    assert output_layers(model, X) == ["11"]
    assert find_unsupported(model, X, probe_all=True) == {}  # pruned == zeroed through the transposed convs
    pruned, report = prune(model, X, target="macs=0.5")
    assert report.macs_after <= 0.5 * report.macs_before == pytest.approx(0.5 * model_macs(model, X))
    assert report.widths["6"][0] == 16 and report.widths["9"][0] == 8  # the transposed convs
    assert report.widths["6"][1] < 16 and report.widths["6"][1] == layer_widths(pruned)["6"]
    assert report.widths["11"] == [2, 2]
    with torch.no_grad():
        out = pruned(X)
    assert out.shape == model(X).shape and torch.isfinite(out).all()


class _Transformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(64, 64)
        layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(1))


def test_round_to_finds_the_nearest_aligned_size_below_the_goal() -> None:
    """One global ratio jumps from 0.51 to 0.28 of the MACs here (the attention width goes 48 -> 32 at once); the
    second pass shrinks the MLPs of the 0.51 model instead, every count still a multiple of 4."""
    torch.manual_seed(0)
    tokens = torch.randn(1, 16, 64, generator=torch.Generator().manual_seed(1))
    pruned, report = prune(_Transformer().eval(), tokens, target="macs=2x", round_to=4)
    kept = report.macs_after / report.macs_before
    assert 0.45 <= kept <= 0.5  # was 0.28 (3.6x)
    assert all(w[1] % 4 == 0 for name, w in report.widths.items() if name != "head")
    assert report.notes == [] and not report.steps[0]["overshoot"] and not report.steps[0]["round_to_dropped"]
    assert pruned(tokens).shape == (1, 10)


def test_an_overshoot_that_alignment_forces_is_noted() -> None:
    """16 hidden units with round_to=8 can only become 8: half the MACs for a goal of 0.6, said in a note."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
    pruned, report = prune(model, torch.randn(1, 32), target="macs=0.6", round_to=8)
    assert layer_widths(pruned)["0"] == 8  # alignment kept, not silently dropped
    step = report.steps[0]
    assert step["overshoot"] and not step["round_to_dropped"] and step["above"] == report.macs_before
    assert report.notes == ["round_to=8 made the result overshoot: 0.50 of the MACs kept for a goal of 0.60 "
                            "(nearest aligned sizes: 0.50 below, 1.00 above); use --round-to 1 (round_to=None) to "
                            "hit the goal exactly"]


def test_plain_resnet_gets_no_note() -> None:
    torch.manual_seed(0)
    _, report = prune(create_model("resnet8", widths=[16, 24, 32]).eval(), X, target="macs=2x", round_to=4)
    assert 0.45 <= report.macs_after / report.macs_before <= 0.5
    assert report.notes == [] and not report.steps[0]["overshoot"]


@pytest.mark.parametrize("depth", [44, 110])
def test_deep_cifar_resnets_are_registered(depth: int) -> None:
    assert f"resnet{depth}" in list_models()
    model = create_model(f"resnet{depth}", num_classes=3)
    assert len(model.layers) == (depth - 2) // 6 * 3
    assert model(torch.randn(1, 3, 8, 8)).shape == (1, 3)


class _RawTokens(nn.Module):
    """A Transformer encoder fed raw token features: its residual stream starts at the input (optionally after an
    input layer, which makes the stream prunable)."""

    def __init__(self, embed: bool) -> None:
        super().__init__()
        self.embed = nn.Linear(32, 32) if embed else nn.Identity()
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(self.embed(x)).mean(1))


def test_a_residual_stream_from_the_raw_input_is_a_one_line_error() -> None:
    x = torch.randn(2, 10, 32)
    with pytest.raises(PruneError, match="no longer runs on its example input") as info:
        prune(_RawTokens(embed=False).eval(), x, target="macs=0.7")
    assert "'enc.layers.0.self_attn'" in str(info.value) and "add an input layer" in str(info.value)
    assert "\n" not in str(info.value)
    pruned, report = prune(_RawTokens(embed=True).eval(), x, target="macs=0.7")  # the advice works
    assert report.macs_after <= 0.7 * report.macs_before and pruned(x).shape == (2, 5)
