"""Registered sorted (nested) supernets: an MLP, a ResNet-style CNN and a small vision transformer.

Each member is a :class:`~nasforge.supernets.sorted.SortedNetwork` built from a frozen config dataclass; the
registered factory takes the config's fields as JSON-able keyword overrides, and ``net.config_dict()`` returns
them, so ``create_supernet(name, **net.config_dict())`` rebuilds the same network.

- ``sorted-mlp``: flattened ``1x8x8`` digits -> ``d`` hidden layers of width ``w`` -> 10 classes. The depth
  counts hidden layers *including the first* (the input layer ``in_features -> w``): the stem is only a
  ``Flatten``, the single stage holds the hidden layers, so ``d = 1`` is input layer + head. Widths 4..128 in
  steps of 4 and depths 1..5: 160 sub-models.
- ``sorted-resnet``: 3x3 conv stem, 3 stages of basic blocks (16, 32, 64 channels, strides 1, 2, 2), global
  average pool, linear head; ``w`` is the percentage of every layer's channels (see
  :func:`~nasforge.supernets.sorted.blocks.percent_of`), ``d`` the blocks per stage.
- ``sorted-transformer``: 4x4 patches of a ``1x16x16`` image (16 tokens, width 64), ``d`` pre-LN encoder blocks
  with ``h`` heads of width 16 and FFN width ``f``, final LayerNorm, mean over tokens, linear head.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

from torch import nn

from nasforge.errors import ConfigError
from nasforge.supernets.arch import Dimension, SearchSpace
from nasforge.supernets.base import register_supernet
from nasforge.supernets.layers import ElasticDepth
from nasforge.supernets.sorted.blocks import (
    ElasticSize,
    GlobalAvgPool2d,
    PatchEmbedding,
    SortedBasicBlock,
    SortedConvBN,
    SortedEncoderBlock,
    SortedLinear,
    SortedSequential,
    TokenMeanPool,
)
from nasforge.supernets.sorted.network import SortedNetwork

__all__ = [
    "SortedMLPConfig",
    "SortedResNetConfig",
    "SortedTransformerConfig",
    "build_sorted_mlp",
    "build_sorted_resnet",
    "build_sorted_transformer",
    "sorted_mlp",
    "sorted_resnet",
    "sorted_transformer",
]

_C = TypeVar("_C")


def _choices(name: str, values: Any, low: int = 1, high: int | None = None) -> tuple[int, ...]:
    """Sorted distinct ints in ``low..high`` from a list or tuple; :class:`ConfigError` naming ``name`` otherwise."""
    items = list(values) if isinstance(values, (list, tuple)) else []
    valid = bool(items) and all(
        not isinstance(v, bool) and isinstance(v, (int, float)) and float(v).is_integer() for v in items
    )
    out = tuple(sorted({int(v) for v in items})) if valid else ()
    if not out or out[0] < low or (high is not None and out[-1] > high):
        upper = "" if high is None else f"..{high}"
        raise ConfigError(f"{name} must be a non-empty list of ints in {low}{upper}, got {values!r}")
    return out


def _check_common(num_classes: int, in_channels: int, image_size: int) -> None:
    if num_classes < 2 or in_channels < 1 or image_size < 1:
        raise ConfigError(
            f"need num_classes >= 2, in_channels >= 1 and image_size >= 1, got {num_classes}, {in_channels}, "
            f"{image_size}"
        )


def _with_overrides(config: _C, overrides: Mapping[str, Any], family: str) -> _C:
    allowed = {f.name for f in fields(config)}  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ConfigError(f"unknown {family} option(s) {unknown}; allowed: {sorted(allowed)}")
    return replace(config, **overrides)  # type: ignore[type-var]


# -- MLP --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SortedMLPConfig:
    """A sorted MLP: ``image -> Flatten -> d x (Linear + ReLU, width w) -> Linear -> classes``."""

    num_classes: int = 10
    in_channels: int = 1
    image_size: int = 8
    widths: tuple[int, ...] = tuple(range(4, 129, 4))
    depths: tuple[int, ...] = (1, 2, 3, 4, 5)

    def __post_init__(self) -> None:
        _check_common(self.num_classes, self.in_channels, self.image_size)
        object.__setattr__(self, "widths", _choices("widths", self.widths))
        object.__setattr__(self, "depths", _choices("depths", self.depths))


def build_sorted_mlp(config: SortedMLPConfig, name: str = "sorted-mlp") -> SortedNetwork:
    """The :class:`SortedNetwork` of a :class:`SortedMLPConfig` (dimensions ``w`` and ``d``)."""
    c = config
    width = ElasticSize(c.widths[-1], "w")
    hidden = [SortedLinear(c.in_channels * c.image_size**2, width, activation="relu")]
    hidden += [SortedLinear(width, width, activation="relu") for _ in range(c.depths[-1] - 1)]
    space = SearchSpace(name, (
        Dimension("w", c.widths, description="width of every hidden layer"),
        Dimension("d", c.depths, description="number of hidden layers (the input layer included)"),
    ))
    return SortedNetwork(space, nn.Flatten(), [ElasticDepth(hidden)], SortedLinear(width, c.num_classes),
                         in_channels=c.in_channels, resolution=c.image_size, config=c)


@register_supernet("sorted-mlp", "sorted (nested) MLP: widths 4..128 x depths 1..5 = 160 sub-models (1x8x8 digits)")
def sorted_mlp(**overrides: Any) -> SortedNetwork:
    """SortedNet-style MLP on flattened 8x8 images; options are the fields of :class:`SortedMLPConfig`."""
    return build_sorted_mlp(_with_overrides(SortedMLPConfig(), overrides, "sorted-mlp"))


# -- ResNet -----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SortedResNetConfig:
    """A sorted ResNet of basic blocks; ``w`` scales every layer's channels by the same percentage."""

    num_classes: int = 10
    in_channels: int = 1
    image_size: int = 16
    stem_channels: int = 16
    stage_channels: tuple[int, ...] = (16, 32, 64)
    stage_strides: tuple[int, ...] = (1, 2, 2)
    depths: tuple[int, ...] = (1, 2, 3)
    width_percents: tuple[int, ...] = (25, 50, 75, 100)
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5

    def __post_init__(self) -> None:
        _check_common(self.num_classes, self.in_channels, self.image_size)
        if self.stem_channels < 1:
            raise ConfigError(f"stem_channels must be >= 1, got {self.stem_channels}")
        channels = tuple(int(c) for c in self.stage_channels)
        strides = tuple(int(s) for s in self.stage_strides)
        if not channels or len(channels) != len(strides) or min(channels) < 1 or not set(strides) <= {1, 2}:
            raise ConfigError(
                f"stage_channels {list(channels)} and stage_strides {list(strides)} need one entry per stage, "
                "channels >= 1 and strides 1 or 2"
            )
        object.__setattr__(self, "stage_channels", channels)
        object.__setattr__(self, "stage_strides", strides)
        object.__setattr__(self, "depths", _choices("depths", self.depths))
        object.__setattr__(self, "width_percents", _choices("width_percents", self.width_percents, 1, 100))


