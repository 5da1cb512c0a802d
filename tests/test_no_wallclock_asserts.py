"""No test asserts how long something took: a loaded machine makes such asserts fail at random.

The scan looks at every ``assert`` under ``tests/`` for an upper bound on a duration: a comparison (``<``,
``<=``, or ``>``/``>=`` with the duration on the right) whose bounded side is a name containing ``elapsed``,
``seconds`` or ``duration``, or a subtraction involving a clock call (``time.perf_counter() - start``).
Deadline guards of polling loops (``time.monotonic() < deadline``) compare a clock reading, not a duration,
and stay allowed; so do lower bounds such as ``elapsed_s > 0``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
_DURATION_WORDS = ("elapsed", "seconds", "duration")
_CLOCKS = {"time", "perf_counter", "perf_counter_ns", "monotonic", "monotonic_ns", "process_time", "time_ns"}


def _is_clock_call(node: ast.AST) -> bool:
    """``time.X()``, ``perf_counter()``, ``monotonic()`` and friends."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if isinstance(func, ast.Attribute):
        return (isinstance(func.value, ast.Name) and func.value.id == "time") or func.attr in _CLOCKS - {"time"}
    return isinstance(func, ast.Name) and func.id in _CLOCKS - {"time"}


def _is_duration(node: ast.AST) -> bool:
    """A duration-named variable or attribute, or a difference of clock readings."""
    if isinstance(node, ast.Name):
        return any(word in node.id.lower() for word in _DURATION_WORDS)
    if isinstance(node, ast.Attribute):
        return any(word in node.attr.lower() for word in _DURATION_WORDS)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Sub):
        return any(_is_clock_call(sub) for sub in ast.walk(node))
    return False


def _bounds_a_duration(compare: ast.Compare) -> bool:
    """Whether some link of ``compare`` puts an upper bound on a duration."""
    operands = [compare.left, *compare.comparators]
    for op, left, right in zip(compare.ops, operands, operands[1:], strict=False):
        if isinstance(op, (ast.Lt, ast.LtE)) and _is_duration(left):
            return True
        if isinstance(op, (ast.Gt, ast.GtE)) and _is_duration(right):
            return True
    return False


def wallclock_asserts(source: str, filename: str = "<test>") -> list[int]:
    """Line numbers of the asserts in ``source`` that bound a duration from above."""
    lines = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Assert) and any(
            isinstance(sub, ast.Compare) and _bounds_a_duration(sub) for sub in ast.walk(node.test)
        ):
            lines.append(node.lineno)
    return lines


_OLD_SHAPES_TEST = '''
def test_generate_shapes_is_balanced_in_range_and_fast() -> None:
    start = time.perf_counter()
    x, y = generate_shapes(3000, 8, 32, 1.0, seed=0)
    elapsed = time.perf_counter() - start
    assert np.bincount(y).tolist() == [375] * 8
    assert elapsed < 2.0, f"generating 3000 32x32 images took {elapsed:.2f}s"
'''


@pytest.mark.parametrize(("source", "found"), [
    (_OLD_SHAPES_TEST, [7]),
    ("assert len(g) == 58 and elapsed < 2.0", [1]),
    ("assert seconds < 5.0", [1]),
    ("assert time.perf_counter() - start < 10.0", [1]),
    ("assert 30 > time.monotonic() - started", [1]),
    ("assert report.duration_s <= 1.0", [1]),
    ("assert time.monotonic() < deadline, 'never started'", []),  # a polling loop's hang guard
    ("assert record['elapsed_s'] > 0 and elapsed > 0", []),  # lower bounds are not speed limits
    ("assert now - 1 < stamp", []),  # no clock call, no duration name
])
def test_the_scan_finds_duration_bounds_only(source: str, found: list[int]) -> None:
    assert wallclock_asserts(source) == found


def test_no_test_asserts_a_wall_clock_duration() -> None:
    offenders = [f"{path.relative_to(TESTS)}:{line}" for path in sorted(TESTS.rglob("*.py"))
                 for line in wallclock_asserts(path.read_text(encoding="utf-8"), str(path))]
    assert not offenders, f"asserts on wall-clock durations (flaky under load): {', '.join(offenders)}"
