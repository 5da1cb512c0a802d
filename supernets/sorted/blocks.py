"""Elastic building blocks of sorted (nested) networks, and the static modules they extract to.

Every elastic size is an :class:`ElasticSize`: the largest number of units a layer holds and the architecture
dimension that says how many of the leading ones are active. The blocks use the library's dynamic layers
(:class:`~nasforge.supernets.layers.DynamicLinear`, :class:`~nasforge.supernets.layers.DynamicConv2d`,
:class:`~nasforge.supernets.layers.DynamicBatchNorm2d`), which always run the leading slice of their weights.

- MLP: :class:`SortedLinear` (a linear layer with an optional activation).
- ResNet: :class:`SortedConvBN` (conv + BN [+ ReLU]) and :class:`SortedBasicBlock` (two 3x3 convs + shortcut),
  :class:`GlobalAvgPool2d`.
- Transformer: :class:`PatchEmbedding` (fixed), :class:`SortedSelfAttention` (elastic heads),
  :class:`SortedEncoderBlock` (pre-LN attention + elastic-width FFN), :class:`TokenMeanPool`.
- Containers: :class:`SortedSequential`, :class:`SortedResidual`.

Extracted models contain only plain torch modules plus :class:`Residual` and :class:`SelfAttention`, whose
attention is written with ``matmul``/``softmax`` so that it exports to ONNX and reports its matmul MACs through
``extra_macs`` (see :func:`nasforge.supernets.count_macs`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from nasforge.errors import ArchitectureError
from nasforge.supernets.arch import Architecture
from nasforge.supernets.layers import DynamicBatchNorm2d, DynamicConv2d, DynamicLinear
from nasforge.supernets.sorted.network import SortedModule, configure, to_static

__all__ = [
    "ElasticSize",
    "percent_of",
    "make_activation",
    "SortedSequential",
    "SortedResidual",
    "SortedLinear",
    "SortedConvBN",
    "SortedBasicBlock",
    "SortedSelfAttention",
    "SortedEncoderBlock",
    "PatchEmbedding",
    "GlobalAvgPool2d",
    "TokenMeanPool",
    "Residual",
    "SelfAttention",
    "attend",
]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU}


def make_activation(name: str | None) -> nn.Module:
    """A fresh activation: ``"relu"``, ``"gelu"``, or ``None``/``"none"`` for the identity."""
    if name is None or name == "none":
        return nn.Identity()
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)} or None") from None


def percent_of(full: int, percent: int) -> int:
    """``percent`` % of ``full`` units, rounded to the nearest integer (halves up) and at least 1.

    The same fraction is applied to every layer, e.g. 25% of (16, 32, 64) channels is (4, 8, 16) and 75% of 10
    is 8. Integer arithmetic, so the result is exact and grows monotonically with ``percent``.
    """
    return max(1, (full * percent + 50) // 100)


@dataclass(frozen=True)
class ElasticSize:
    """How many leading units of a layer of ``full`` units an architecture keeps.

    Args:
        full: the largest number of units (what the weights hold).
        dim: the architecture dimension that sets the size; ``None`` for a fixed size (always ``full``).
        unit: units per step of ``dim`` (e.g. the head dimension when ``dim`` counts attention heads).
        percent: ``arch[dim]`` is a percentage of ``full`` (rounded by :func:`percent_of`) instead of a count.
    """

    full: int
    dim: str | None = None
    unit: int = 1
    percent: bool = False

    def __post_init__(self) -> None:
        if self.full < 1 or self.unit < 1:
            raise ValueError(f"ElasticSize needs full >= 1 and unit >= 1, got {self.full}, {self.unit}")
        if self.percent and self.unit != 1:
            raise ValueError("a percentage ElasticSize cannot also have a unit")

    def of(self, arch: Architecture) -> int:
        """The active number of units in ``arch`` (``KeyError`` if ``arch`` lacks :attr:`dim`)."""
        if self.dim is None:
            return self.full
        value = arch[self.dim]
        if not isinstance(value, int):
            raise ArchitectureError(f"dimension {self.dim!r} must be a single int, got {value!r}")
        n = percent_of(self.full, value) if self.percent else value * self.unit
        if not 1 <= n <= self.full:
            raise ArchitectureError(f"{self.dim}={value} asks for {n} units of a layer that has {self.full}")
        return n


SizeLike = ElasticSize | int


def _size(value: SizeLike) -> ElasticSize:
    return value if isinstance(value, ElasticSize) else ElasticSize(int(value))


# -- containers -----------------------------------------------------------------------------------------------------
class SortedSequential(SortedModule):
    """Runs its children in order; configures the elastic ones; extracts to an ``nn.Sequential``."""

    def __init__(self, *modules: nn.Module) -> None:
        super().__init__()
        self.layers = nn.ModuleList(modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def configure(self, arch: Architecture) -> None:
        for layer in self.layers:
            configure(layer, arch)

    def to_static(self, arch: Architecture) -> nn.Sequential:
        return nn.Sequential(*(to_static(layer, arch) for layer in self.layers))


class Residual(nn.Module):
    """Static residual: ``activation(body(x) + shortcut(x))``."""

    def __init__(self, body: nn.Module, shortcut: nn.Module | None = None, activation: nn.Module | None = None) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut if shortcut is not None else nn.Identity()
        self.activation = activation if activation is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.body(x) + self.shortcut(x))


class SortedResidual(SortedModule):
    """Elastic residual: ``activation(body(x) + shortcut(x))`` (identity shortcut when ``shortcut`` is None)."""

    def __init__(self, body: nn.Module, shortcut: nn.Module | None = None, activation: str | None = None) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut
        self.activation_name = activation
        self.activation = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.shortcut(x) if self.shortcut is not None else x
        return self.activation(self.body(x) + skip)

    def configure(self, arch: Architecture) -> None:
        configure(self.body, arch)
        if self.shortcut is not None:
            configure(self.shortcut, arch)

    def to_static(self, arch: Architecture) -> Residual:
        shortcut = to_static(self.shortcut, arch) if self.shortcut is not None else None
        return Residual(to_static(self.body, arch), shortcut, make_activation(self.activation_name))


# -- MLP ------------------------------------------------------------------------------------------------------------
class SortedLinear(SortedModule):
    """A linear layer (optionally followed by an activation) with elastic input and output widths.

    It reads the leading ``in_size.of(arch)`` inputs (whatever the previous layer produced) and produces the
    leading ``out_size.of(arch)`` outputs: ``weight[:out, :in]``, ``bias[:out]``.
    """

    def __init__(self, in_size: SizeLike, out_size: SizeLike, *, activation: str | None = None,
                 bias: bool = True) -> None:
        super().__init__()
        self.in_size, self.out_size = _size(in_size), _size(out_size)
        self.linear = DynamicLinear(self.in_size.full, self.out_size.full, bias=bias)
        self.activation_name = activation
        self.activation = make_activation(activation)
        self.active_out = self.out_size.full

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.linear(x, self.active_out))

    def configure(self, arch: Architecture) -> None:
        self.in_size.of(arch)  # validates
        self.active_out = self.out_size.of(arch)

    def to_static(self, arch: Architecture) -> nn.Module:
        lin = self.linear.to_static(self.in_size.of(arch), self.out_size.of(arch))
        return lin if self.activation_name in (None, "none") else nn.Sequential(lin, make_activation(self.activation_name))


# -- ResNet ---------------------------------------------------------------------------------------------------------
class SortedConvBN(SortedModule):
    """``k x k`` convolution (no bias, padding ``k // 2``) + batch norm [+ ReLU] with elastic channels.

    The BN is a :class:`DynamicBatchNorm2d`: the active channels use the leading slice of its affine parameters
    and running statistics.
    """

    def __init__(self, in_size: SizeLike, out_size: SizeLike, kernel_size: int = 3, stride: int = 1, *,
                 relu: bool = True, bn_momentum: float = 0.1, bn_eps: float = 1e-5) -> None:
        super().__init__()
        self.in_size, self.out_size = _size(in_size), _size(out_size)
        self.conv = DynamicConv2d(self.in_size.full, self.out_size.full, (kernel_size,), stride)
        self.bn = DynamicBatchNorm2d(self.out_size.full, eps=bn_eps, momentum=bn_momentum)
        self.relu = relu
        self.act = nn.ReLU() if relu else nn.Identity()
        self.active_out = self.out_size.full

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x, self.active_out)))

    def configure(self, arch: Architecture) -> None:
        self.in_size.of(arch)
        self.active_out = self.out_size.of(arch)

    def to_static(self, arch: Architecture) -> nn.Sequential:
        cin, cout = self.in_size.of(arch), self.out_size.of(arch)
        parts: list[nn.Module] = [self.conv.to_static(cin, cout), self.bn.to_static(cout)]
        if self.relu:
            parts.append(nn.ReLU())
        return nn.Sequential(*parts)


class SortedBasicBlock(SortedResidual):
    """ResNet basic block: ``relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x))`` with elastic channels.

    The first convolution has the block's ``stride``; the shortcut is a 1x1 conv + BN when the block downsamples
    or changes the channel count, else the identity.
    """

    def __init__(self, in_size: SizeLike, out_size: SizeLike, stride: int = 1, *, bn_momentum: float = 0.1,
                 bn_eps: float = 1e-5) -> None:
        cin, cout = _size(in_size), _size(out_size)
        bn = {"bn_momentum": bn_momentum, "bn_eps": bn_eps}
        body = SortedSequential(
            SortedConvBN(cin, cout, 3, stride, relu=True, **bn), SortedConvBN(cout, cout, 3, 1, relu=False, **bn)
        )
        shortcut = SortedConvBN(cin, cout, 1, stride, relu=False, **bn) if stride != 1 or cin != cout else None
        super().__init__(body, shortcut, "relu")


class GlobalAvgPool2d(nn.Module):
    """``[N, C, H, W] -> [N, C]``: the mean over the spatial positions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))