def build_sorted_resnet(config: SortedResNetConfig, name: str = "sorted-resnet") -> SortedNetwork:
    """The :class:`SortedNetwork` of a :class:`SortedResNetConfig` (dimensions ``w`` in percent and ``d``)."""
    c = config
    bn = {"bn_momentum": c.bn_momentum, "bn_eps": c.bn_eps}

    def size(full: int) -> ElasticSize:
        return ElasticSize(full, "w", percent=True)

    stem = SortedConvBN(c.in_channels, size(c.stem_channels), 3, 1, relu=True, **bn)
    stages, cin = [], size(c.stem_channels)
    for channels, stride in zip(c.stage_channels, c.stage_strides, strict=True):
        blocks = []
        for j in range(c.depths[-1]):
            blocks.append(SortedBasicBlock(cin, size(channels), stride if j == 0 else 1, **bn))
            cin = size(channels)
        stages.append(ElasticDepth(blocks))
    head = SortedSequential(GlobalAvgPool2d(), SortedLinear(cin, c.num_classes))
    space = SearchSpace(name, (
        Dimension("w", c.width_percents, description="channels of every layer, in percent of the full width"),
        Dimension("d", c.depths, description="residual blocks per stage"),
    ))
    return SortedNetwork(space, stem, stages, head, in_channels=c.in_channels, resolution=c.image_size, config=c)


