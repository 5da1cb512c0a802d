"""One name -> plug-in registry for every plug-in family (supernets, trainers, searchers, profilers, datasets)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from nasforge.errors import ConfigError, NasforgeError

__all__ = ["Registry", "announce"]

T = TypeVar("T")

#: plug-ins announced by a higher layer: family kind -> name -> module whose import registers the plug-in
_ANNOUNCED: dict[str, dict[str, str]] = {}


def announce(kind: str, name: str, module: str) -> None:
    """Announce that importing ``module`` registers plug-in ``name`` into the ``kind`` family's registry.

    A higher layer plugs into a lower family this way without importing the lower package (and its heavy
    dependencies) at its own import time: the registry imports ``module`` on the first request for ``name``.
    """
    _ANNOUNCED.setdefault(kind, {})[name] = module


class Registry(Generic[T]):
    """Plug-ins of one family by name. Duplicate names raise; unknown names raise listing the known ones.

    Args:
        kind: what an entry is, used in messages (``"supernet"``, ``"latency backend"``, ...).
        missing: error type raised for an unknown name (a :class:`NasforgeError`, so the CLI shows one line).
        hints: what to do when a known-of but unregistered name is asked for, by name (added to the message).
    """

    def __init__(self, kind: str, missing: type[NasforgeError] = ConfigError,
                 hints: Mapping[str, str] | None = None) -> None:
        self.kind, self.missing = kind, missing
        self.hints = dict(hints or {})
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
        """The entry called ``name``, importing the module :func:`announce` named for it first if needed; raises
        ``missing`` naming the known entries (and the hint for ``name``, if any) otherwise."""
        module = _ANNOUNCED.get(self.kind, {}).get(name)
        if name not in self._items and module is not None:
            importlib.import_module(module)
        try:
            return self._items[name]
        except KeyError:
            hint = f"{self.hints[name]}; " if name in self.hints else ""
            raise self.missing(f"unknown {self.kind} {name!r}; {hint}known: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        """Registered and announced names, sorted."""
        return sorted(set(self._items) | set(_ANNOUNCED.get(self.kind, {})))

    def class_decorator(self, name: str, base: type, label: str) -> Callable[[Any], Any]:
        """``@label(name)`` for a plug-in class: checks that it subclasses ``base``, sets its ``name`` and registers
        it; :class:`ConfigError` for anything else or a taken name."""

        def decorate(cls: Any) -> Any:
            if not (isinstance(cls, type) and issubclass(cls, base)):
                article = "an" if base.__name__[0] in "AEIOU" else "a"
                raise ConfigError(f"@{label}({name!r}) decorates {cls!r}; decorate {article} {base.__name__} subclass")
            cls.name = name
            return self.add(name, cls)

        return decorate

    def copy(self) -> Registry[T]:
        """An independent registry with the same entries (for tests that register temporary plug-ins)."""
        other: Registry[T] = Registry(self.kind, self.missing, self.hints)
        other._items = dict(self._items)
        return other

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in _ANNOUNCED.get(self.kind, {})
