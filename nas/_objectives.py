"""Search objectives (``"accuracy"``, ``"macs:min"``) and constraints (``"latency_ms<=5"``) as typed values."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from nasforge.errors import ConfigError

__all__ = [
    "Constraint",
    "Objective",
    "parse_constraint",
    "parse_constraints",
    "parse_objective",
    "parse_objectives",
]

DIRECTIONS = ("maximize", "minimize")

# Metrics whose direction is obvious; any other name needs an explicit ``name:max`` / ``name:min``.
_DEFAULT_DIRECTIONS: dict[str, str] = {
    "accuracy": "maximize",
    "top1": "maximize",
    "top5": "maximize",
    "macs": "minimize",
    "flops": "minimize",
    "params": "minimize",
    "latency_ms": "minimize",
    "int8_accuracy": "maximize",
    "int8_latency_ms": "minimize",
    "loss": "minimize",
    "memory_mb": "minimize",
    "size_mb": "minimize",
}
_DIRECTION_ALIASES = {"max": "maximize", "maximize": "maximize", "min": "minimize", "minimize": "minimize"}
_NAME = r"[A-Za-z_][A-Za-z0-9_.\-]*"
_OBJECTIVE_RE = re.compile(rf"^\s*({_NAME})\s*(?::\s*([A-Za-z]+)\s*)?$")
_CONSTRAINT_RE = re.compile(rf"^\s*({_NAME})\s*(<=|>=)\s*(\S+)\s*$")


@dataclass(frozen=True)
class Objective:
    """One metric to optimise.

    Args:
        name: metric key returned by the evaluator, e.g. ``"accuracy"`` or ``"latency_ms"``.
        direction: ``"maximize"`` or ``"minimize"``.
    """

    name: str
    direction: str

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ConfigError(
                f"objective {self.name!r} has direction {self.direction!r}; use 'maximize' or 'minimize'"
            )

    def __str__(self) -> str:
        return f"{self.name}:{self.direction[:3]}"


@dataclass(frozen=True)
class Constraint:
    """A bound on one metric: ``metric <= bound`` or ``metric >= bound``."""

    metric: str
    op: str
    bound: float

    def __post_init__(self) -> None:
        if self.op not in ("<=", ">="):
            raise ConfigError(f"constraint on {self.metric!r} has operator {self.op!r}; use '<=' or '>='")
        if not math.isfinite(self.bound):
            raise ConfigError(f"constraint on {self.metric!r} has bound {self.bound!r}; use a finite number")

    def violation(self, metrics: Mapping[str, float]) -> float:
        """How far ``metrics`` is outside the bound, relative to ``|bound|``; ``<= 0`` means feasible.

        The violation is divided by ``|bound|`` (by 1 when the bound is 0) so that constraints on metrics
        of very different scales (MACs vs. accuracy) weigh alike when a sampler sums them.

        Raises:
            ConfigError: if ``metrics`` has no value for :attr:`metric`, or the value is NaN.
        """
        if self.metric not in metrics:
            raise ConfigError(
                f"constraint '{self}' needs metric {self.metric!r} but the evaluator returned only "
                f"{sorted(metrics)}; return {self.metric!r} from the evaluator or drop the constraint"
            )
        value = float(metrics[self.metric])
        if math.isnan(value):
            raise ConfigError(f"constraint '{self}' got NaN for metric {self.metric!r}; return a number")
        excess = value - self.bound if self.op == "<=" else self.bound - value
        return excess / (abs(self.bound) or 1.0)

    def is_satisfied(self, metrics: Mapping[str, float]) -> bool:
        """Whether ``metrics`` meets the bound (False when the metric is missing or NaN)."""
        try:
            return self.violation(metrics) <= 0.0
        except ConfigError:
            return False

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.bound:.12g}"


def parse_objective(text: str | Objective) -> Objective:
    """Parse ``"accuracy"``, ``"macs"`` or an explicit ``"name:max"`` / ``"name:min"``.

    Known metrics (accuracy, top1, top5, int8_accuracy are maximised; macs, flops, params, latency_ms,
    int8_latency_ms, loss, memory_mb, size_mb are minimised) need no direction. An :class:`Objective` is returned unchanged.

    Raises:
        ConfigError: quoting ``text`` when it is malformed or names an unknown metric without direction.
    """
    if isinstance(text, Objective):
        return text
    match = _OBJECTIVE_RE.match(text) if isinstance(text, str) else None
    if match is None:
        raise ConfigError(
            f"objective {text!r} is not of the form 'name' or 'name:max' / 'name:min' (e.g. 'accuracy', 'latency_ms:min')"
        )
    name, suffix = match.group(1), match.group(2)
    if suffix is None:
        if name not in _DEFAULT_DIRECTIONS:
            raise ConfigError(
                f"objective {text!r} has no default direction; write '{name}:max' or '{name}:min' "
                f"(defaults exist for {sorted(_DEFAULT_DIRECTIONS)})"
            )
        return Objective(name, _DEFAULT_DIRECTIONS[name])
    direction = _DIRECTION_ALIASES.get(suffix.lower())
    if direction is None:
        raise ConfigError(f"objective {text!r} has direction {suffix!r}; use ':max' or ':min'")
    return Objective(name, direction)


def parse_constraint(text: str | Constraint) -> Constraint:
    """Parse ``"latency_ms<=5"``, ``"macs<=50e6"`` or ``"accuracy>=0.9"``; a :class:`Constraint` passes through.

    Raises:
        ConfigError: quoting ``text`` and the expected form ``metric<=number`` / ``metric>=number``.
    """
    if isinstance(text, Constraint):
        return text
    match = _CONSTRAINT_RE.match(text) if isinstance(text, str) else None
    expected = "expected 'metric<=number' or 'metric>=number', e.g. 'latency_ms<=5' or 'accuracy>=0.9'"
    if match is None:
        raise ConfigError(f"constraint {text!r} is malformed; {expected}")
    try:
        bound = float(match.group(3))
    except ValueError:
        raise ConfigError(f"constraint {text!r} has bound {match.group(3)!r}, not a number; {expected}") from None
    if not math.isfinite(bound):
        raise ConfigError(f"constraint {text!r} has a non-finite bound; {expected}")
    return Constraint(match.group(1), match.group(2), bound)


def parse_objectives(items: Iterable[str | Objective] | str | Objective) -> tuple[Objective, ...]:
    """Parse several objectives; raises :class:`ConfigError` when there are none or a name repeats."""
    if isinstance(items, (str, Objective)):
        items = (items,)
    objectives = tuple(parse_objective(item) for item in items)
    if not objectives:
        raise ConfigError("no objectives given; pass at least one, e.g. ('accuracy', 'macs')")
    names = [o.name for o in objectives]
    if len(set(names)) != len(names):
        raise ConfigError(f"objectives {names} name a metric twice; list each metric once")
    return objectives


def parse_constraints(items: Iterable[str | Constraint] | str | Constraint) -> tuple[Constraint, ...]:
    """Parse several constraints; raises :class:`ConfigError` when one is malformed or repeated."""
    if isinstance(items, (str, Constraint)):
        items = (items,)
    constraints = tuple(parse_constraint(item) for item in items)
    texts = [str(c) for c in constraints]
    if len(set(texts)) != len(texts):
        raise ConfigError(f"constraints {texts} repeat one; list each constraint once")
    return constraints
