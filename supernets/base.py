"""The common base of every weight-sharing supernet, and the registry of supernet families."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from nasforge.errors import ConfigError
from nasforge.registry import Registry
from nasforge.supernets.arch import Architecture, SearchSpace

__all__ = ["Supernet", "SupernetEntry", "register_supernet", "list_supernets", "get_supernet_entry", "create_supernet"]


class Supernet(nn.Module, ABC):
    """A network that contains every architecture of its :attr:`space` as a weight-sharing subnet.

    Call order: :meth:`set_active` (or :meth:`sample_active`) picks the subnet that ``forward`` runs;
    :meth:`extract` copies that subnet's weights into a static ``nn.Module``; :meth:`macs` and :meth:`params`
    give exact analytic costs of any architecture without building it.
    """

    #: training batches may use the channels-last layout on CPU (``memory_format="auto"``). Off by default: in
    #: PyTorch 2.13's CPU backend the backward of a strided 1x1 convolution on a channels-last batch corrupts the
    #: heap (e.g. 64x4x16x16 input, 8 outputs, stride 2: a ResNet downsampling shortcut), so a family opts in once
    #: its layers are known to be safe (the MobileNetV3 family has no strided 1x1 convolution).
    channels_last_training: bool = False

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self._space = space
        self._active = space.largest()

    @property
    def space(self) -> SearchSpace:
        return self._space

    @property
    def active(self) -> Architecture:
        """The architecture that ``forward`` currently runs."""
        return self._active

    def set_active(self, arch: Architecture | Mapping[str, Any] | str) -> Architecture:
        """Make ``arch`` (validated against :attr:`space`) the active subnet and return it canonicalised."""
        arch = self.space.canonical(arch)
        self._apply_arch(arch)
        self._active = arch
        return arch

    def sample_active(self, rng: random.Random | int | None = None) -> Architecture:
        """Activate and return a uniformly sampled architecture."""
        return self.set_active(self.space.sample(rng))

    def resolution(self, arch: Architecture | None = None) -> int:
        """Input resolution of ``arch`` (the active one by default)."""
        arch = arch or self._active
        return int(arch["r"]) if "r" in arch else self.default_resolution

    def input_shape(self, arch: Architecture | None = None) -> tuple[int, int, int]:
        """``(channels, height, width)`` that the subnet ``arch`` expects."""
        r = self.resolution(arch)
        return (self.in_channels, r, r)

    @property
    @abstractmethod
    def in_channels(self) -> int: ...

    @property
    @abstractmethod
    def default_resolution(self) -> int: ...

    @abstractmethod
    def _apply_arch(self, arch: Architecture) -> None:
        """Configure the elastic layers for a validated, canonical ``arch``."""

    @abstractmethod
    def extract(self, arch: Architecture | Mapping[str, Any] | None = None) -> nn.Module:
        """A static network with copied weights that computes the same function as the subnet ``arch``."""

    @abstractmethod
    def macs(self, arch: Architecture | Mapping[str, Any], resolution: int | None = None) -> int:
        """Exact multiply-accumulates of convolutions and linear layers for one image."""

    @abstractmethod
    def params(self, arch: Architecture | Mapping[str, Any]) -> int:
        """Exact parameter count of the extracted subnet."""

    def reorganize_channels(self, expand_stage: int = 0) -> bool:
        """Sort elastic channels by importance in place so that smaller widths keep the most important ones
        (Once-for-All's channel re-organisation; ``expand_stage`` as in
        :func:`nasforge.supernets.reorganize_channels`). Returns ``False`` for a family with nothing to sort."""
        return False

    def latency_segments(self, arch: Architecture | Mapping[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
        """The subnet ``arch`` as consecutive segments for per-device latency tables: ``(key, input shape)`` per
        segment (stem, each block, head), where equal keys mean the same computation on the same input shape.
        :meth:`segment_modules` gives the matching static modules. Families without a block structure raise
        :class:`NotImplementedError` (latency is then predicted from MACs or measured end to end)."""
        raise NotImplementedError(f"{type(self).__name__} has no block decomposition for latency tables")

    def segment_modules(self, arch: Architecture | Mapping[str, Any]) -> list[nn.Module]:
        """Static modules of :meth:`latency_segments` (same order), with the subnet's weights."""
        raise NotImplementedError(f"{type(self).__name__} has no block decomposition for latency tables")

    def covering_architectures(self) -> list[Architecture]:
        """Architectures whose segments together include every segment key of the space (for building a
        latency table); the default is the two corners, which a table builder complements by sampling."""
        return [self.space.largest(), self.space.smallest()]

    @abstractmethod
    def config_dict(self) -> dict[str, Any]:
        """JSON-able keyword arguments that rebuild this supernet with :func:`create_supernet`."""


@dataclass(frozen=True)
class SupernetEntry:
    """A registered supernet: a name, a factory taking keyword overrides, and a one-line description."""

    name: str
    factory: Callable[..., Supernet]
    description: str


_REGISTRY: Registry[SupernetEntry] = Registry("supernet")


def register_supernet(name: str, description: str = "") -> Callable[[Callable[..., Supernet]], Callable[..., Supernet]]:
    """Decorator registering a factory ``(**overrides) -> Supernet`` under ``name`` (duplicates raise)."""

    def deco(factory: Callable[..., Supernet]) -> Callable[..., Supernet]:
        summary = description or (factory.__doc__ or "").strip().split("\n")[0]
        _REGISTRY.add(name, SupernetEntry(name, factory, summary))
        return factory

    return deco


def list_supernets() -> list[str]:
    """Names of all registered supernets."""
    _load_builtin()
    return _REGISTRY.names()


def get_supernet_entry(name: str) -> SupernetEntry:
    """The registry entry called ``name``; :class:`ConfigError` lists the known names otherwise."""
    _load_builtin()
    return _REGISTRY.get(name)


def create_supernet(name: str, **overrides: Any) -> Supernet:
    """Build the registered supernet ``name`` with keyword overrides (e.g. ``num_classes=10``)."""
    entry = get_supernet_entry(name)
    try:
        return entry.factory(**overrides)
    except TypeError as exc:
        raise ConfigError(f"bad options for supernet {name!r}: {exc}") from None


def _load_builtin() -> None:
    # Importing the family modules registers their members; done on first use, not at import time.
    from nasforge.supernets import mbv3  # noqa: F401
    from nasforge.supernets.sorted import models  # noqa: F401
