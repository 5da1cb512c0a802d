"""Argument plumbing shared by the ``nasforge`` command files (see :mod:`nasforge.cli`).

* Number types for argparse's ``type=``: a bad value stops the command at parse time with one line that quotes
  it and says what to pass (``positive_int``, ``nonneg_int``, ``int_between``, ``finite_float``).
* :func:`registry_choice`: an option whose names come from a registry is checked when a command line is
  parsed, never when help is printed, so neither building the parser nor any ``--help`` imports PyTorch (the
  board's agent, ``nasforge agent serve``, runs without it, and help stays fast).
* :class:`OneLineParser`: parse errors as one line and exit code 2, like every other input error.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Iterable
from typing import NoReturn

__all__ = [
    "OneLineParser",
    "finite_float",
    "int_between",
    "nonneg_int",
    "positive_float",
    "positive_int",
    "positive_ints",
    "registry_choice",
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


def registry_choice(load: Callable[[], Iterable[str]]) -> Callable[[str], str]:
    """An argparse type: one of the names ``load()`` returns, read only when a command line is parsed.

    Unlike ``choices=``, which argparse lists whenever help is printed, printing help never calls ``load`` (a
    registry that needs PyTorch); write the names into the option's help text instead. A name that is not
    registered is a usage error, ``invalid choice: 'NAME' (choose from ...)``.
    """

    def parse(text: str) -> str:
        names = tuple(load())
        if text not in names:
            raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(names)})")
        return text

    parse.__name__ = "name"
    return parse


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
