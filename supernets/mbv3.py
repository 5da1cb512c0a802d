"""The elastic MobileNetV3 family: MBConv units with elastic kernel, expand ratio and depth.

One configuration (:class:`MBV3Config`) describes every member: stem, an optional fixed first block, a list of
stages (width, stride, activation, squeeze-excite), the elastic choices, the head and the input resolutions.
The Once-for-All ImageNet supernets and the small-image members are configurations of this one class.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
from torch import nn

from nasforge.errors import ConfigError
from nasforge.supernets.arch import Architecture, DepthGate, Dimension, SearchSpace
from nasforge.supernets.base import Supernet, register_supernet
from nasforge.supernets.layers import (
    DynamicMBConv,
    ElasticDepth,
    make_activation,
    make_divisible,
    mid_channels,
    se_hidden,
)

__all__ = ["Stage", "MBV3Config", "ElasticMobileNetV3", "MobileNetV3Subnet", "mbv3_cost"]


@dataclass(frozen=True)
class Stage:
    """One elastic unit: its output width, the stride of its first block, activation and squeeze-excite."""

    width: int
    stride: int
    act: str = "relu"
    se: bool = False


@dataclass(frozen=True)
class MBV3Config:
    """Everything that defines a member of the elastic MobileNetV3 family."""

    num_classes: int = 10
    in_channels: int = 3
    stem_width: int = 16
    stem_stride: int = 2
    stem_act: str = "hswish"
    first_block_width: int | None = 16
    first_block_act: str = "relu"
    stages: tuple[Stage, ...] = field(
        default=(
            Stage(24, 2, "relu", False),
            Stage(40, 2, "relu", True),
            Stage(80, 2, "hswish", False),
            Stage(112, 1, "hswish", True),
            Stage(160, 2, "hswish", True),
        )
    )
    kernel_sizes: tuple[int, ...] = (3, 5, 7)
    expand_ratios: tuple[int, ...] = (3, 4, 6)
    depths: tuple[int, ...] = (2, 3, 4)
    resolutions: tuple[int, ...] = (224,)
    final_expand_width: int = 960
    feature_width: int | None = 1280
    dropout: float = 0.1
    kernel_transform: bool = True
    divisor: int = 8
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5

    def __post_init__(self) -> None:
        stages = tuple(s if isinstance(s, Stage) else _stage_from(s) for s in self.stages)
        object.__setattr__(self, "stages", stages)
        for name in ("kernel_sizes", "expand_ratios", "depths", "resolutions"):
            object.__setattr__(self, name, tuple(sorted(int(v) for v in getattr(self, name))))
        if not stages:
            raise ConfigError("an MBV3 config needs at least one stage")
        if min(self.depths) < 1:
            raise ConfigError(f"depths must be >= 1, got {self.depths}")
        if any(k % 2 == 0 for k in self.kernel_sizes):
            raise ConfigError(f"kernel sizes must be odd, got {self.kernel_sizes}")
        if self.num_classes < 2 or self.in_channels < 1:
            raise ConfigError(f"need num_classes >= 2 and in_channels >= 1, got {self.num_classes}, {self.in_channels}")

    @property
    def max_depth(self) -> int:
        return self.depths[-1]

    def space(self, name: str) -> SearchSpace:
        """The search space of this member."""
        n_blocks = len(self.stages) * self.max_depth
        dims = (
            Dimension("ks", self.kernel_sizes, n_blocks, description="depthwise kernel size per block"),
            Dimension("e", self.expand_ratios, n_blocks, description="expand ratio per block"),
            Dimension("d", self.depths, len(self.stages), description="number of blocks per unit"),
            Dimension("r", self.resolutions, default=self.resolutions[-1], description="input resolution"),
        )
        return SearchSpace(name, dims, (DepthGate("d", ("ks", "e"), self.max_depth),))

    def with_overrides(self, overrides: Mapping[str, Any]) -> MBV3Config:
        """A copy with fields replaced; unknown keys raise :class:`ConfigError` naming the allowed ones."""
        allowed = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - allowed)
        if unknown:
            raise ConfigError(f"unknown MBV3 option(s) {unknown}; allowed: {sorted(allowed)}")
        return replace(self, **overrides)


def _stage_from(value: Any) -> Stage:
    if isinstance(value, Mapping):
        try:
            return Stage(**value)
        except TypeError as exc:
            raise ConfigError(f"bad stage {dict(value)}: {exc}; fields are width, stride, act, se") from None
    if isinstance(value, (list, tuple)):
        return Stage(*value)
    raise ConfigError(f"a stage must be a mapping with width/stride/act/se, got {value!r}")


# -- exact analytic cost ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Layer:
    kind: str  # "conv" | "linear"
    cin: int
    cout: int
    k: int = 1
    groups: int = 1
    hw: int = 1  # output spatial size (square)
    bias: bool = False
    bn: bool = False


def _conv_out(h: int, k: int, s: int) -> int:
    return (h + 2 * (k // 2) - k) // s + 1


def _block_layers(cfg: MBV3Config, cin: int, cout: int, k: int, e: int | None, s: int, se: bool, h: int) -> Iterator[_Layer]:
    ho = _conv_out(h, k, s)
    mid = cin
    if e is not None:
        mid = mid_channels(cin, e, cfg.divisor)
        yield _Layer("conv", cin, mid, hw=h, bn=True)
    yield _Layer("conv", mid, mid, k, groups=mid, hw=ho, bn=True)
    if se:
        hid = se_hidden(mid, divisor=cfg.divisor)
        yield _Layer("conv", mid, hid, bias=True)
        yield _Layer("conv", hid, mid, bias=True)
    yield _Layer("conv", mid, cout, hw=ho, bn=True)


def _layers(cfg: MBV3Config, arch: Architecture, r: int) -> Iterator[_Layer]:
    h = _conv_out(r, 3, cfg.stem_stride)
    yield _Layer("conv", cfg.in_channels, cfg.stem_width, 3, hw=h, bn=True)
    width = cfg.stem_width
    if cfg.first_block_width is not None:
        yield from _block_layers(cfg, width, cfg.first_block_width, 3, None, 1, False, h)
        width = cfg.first_block_width
    ks, es, ds = arch["ks"], arch["e"], arch["d"]
    assert isinstance(ks, tuple) and isinstance(es, tuple) and isinstance(ds, tuple)
    for u, stage in enumerate(cfg.stages):
        for j in range(ds[u]):
            i = u * cfg.max_depth + j
            s = stage.stride if j == 0 else 1
            yield from _block_layers(cfg, width, stage.width, ks[i], es[i], s, stage.se, h)
            h, width = _conv_out(h, ks[i], s), stage.width
    yield _Layer("conv", width, cfg.final_expand_width, hw=h, bn=True)
    width = cfg.final_expand_width
    if cfg.feature_width is not None:
        yield _Layer("conv", width, cfg.feature_width)
        width = cfg.feature_width
    yield _Layer("linear", width, cfg.num_classes, bias=True)


def mbv3_cost(cfg: MBV3Config, arch: Architecture, resolution: int | None = None) -> tuple[int, int]:
    """Exact ``(params, macs)`` of the subnet ``arch`` at ``resolution`` (default: the arch's ``r``)."""
    r = int(resolution if resolution is not None else arch["r"])
    params = macs = 0
    for layer in _layers(cfg, arch, r):
        per_out = (layer.cin // layer.groups) * layer.k * layer.k
        params += layer.cout * per_out + (layer.cout if layer.bias else 0) + (2 * layer.cout if layer.bn else 0)
        macs += layer.cout * layer.hw * layer.hw * per_out
    return params, macs


# -- the static subnet ----------------------------------------------------------------------------------------
class MobileNetV3Subnet(nn.Module):
    """A plain (static) MobileNetV3: what :meth:`ElasticMobileNetV3.extract` returns and what gets exported."""

    def __init__(
        self, stem: nn.Module, blocks: nn.Sequential, final_expand: nn.Module, feature: nn.Module | None,
        dropout: float, classifier: nn.Linear,
    ) -> None:
        super().__init__()
        self.stem, self.blocks, self.final_expand, self.feature = stem, blocks, final_expand, feature
        self.dropout = nn.Dropout(dropout)
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final_expand(self.blocks(self.stem(x)))
        x = x.mean((2, 3), keepdim=True)
        if self.feature is not None:
            x = self.feature(x)
        return self.classifier(self.dropout(torch.flatten(x, 1)))


# -- the supernet ---------------------------------------------------------------------------------------------
class ElasticMobileNetV3(Supernet):
    """Weight-sharing MobileNetV3 supernet (Once-for-All style) built from an :class:`MBV3Config`."""

    channels_last_training = True

    def __init__(self, config: MBV3Config, name: str = "mbv3") -> None:
        super().__init__(config.space(name))
        self.config = config
        self.name = name
        c = config
        self.stem = nn.Sequential(
            nn.Conv2d(c.in_channels, c.stem_width, 3, c.stem_stride, 1, bias=False),
            nn.BatchNorm2d(c.stem_width, eps=c.bn_eps, momentum=c.bn_momentum),
            make_activation(c.stem_act),
        )
        width = c.stem_width
        self.first_block: DynamicMBConv | None = None
        if c.first_block_width is not None:
            self.first_block = self._block(width, c.first_block_width, (3,), (1,), 1, c.first_block_act, False)
            width = c.first_block_width
        units = []
        for stage in c.stages:
            blocks = []
            for j in range(c.max_depth):
                blocks.append(
                    self._block(width, stage.width, c.kernel_sizes, c.expand_ratios, stage.stride if j == 0 else 1,
                                stage.act, stage.se)
                )
                width = stage.width
            units.append(ElasticDepth(blocks))
        self.units = nn.ModuleList(units)
        self.final_expand = nn.Sequential(
            nn.Conv2d(width, c.final_expand_width, 1, bias=False),
            nn.BatchNorm2d(c.final_expand_width, eps=c.bn_eps, momentum=c.bn_momentum),
            nn.Hardswish(),
        )
        width = c.final_expand_width
        self.feature: nn.Module | None = None
        if c.feature_width is not None:
            self.feature = nn.Sequential(nn.Conv2d(width, c.feature_width, 1, bias=False), nn.Hardswish())
            width = c.feature_width
        self.dropout = nn.Dropout(c.dropout)
        self.classifier = nn.Linear(width, c.num_classes)
        self.set_active(self.space.largest())

    def _block(self, cin: int, cout: int, ks: tuple[int, ...], es: tuple[int, ...], stride: int, act: str,
               se: bool) -> DynamicMBConv:
        c = self.config
        return DynamicMBConv(
            cin, cout, ks, es, stride, act, se, residual=stride == 1 and cin == cout,
            kernel_transform=c.kernel_transform, divisor=c.divisor, bn_momentum=c.bn_momentum, bn_eps=c.bn_eps,
        )

    @property
    def in_channels(self) -> int:
        return self.config.in_channels

    @property
    def default_resolution(self) -> int:
        return self.config.resolutions[-1]

    def _apply_arch(self, arch: Architecture) -> None:
        ks, es, ds = arch["ks"], arch["e"], arch["d"]
        assert isinstance(ks, tuple) and isinstance(es, tuple) and isinstance(ds, tuple)
        for u, unit in enumerate(self.units):
            unit.set_depth(ds[u])
            for j, block in enumerate(unit.blocks):
                block.active_kernel = ks[u * self.config.max_depth + j]
                block.active_expand = es[u * self.config.max_depth + j]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.first_block is not None:
            x = self.first_block(x)
        for unit in self.units:
            x = unit(x)
        x = self.final_expand(x).mean((2, 3), keepdim=True)
        if self.feature is not None:
            x = self.feature(x)
        return self.classifier(self.dropout(torch.flatten(x, 1)))

    def extract(self, arch: Architecture | Mapping[str, Any] | None = None) -> MobileNetV3Subnet:
        previous = self.active
        if arch is not None:
            self.set_active(arch)
        try:
            blocks = [self.first_block.to_static()] if self.first_block is not None else []
            for unit in self.units:
                blocks.extend(b.to_static() for b in unit.blocks[: unit.active_depth])
            subnet = MobileNetV3Subnet(
                copy.deepcopy(self.stem), nn.Sequential(*blocks), copy.deepcopy(self.final_expand),
                copy.deepcopy(self.feature), self.config.dropout, copy.deepcopy(self.classifier),
            )
        finally:
            self.set_active(previous)
        return subnet.to(self.classifier.weight.device).train(self.training)

    def macs(self, arch: Architecture | Mapping[str, Any], resolution: int | None = None) -> int:
        arch = self.space.validate(arch)
        return mbv3_cost(self.config, arch, resolution)[1]

    def params(self, arch: Architecture | Mapping[str, Any]) -> int:
        return mbv3_cost(self.config, self.space.validate(arch))[0]

    def reorganize_channels(self, expand_stage: int = 0) -> bool:
        from nasforge.supernets.reorganize import reorganize_channels

        reorganize_channels(self, expand_stage)
        return True

    def latency_segments(self, arch: Architecture | Mapping[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
        """Stem, each active block and the head (final expand, pooling, feature layer, classifier); a block's key
        holds everything that shapes its computation (channels, kernel, expansion, stride, SE, activation and
        input size)."""
        cfg = self.config
        arch = self.space.canonical(arch)
        r = self.resolution(arch)
        h = _conv_out(r, 3, cfg.stem_stride)
        segments: list[tuple[str, tuple[int, ...]]] = [
            (f"stem:{cfg.in_channels}>{cfg.stem_width}:s{cfg.stem_stride}:{cfg.stem_act}:{r}", (cfg.in_channels, r, r))]
        width = cfg.stem_width

        def block(cin: int, cout: int, k: int, e: int | None, s: int, se: bool, act: str, hin: int) -> None:
            segments.append((f"mbconv:{cin}>{cout}:k{k}:e{e}:s{s}:se{int(se)}:{act}:{hin}", (cin, hin, hin)))

        if cfg.first_block_width is not None:
            block(width, cfg.first_block_width, 3, None, 1, False, cfg.first_block_act, h)
            width = cfg.first_block_width
        ks, es, ds = arch["ks"], arch["e"], arch["d"]
        assert isinstance(ks, tuple) and isinstance(es, tuple) and isinstance(ds, tuple)
        for u, stage in enumerate(cfg.stages):
            for j in range(ds[u]):
                i = u * cfg.max_depth + j
                s = stage.stride if j == 0 else 1
                block(width, stage.width, ks[i], es[i], s, stage.se, stage.act, h)
                h, width = _conv_out(h, ks[i], s), stage.width
        segments.append((f"head:{width}>{cfg.final_expand_width}>{cfg.feature_width}>{cfg.num_classes}:{h}",
                         (width, h, h)))
        return segments

    def segment_modules(self, arch: Architecture | Mapping[str, Any]) -> list[nn.Module]:
        sub = self.extract(arch)
        return [sub.stem, *sub.blocks, _Head(sub)]

    def covering_architectures(self) -> list[Architecture]:
        """One architecture per (kernel, expansion, resolution) with every unit at full depth: a block's
        structure depends only on its own kernel and expansion, its position and the resolution, so these
        cover every block of the space."""
        cfg, space = self.config, self.space
        archs = []
        for r in cfg.resolutions:
            for k in cfg.kernel_sizes:
                for e in cfg.expand_ratios:
                    n = len(cfg.stages) * cfg.max_depth
                    archs.append(space.canonical({"ks": [k] * n, "e": [e] * n, "d": [cfg.max_depth] * len(cfg.stages),
                                                  "r": r}))
        return archs

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)


class _Head(nn.Module):
    """The tail of a :class:`MobileNetV3Subnet` after its blocks, as one module (a latency-table segment)."""

    def __init__(self, sub: MobileNetV3Subnet) -> None:
        super().__init__()
        self.final_expand, self.feature, self.classifier = sub.final_expand, sub.feature, sub.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final_expand(x).mean((2, 3), keepdim=True)
        if self.feature is not None:
            x = self.feature(x)
        return self.classifier(torch.flatten(x, 1))


# -- registered members ---------------------------------------------------------------------------------------
def _member(name: str, base: MBV3Config, overrides: Mapping[str, Any]) -> ElasticMobileNetV3:
    return ElasticMobileNetV3(base.with_overrides(overrides), name=name)


DIGITS_CONFIG = MBV3Config(
    num_classes=10,
    in_channels=1,
    stem_width=16,
    stem_stride=1,
    first_block_width=16,
    stages=(
        Stage(24, 2, "relu", False),
        Stage(32, 2, "relu", True),
        Stage(48, 1, "hswish", True),
        Stage(64, 2, "hswish", True),
    ),
    resolutions=(8, 10, 12, 14, 16),
    final_expand_width=256,
    feature_width=256,
    dropout=0.1,
)


@register_supernet("mbv3-small", "elastic MobileNetV3 for small images (default: 1x16x16 digits, 10 classes)")
def mbv3_small(**overrides: Any) -> ElasticMobileNetV3:
    """Small-image member: stem stride 1, four elastic units, resolutions 8..16."""
    return _member("mbv3-small", DIGITS_CONFIG, overrides)


def ofa_widths(width_mult: float) -> dict[str, Any]:
    """Stem, stage, final-expand and feature widths of Once-for-All's MobileNetV3 at ``width_mult``."""
    base = [16, 16, 24, 40, 80, 112, 160, 960, 1280]
    w = [make_divisible(b * width_mult, 8) for b in base]
    acts, ses, strides = ("relu", "relu", "hswish", "hswish", "hswish"), (False, True, False, True, True), (2, 2, 2, 1, 2)
    stages = tuple(Stage(w[2 + i], strides[i], acts[i], ses[i]) for i in range(5))
    return {"stem_width": w[0], "first_block_width": w[1], "stages": stages, "final_expand_width": w[7],
            "feature_width": w[8]}


def _ofa_config(width_mult: float) -> MBV3Config:
    return MBV3Config(num_classes=1000, in_channels=3, stem_stride=2, resolutions=tuple(range(128, 225, 4)),
                      **ofa_widths(width_mult))


@register_supernet("ofa-mbv3-w1.0", "Once-for-All MobileNetV3 supernet, width 1.0 (ImageNet, 224x224)")
def ofa_mbv3_w10(**overrides: Any) -> ElasticMobileNetV3:
    """Once-for-All's ImageNet MobileNetV3 space at width multiplier 1.0."""
    return _member("ofa-mbv3-w1.0", _ofa_config(1.0), overrides)


@register_supernet("ofa-mbv3-w1.2", "Once-for-All MobileNetV3 supernet, width 1.2 (ImageNet, 224x224)")
def ofa_mbv3_w12(**overrides: Any) -> ElasticMobileNetV3:
    """Once-for-All's ImageNet MobileNetV3 space at width multiplier 1.2."""
    return _member("ofa-mbv3-w1.2", _ofa_config(1.2), overrides)


@register_supernet("ofa-mbv3-cifar", "Once-for-All MobileNetV3 w1.0 units for 32x32 images (stem stride 1, 10 classes)")
def ofa_mbv3_cifar(**overrides: Any) -> ElasticMobileNetV3:
    """Once-for-All's w1.0 unit layout (k{3,5,7}, e{3,4,6}, d{2,3,4}) for CIFAR-size input.

    Widths, strides, activations, squeeze-excite and the 960/1280 head are those of ``ofa-mbv3-w1.0``; the stem
    has stride 1 (so a 32x32 image reaches the head at 2x2) and the elastic resolutions are 24, 28, 32.
    """
    base = replace(_ofa_config(1.0), num_classes=10, in_channels=3, stem_stride=1, resolutions=(24, 28, 32))
    return _member("ofa-mbv3-cifar", base, overrides)
