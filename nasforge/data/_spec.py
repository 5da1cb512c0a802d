"""Parsing of dataset specs: ``NAME[:PATH][?key=value&key=value]``."""

from __future__ import annotations

import re

from nasforge.errors import DataError

__all__ = ["parse_spec"]

_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_EXAMPLES = "e.g. 'digits', 'shapes?n=500&classes=4' or 'folder:/data/pets?mode=L'"


def parse_spec(spec: str) -> tuple[str, str | None, dict[str, str]]:
    """Split a dataset spec into its name, optional path and options.

    The grammar is ``NAME[:PATH][?key=value&key=value]``. The name is everything before the first
    ``:`` or ``?``; the options start at the first ``?`` after the name. Values stay strings: each
    dataset converts and checks its own options.

    Args:
        spec: the spec, e.g. ``"cifar10:/data/cifar?limit=5000"``.

    Returns:
        ``(name, path, options)``; ``path`` is ``None`` when the spec has no ``:PATH`` part.

    Raises:
        DataError: the spec is not a string, is empty, has a malformed name, an empty path, or an
            option that is not ``key=value`` or repeats a key.
    """
    if not isinstance(spec, str):
        raise DataError(f"dataset spec {spec!r} is not a string; pass text such as {_EXAMPLES}")
    text = spec.strip()
    if not text:
        raise DataError(f"dataset spec is empty; pass one such as {_EXAMPLES}")
    head, has_query, query = _split_query(text)
    name, has_path, path = head.partition(":")
    if not _NAME_RE.fullmatch(name):
        raise DataError(
            f"dataset spec {spec!r} has a malformed name {name!r}; a name starts with a letter and holds "
            f"letters, digits, '_', '.' or '-' ({_EXAMPLES})"
        )
    if has_path and not path.strip():
        raise DataError(f"dataset spec {spec!r} has an empty path after ':'; write NAME:PATH or drop the ':'")
    options = _parse_query(query, spec) if has_query else {}
    return name, (path.strip() if has_path else None), options


def _split_query(text: str) -> tuple[str, bool, str]:
    """Split ``text`` at the first ``?``; return ``(head, found, query)``."""
    head, sep, query = text.partition("?")
    return head, bool(sep), query


def _parse_query(query: str, spec: str) -> dict[str, str]:
    """Parse ``key=value&key=value`` into a dict, rejecting empty, malformed and repeated keys."""
    if not query.strip():
        raise DataError(
            f"dataset spec {spec!r} ends with '?' but has no options; write ?key=value or drop the '?'"
        )
    options: dict[str, str] = {}
    for item in query.split("&"):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not _KEY_RE.fullmatch(key) or not value:
            raise DataError(
                f"dataset spec {spec!r} has a malformed option {item!r}; options are key=value pairs joined by '&'"
            )
        if key in options:
            raise DataError(f"dataset spec {spec!r} sets option {key!r} twice; keep one of them")
        options[key] = value
    return options