@register_supernet("sorted-resnet", "sorted (nested) ResNet: widths 25..100% x 1..3 blocks per stage (1x16x16)")
def sorted_resnet(**overrides: Any) -> SortedNetwork:
    """SortedNet-style ResNet of basic blocks; options are the fields of :class:`SortedResNetConfig`."""
    return build_sorted_resnet(_with_overrides(SortedResNetConfig(), overrides, "sorted-resnet"))


# -- Transformer ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SortedTransformerConfig:
    """A sorted vision transformer: elastic layers ``d``, heads ``h`` and FFN width ``f``; fixed token width."""

    num_classes: int = 10
    in_channels: int = 1
    image_size: int = 16
    patch_size: int = 4
    embed_dim: int = 64
    head_dim: int = 16
    depths: tuple[int, ...] = (1, 2, 3, 4)
    heads: tuple[int, ...] = (1, 2, 4)
    ffn_widths: tuple[int, ...] = (32, 64, 128, 256)
    ln_eps: float = 1e-5

    def __post_init__(self) -> None:
        _check_common(self.num_classes, self.in_channels, self.image_size)
        if self.patch_size < 1 or self.image_size % self.patch_size:
            raise ConfigError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.embed_dim < 1 or self.head_dim < 1:
            raise ConfigError(f"embed_dim and head_dim must be >= 1, got {self.embed_dim}, {self.head_dim}")
        object.__setattr__(self, "depths", _choices("depths", self.depths))
        object.__setattr__(self, "heads", _choices("heads", self.heads))
        object.__setattr__(self, "ffn_widths", _choices("ffn_widths", self.ffn_widths))


def build_sorted_transformer(config: SortedTransformerConfig, name: str = "sorted-transformer") -> SortedNetwork:
    """The :class:`SortedNetwork` of a :class:`SortedTransformerConfig` (dimensions ``d``, ``h``, ``f``)."""
    c = config
    stem = PatchEmbedding(c.in_channels, c.embed_dim, c.patch_size, c.image_size)
    blocks = [
        SortedEncoderBlock(c.embed_dim, c.heads[-1], c.head_dim, c.ffn_widths[-1], ln_eps=c.ln_eps)
        for _ in range(c.depths[-1])
    ]
    head = nn.Sequential(nn.LayerNorm(c.embed_dim, eps=c.ln_eps), TokenMeanPool(), nn.Linear(c.embed_dim, c.num_classes))
    space = SearchSpace(name, (
        Dimension("d", c.depths, description="encoder layers"),
        Dimension("h", c.heads, description=f"attention heads per layer (of width {c.head_dim})"),
        Dimension("f", c.ffn_widths, description="hidden width of every FFN"),
    ))
    return SortedNetwork(space, stem, [ElasticDepth(blocks)], head, in_channels=c.in_channels,
                         resolution=c.image_size, config=c)


@register_supernet("sorted-transformer", "sorted (nested) ViT: 1..4 layers x 1,2,4 heads x FFN 32..256 (1x16x16)")
def sorted_transformer(**overrides: Any) -> SortedNetwork:
    """SortedNet-style vision transformer; options are the fields of :class:`SortedTransformerConfig`."""
    return build_sorted_transformer(_with_overrides(SortedTransformerConfig(), overrides, "sorted-transformer"))
