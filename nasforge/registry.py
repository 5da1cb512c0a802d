"""One name -> plug-in registry for every plug-in family (supernets, trainers, searchers, profilers, datasets)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from nasforge.errors import ConfigError, NasforgeError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Plug-ins of one family by name. Duplicate names raise; unknown names raise listing the known ones.

    Args:
        kind: what an entry is, used in messages (``"supernet"``, ``"latency backend"``, ...).
        missing: error type raised for an unknown name (a :class:`NasforgeError`, so the CLI shows one line).
    """

    def __init__(self, kind: str, missing: type[NasforgeError] = ConfigError) -> None:
        self.kind, self.missing = kind, missing
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        """Register ``item`` as ``name``; :class:`ConfigError` (a ``ValueError``) if the name is taken."""
        if name in self._items:
            raise ConfigError(f"{self.kind} {name!r} is already registered; pick another name")
        self._items[name] = item
        return item

    def decorator(self, name: str) -> Callable[[T], T]:
        """``@registry.decorator(name)`` registers the decorated object and returns it unchanged."""
        return lambda item: self.add(name, item)

    def get(self, name: str) -> T:
        """The entry called ``name``; raises ``missing`` naming the known entries otherwise."""
        try:
            return self._items[name]
        except KeyError:
            raise self.missing(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def copy(self) -> Registry[T]:
        """An independent registry with the same entries (for tests that register temporary plug-ins)."""
        other: Registry[T] = Registry(self.kind, self.missing)
        other._items = dict(self._items)
        return other

    def __contains__(self, name: object) -> bool:
        return name in self._items
