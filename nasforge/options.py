"""``key=value`` options as the CLI takes them (zoo models, factories, supernets): values are JSON where they parse
(``width=32`` -> 32, ``widths=[8,16]`` -> a list), else the plain string."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from nasforge.errors import ConfigError

__all__ = ["parse_key_values"]


def parse_key_values(items: Iterable[str], bad: Callable[[str], str]) -> dict[str, Any]:
    """``{key: value}`` of ``items`` (each ``key=value``); an item without ``=`` or a key raises
    :class:`ConfigError` with the one-line message ``bad(item)``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(bad(item))
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out