# -- Transformer ----------------------------------------------------------------------------------------------------
class PatchEmbedding(nn.Module):
    """``[N, C, H, W] -> [N, T, E]``: non-overlapping ``patch x patch`` patches (a strided conv) + learned positions."""

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int, image_size: int) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)
        self.position = nn.Parameter(torch.zeros(1, (image_size // patch_size) ** 2, embed_dim))
        nn.init.trunc_normal_(self.position, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2) + self.position


class TokenMeanPool(nn.Module):
    """``[N, T, E] -> [N, E]``: the mean over the tokens."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(1)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Scaled dot-product attention of ``[N, T, h * head_dim]`` queries, keys and values, head by head.

    Written with ``matmul`` and ``softmax`` only (exports to plain ONNX ops); returns ``[N, T, h * head_dim]``.
    """
    n, t, inner = q.shape

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(n, t, inner // head_dim, head_dim).transpose(1, 2)

    scores = torch.matmul(heads(q), heads(k).transpose(-2, -1)) * (1.0 / math.sqrt(head_dim))
    out = torch.matmul(torch.softmax(scores, dim=-1), heads(v))
    return out.transpose(1, 2).reshape(n, t, inner)


class SelfAttention(nn.Module):
    """Static multi-head self-attention over ``[N, T, E]`` tokens (see :func:`attend`)."""

    def __init__(self, q: nn.Linear, k: nn.Linear, v: nn.Linear, proj: nn.Linear, head_dim: int) -> None:
        super().__init__()
        self.q, self.k, self.v, self.proj = q, k, v, proj
        self.head_dim = head_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(attend(self.q(x), self.k(x), self.v(x), self.head_dim))

    def extra_macs(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        """MACs of the two attention matmuls for one sample: ``Q K^T`` and ``A V``, ``T * T * h * head_dim`` each."""
        t = inputs[0].shape[-2]
        return 2 * t * t * self.q.out_features


class SortedSelfAttention(SortedModule):
    """Multi-head self-attention with an elastic number of heads (the head dimension is fixed).

    Q, K and V keep the first ``h * head_dim`` outputs and the output projection reads the first
    ``h * head_dim`` inputs, so ``h`` heads are the first ``h`` heads of the full layer.

    Args:
        embed_dim: token width ``E`` (fixed).
        max_heads: the largest number of heads.
        head_dim: width of one head.
        heads_dim: the architecture dimension giving the number of active heads (``None``: always all).
    """

    def __init__(self, embed_dim: int, max_heads: int, head_dim: int, *, heads_dim: str | None = "h") -> None:
        super().__init__()
        self.embed_dim, self.head_dim = embed_dim, head_dim
        self.inner = ElasticSize(max_heads * head_dim, heads_dim, unit=head_dim)
        self.q, self.k, self.v = (DynamicLinear(embed_dim, self.inner.full) for _ in range(3))
        self.proj = DynamicLinear(self.inner.full, embed_dim)
        self.active_inner = self.inner.full

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (layer(x, self.active_inner) for layer in (self.q, self.k, self.v))
        return self.proj(attend(q, k, v, self.head_dim))

    def configure(self, arch: Architecture) -> None:
        self.active_inner = self.inner.of(arch)

    def to_static(self, arch: Architecture) -> SelfAttention:
        inner, e = self.inner.of(arch), self.embed_dim
        q, k, v = (layer.to_static(e, inner) for layer in (self.q, self.k, self.v))
        return SelfAttention(q, k, v, self.proj.to_static(inner, e), self.head_dim)


class SortedEncoderBlock(SortedSequential):
    """Pre-LN transformer encoder block: ``x + attn(ln(x))`` then ``x + ffn(ln(x))``.

    The attention has elastic heads (:class:`SortedSelfAttention`); the FFN is ``Linear(E -> f) -> GELU ->
    Linear(f -> E)`` with an elastic hidden width ``f`` (the first ``f`` hidden units). LayerNorms are fixed.
    """

    def __init__(self, embed_dim: int, max_heads: int, head_dim: int, ffn_width: int, *,
                 heads_dim: str | None = "h", ffn_dim: str | None = "f", ln_eps: float = 1e-5) -> None:
        hidden = ElasticSize(ffn_width, ffn_dim)
        attention = SortedSequential(
            nn.LayerNorm(embed_dim, eps=ln_eps), SortedSelfAttention(embed_dim, max_heads, head_dim, heads_dim=heads_dim)
        )
        ffn = SortedSequential(
            nn.LayerNorm(embed_dim, eps=ln_eps),
            SortedLinear(embed_dim, hidden, activation="gelu"),
            SortedLinear(hidden, embed_dim),
        )
        super().__init__(SortedResidual(attention), SortedResidual(ffn))
