"""parse_objective / parse_constraint and constraint violations."""

from __future__ import annotations

import pytest

from nasforge.errors import ConfigError
from nasforge.nas import Constraint, Objective, parse_constraint, parse_objective


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("accuracy", Objective("accuracy", "maximize")),
        ("macs", Objective("macs", "minimize")),
        ("params", Objective("params", "minimize")),
        ("latency_ms", Objective("latency_ms", "minimize")),
        ("energy:min", Objective("energy", "minimize")),
        ("map50:max", Objective("map50", "maximize")),
        ("macs:max", Objective("macs", "maximize")),
        (" accuracy : minimize ", Objective("accuracy", "minimize")),
    ],
)
def test_parse_objective(text: str, expected: Objective) -> None:
    assert parse_objective(text) == expected


@pytest.mark.parametrize("text", ["energy", "accuracy:up", "", "a b", "macs<=5"])
def test_parse_objective_errors_quote_text(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_objective(text)
    assert repr(text) in str(info.value)


def test_objective_rejects_bad_direction() -> None:
    with pytest.raises(ConfigError, match="'upward'"):
        Objective("accuracy", "upward")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("latency_ms<=5", Constraint("latency_ms", "<=", 5.0)),
        ("macs<=50e6", Constraint("macs", "<=", 50e6)),
        ("accuracy>=0.9", Constraint("accuracy", ">=", 0.9)),
        ("  params <= 1.5e6 ", Constraint("params", "<=", 1.5e6)),
    ],
)
def test_parse_constraint(text: str, expected: Constraint) -> None:
    parsed = parse_constraint(text)
    assert parsed == expected
    assert parse_constraint(str(parsed)) == parsed


@pytest.mark.parametrize("text", ["latency_ms<5", "macs<=lots", "<=5", "macs==5", "macs<=inf", "accuracy"])
def test_parse_constraint_errors_quote_text_and_form(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_constraint(text)
    message = str(info.value)
    assert repr(text) in message
    assert "metric<=number" in message


def test_violation_sign_and_scale() -> None:
    upper = parse_constraint("macs<=50e6")
    assert upper.violation({"macs": 40e6}) == pytest.approx(-0.2)
    assert upper.violation({"macs": 50e6}) == 0.0
    assert upper.violation({"macs": 75e6}) == pytest.approx(0.5)
    lower = parse_constraint("accuracy>=0.8")
    assert lower.violation({"accuracy": 0.9}) < 0 < lower.violation({"accuracy": 0.6})
    assert parse_constraint("delta<=0").violation({"delta": 2.0}) == pytest.approx(2.0)


def test_violation_missing_metric_names_it() -> None:
    constraint = parse_constraint("latency_ms<=5")
    with pytest.raises(ConfigError, match="'latency_ms'.*\\['accuracy'\\]"):
        constraint.violation({"accuracy": 0.5})
    assert not constraint.is_satisfied({"accuracy": 0.5})
    assert constraint.is_satisfied({"latency_ms": 4.0})
