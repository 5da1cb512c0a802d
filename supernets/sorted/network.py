"""SortedNet-style nested networks: many sub-models that share parameters, each a prefix of the next.

SortedNet (Valipour et al., arXiv 2309.00255) trains many sub-models of one network at once. Along every chosen
dimension (depth, width, attention heads, FFN width, ...) a sub-model keeps the FIRST ``k`` units, so a smaller
sub-model's parameters are a leading slice of a larger one's, and all sub-models share the output head.

:class:`SortedNetwork` is the generic :class:`~nasforge.supernets.Supernet` for such models: a ``stem``, one or
more *stages* (each an :class:`~nasforge.supernets.layers.ElasticDepth` of blocks of which the first ``d`` run)
and a ``head``, plus a :class:`~nasforge.supernets.SearchSpace` of scalar dimensions. Elastic parts are
:class:`SortedModule` s: they read their active sizes from an architecture (:meth:`SortedModule.configure`) and
copy their active weights into plain torch modules (:meth:`SortedModule.to_static`). Any other ``nn.Module`` in
those places is fixed: it always runs whole and is deep-copied into extracted sub-models.

Build your own from the blocks of :mod:`nasforge.supernets.sorted.blocks`, for example a 2-stage MLP whose
hidden width ``w`` and depth ``d`` are elastic::

    from torch import nn
    from nasforge.supernets import Dimension, SearchSpace
    from nasforge.supernets.layers import ElasticDepth
    from nasforge.supernets.sorted import ElasticSize, SortedLinear, SortedNetwork

    w = ElasticSize(256, "w")                       # up to 256 units; arch["w"] of them are active
    space = SearchSpace("my-mlp", (Dimension("w", (64, 128, 256)), Dimension("d", (1, 2, 3))))
    net = SortedNetwork(
        space,
        stem=nn.Flatten(),
        stages=[ElasticDepth([SortedLinear(784, w, activation="relu")]
                             + [SortedLinear(w, w, activation="relu") for _ in range(2)])],
        head=SortedLinear(w, 10),
        in_channels=1, resolution=28,
    )
    arch = net.set_active({"w": 128, "d": 2})     # forward now runs that sub-model
    static = net.extract(arch)                    # plain nn.Sequential with copied weights
    net.macs(arch), net.params(arch)              # exact (counted on the static model)
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, is_dataclass
from typing import Any

import torch
from torch import nn

from nasforge.errors import ArchitectureError, ConfigError
from nasforge.supernets.arch import Architecture, SearchSpace
from nasforge.supernets.base import Supernet
from nasforge.supernets.layers import ElasticDepth
from nasforge.supernets.profile import count_macs, count_params

__all__ = ["SortedModule", "SortedNetwork", "configure", "to_static"]


class SortedModule(nn.Module, ABC):
    """An elastic module of a :class:`SortedNetwork`: its active sizes come from an architecture.

    Sub-models are nested: the active units are always the leading ones (``weight[:k]``), so any smaller
    setting uses a prefix of the parameters of any larger one.
    """

    @abstractmethod
    def configure(self, arch: Architecture) -> None:
        """Pick the active sizes for ``arch`` (a validated, canonical architecture); ``forward`` then runs them."""

    @abstractmethod
    def to_static(self, arch: Architecture) -> nn.Module:
        """Plain torch modules with copies of the weights that ``arch`` uses, computing the same function."""


def configure(module: nn.Module, arch: Architecture) -> None:
    """Configure ``module`` for ``arch`` if it is a :class:`SortedModule` (fixed modules need nothing)."""
    if isinstance(module, SortedModule):
        module.configure(arch)


def to_static(module: nn.Module, arch: Architecture) -> nn.Module:
    """The static copy of ``module`` for ``arch``: :meth:`SortedModule.to_static`, or a deep copy of a fixed module."""
    if isinstance(module, SortedModule):
        return module.to_static(arch)
    return copy.deepcopy(module)


class SortedNetwork(Supernet):
    """A nested (sorted) supernet: ``stem -> stage blocks -> head``, every sub-model a prefix of the largest.

    Args:
        space: the sub-models; only scalar dimensions (one value for the whole network) are allowed.
        stem: first module (a :class:`SortedModule` or a fixed ``nn.Module``).
        stages: one or more :class:`ElasticDepth` stacks of blocks.
        head: last module, shared by every sub-model.
        in_channels: image channels of the input ``[N, C, H, W]``.
        resolution: input height and width.
        depth_dim: the dimension giving the number of blocks that run in EVERY stage (``None``: all blocks
            always run).
        config: the options that rebuild this network with :func:`~nasforge.supernets.create_supernet` (a
            dataclass or a mapping); :meth:`config_dict` returns them. Hand-built networks may leave it out.

    Raises:
        ConfigError: a dimension is per-block, the depth dimension is missing or exceeds a stage, or a block
            reads a dimension the space does not have or asks for more units than it holds.
    """

    def __init__(
        self,
        space: SearchSpace,
        stem: nn.Module,
        stages: Sequence[ElasticDepth],
        head: nn.Module,
        *,
        in_channels: int,
        resolution: int,
        depth_dim: str | None = "d",
        config: Any = None,
    ) -> None:
        super().__init__(space)
        _check_space(space, stages, depth_dim)
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.head = head
        self.depth_dim = depth_dim
        self.config = config
        self._in_channels, self._resolution = int(in_channels), int(resolution)
        self._costs: dict[tuple[Architecture, int], tuple[int, int]] = {}
        try:
            for arch in (space.smallest(), space.largest()):
                self.set_active(arch)
        except KeyError as exc:
            raise ConfigError(
                f"a block of SortedNetwork {space.name!r} reads dimension {exc.args[0]!r}, which the space "
                f"does not have; its dimensions are {list(space.names)}"
            ) from None
        except ArchitectureError as exc:
            raise ConfigError(f"SortedNetwork {space.name!r} does not fit its space: {exc}") from None

    # -- the Supernet interface ------------------------------------------------------------------------------------
    @property
    def in_channels(self) -> int:
        return self._in_channels

    @property
    def default_resolution(self) -> int:
        return self._resolution

    def depth(self, arch: Architecture, stage: ElasticDepth) -> int:
        """Number of blocks of ``stage`` that run in ``arch``."""
        if self.depth_dim is None:
            return stage.max_depth
        value = arch[self.depth_dim]
        assert isinstance(value, int)
        return value

    def _apply_arch(self, arch: Architecture) -> None:
        configure(self.stem, arch)
        for stage in self.stages:
            assert isinstance(stage, ElasticDepth)
            stage.set_depth(self.depth(arch, stage))
            for block in stage.blocks:
                configure(block, arch)
        configure(self.head, arch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)

    def extract(self, arch: Architecture | Mapping[str, Any] | None = None) -> nn.Sequential:
        """The sub-model ``arch`` (default: the active one) as a plain ``nn.Sequential`` with copied weights.

        Its children are named ``stem``, ``stage{i}_block{j}`` (0-based) and ``head``, so the state dict of a
        smaller sub-model has a subset of a larger one's keys, each tensor a leading slice of the larger one's.
        The active architecture of this network is not changed.
        """
        arch = self.active if arch is None else self.space.canonical(arch)
        layers: OrderedDict[str, nn.Module] = OrderedDict(stem=to_static(self.stem, arch))
        for i, stage in enumerate(self.stages):
            assert isinstance(stage, ElasticDepth)
            for j, block in enumerate(stage.blocks[: self.depth(arch, stage)]):
                layers[f"stage{i}_block{j}"] = to_static(block, arch)
        layers["head"] = to_static(self.head, arch)
        sub = nn.Sequential(layers)
        param = next(self.parameters(), None)
        if param is not None:
            sub = sub.to(param.device)
        return sub.train(self.training)

    def macs(self, arch: Architecture | Mapping[str, Any], resolution: int | None = None) -> int:
        """Exact MACs of one input: counted on the extracted sub-model (attention matmuls included)."""
        arch = self.space.canonical(arch)
        r = self.resolution(arch) if resolution is None else int(resolution)
        return self._cost(arch, r)[1]

    def params(self, arch: Architecture | Mapping[str, Any]) -> int:
        """Exact parameter count of the extracted sub-model."""
        arch = self.space.canonical(arch)
        return self._cost(arch, self.resolution(arch))[0]

    def _cost(self, arch: Architecture, resolution: int) -> tuple[int, int]:
        """``(params, macs)`` of ``arch`` at ``resolution``, counted once and cached."""
        key = (arch, resolution)
        if key not in self._costs:
            sub = self.extract(arch).cpu()
            try:
                macs = count_macs(sub, (self.in_channels, resolution, resolution))
            except RuntimeError as exc:
                raise ConfigError(
                    f"{self.space.name!r} cannot run {resolution}x{resolution} inputs "
                    f"({str(exc).splitlines()[0][:120]}); it takes {self.default_resolution}x{self.default_resolution} inputs"
                ) from None
            self._costs[key] = (count_params(sub), macs)
        return self._costs[key]

    def config_dict(self) -> dict[str, Any]:
        """The ``config`` this network was built with, as JSON-able keyword arguments (tuples become lists)."""
        if self.config is None:
            raise ConfigError(
                f"SortedNetwork {self.space.name!r} was built by hand without a config; pass config=... (the "
                "options of a registered factory) to rebuild it with create_supernet"
            )
        data = asdict(self.config) if is_dataclass(self.config) else dict(self.config)
        return {k: _jsonable(v) for k, v in data.items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _check_space(space: SearchSpace, stages: Sequence[ElasticDepth], depth_dim: str | None) -> None:
    if not stages:
        raise ConfigError(f"SortedNetwork {space.name!r} needs at least one stage")
    for stage in stages:
        if not isinstance(stage, ElasticDepth):
            raise ConfigError(f"every stage must be an ElasticDepth of blocks, got {type(stage).__name__}")
    per_block = [d.name for d in space.dims if not d.is_scalar]
    if per_block or space.gates:
        raise ConfigError(
            f"SortedNetwork dimensions must be scalars (one value for the whole network); {per_block} are not"
        )
    if depth_dim is None:
        return
    if depth_dim not in space.names:
        raise ConfigError(f"depth dimension {depth_dim!r} is not in space {space.name!r} ({list(space.names)})")
    choices = space.dim(depth_dim).choices
    shallowest = min(stage.max_depth for stage in stages)
    if choices[0] < 1 or choices[-1] > shallowest:
        raise ConfigError(
            f"depth choices {choices} of {depth_dim!r} must lie in 1..{shallowest} (the blocks of the shortest stage)"
        )
