"""Argument plumbing shared by the ``nasforge`` command files (see :mod:`nasforge.cli`).

* Number types for argparse's ``type=``: a bad value stops the command at parse time with one line that quotes
  it and says what to pass (``positive_int``, ``nonneg_int``, ``int_between``, ``finite_float``).
* :class:`LazyChoices` and :func:`lazy_text_formatter`: choices and help text that come from a registry are
  read only when an option is used or help is printed, so building the parser imports no PyTorch (the board's
  agent, ``nasforge agent serve``, runs without it).
* :class:`OneLineParser`: parse errors as one line and exit code 2, like every other input error.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NoReturn, overload

__all__ = [
    "LazyChoices",
    "OneLineParser",
    "finite_float",
    "int_between",
    "lazy_text_formatter",
    "nonneg_int",
    "positive_float",
    "positive_int",
    "positive_ints",
]


def _invalid(text: str, want: str) -> argparse.ArgumentTypeError:
    """``VALUE is invalid; pass WANT``: :class:`OneLineParser` puts the option's name in front."""
    shown = text if text and not any(c.isspace() for c in text) else repr(text)
    return argparse.ArgumentTypeError(f"{shown} is invalid; pass {want}")


def int_between(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in ``[low, high]`` (no upper bound when ``high`` is None)."""
    want = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise _invalid(text, want) from None
        if value < low or (high is not None and value > high):
            raise _invalid(text, want)
        return value

    parse.__name__ = want
    return parse


positive_int = int_between(1)
nonneg_int = int_between(0)


def finite_float(*, above: float | None = None, at_least: float | None = None,
                 hint: str = "") -> Callable[[str], float]:
    """An argparse type: a finite float (never nan or inf), optionally ``> above`` or ``>= at_least``."""
    want = "a finite number" + (f" > {above:g}" if above is not None else "") + (
        f" >= {at_least:g}" if at_least is not None else "") + (f" ({hint})" if hint else "")

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            value = math.nan
        low_ok = (above is None or value > above) and (at_least is None or value >= at_least)
        if not (math.isfinite(value) and low_ok):
            raise _invalid(text, want)
        return value

    parse.__name__ = want
    return parse


positive_float = finite_float(above=0.0)


def positive_ints(example: str) -> Callable[[str], tuple[int, ...]]:
    """An argparse type: positive integers separated by commas, e.g. ``example``."""
    want = f"positive integers separated by commas, e.g. {example}"

    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(v) for v in text.split(","))
        except ValueError:
            values = ()
        if not values or min(values) < 1:
            raise _invalid(text, want)
        return values

    parse.__name__ = "positive integers"
    return parse


class LazyChoices(Sequence[str]):
    """Choices loaded on first use: argparse reads them only when the option is given or help is printed.

    Give the argument a ``metavar`` (otherwise argparse lists the choices when the argument is added) and
    write ``%(choices)s`` in its help to show them.
    """

    def __init__(self, load: Callable[[], Iterable[str]]) -> None:
        self._load = load
        self._values: tuple[str, ...] | None = None

    def _get(self) -> tuple[str, ...]:
        if self._values is None:
            self._values = tuple(self._load())
        return self._values

    def __contains__(self, item: object) -> bool:
        return item in self._get()

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...

    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        return self._get()[index]

    def __repr__(self) -> str:
        return f"LazyChoices({list(self._values) if self._values is not None else '<not loaded>'})"


def lazy_text_formatter(**fills: Callable[[], str]) -> type[argparse.HelpFormatter]:
    """A help formatter class that replaces ``{NAME}`` in descriptions with ``fills[NAME]()`` when help is
    printed (for lists that need a heavy import to compute)."""

    class _LazyText(argparse.HelpFormatter):
        def _format_text(self, text: str) -> str:
            for name, fill in fills.items():
                if "{" + name + "}" in text:
                    text = text.replace("{" + name + "}", fill())
            return super()._format_text(text)

    return _LazyText


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr and exit code 2 (its sub-commands'
    parsers are of the same class)."""

    def error(self, message: str) -> NoReturn:
        """Print ``nasforge: error: MESSAGE (see `PROG --help`)`` and exit with code 2.

        ``argument --flag: VALUE is invalid; ...`` (the number types' messages) reads ``--flag VALUE is
        invalid; ...``.
        """
        match = _BAD_VALUE.match(message)
        if match:
            message = f"{match['flag']} {match['rest']}"
        self.exit(2, f"nasforge: error: {message} (see `{self.prog} --help`)\n")


_BAD_VALUE = re.compile(r"argument (?:[^:\s]+/)*(?P<flag>[^:\s/]+): (?P<rest>.+? is invalid; .*)", re.DOTALL)
