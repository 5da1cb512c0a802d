"""pareto_front and hypervolume_2d against hand-made points and hand-computed areas."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from nasforge.errors import ConfigError
from nasforge.nas import hypervolume_2d, pareto_front

MIN2 = ("minimize", "minimize")


def test_pareto_front_minimize_keeps_identical_points() -> None:
    points = [(1, 3), (2, 2), (3, 1), (3, 3), (2, 2), (2, 4)]
    # (3, 3) is dominated by (2, 2); (2, 4) by (1, 3) and (2, 2); the two (2, 2) tie and both stay.
    assert pareto_front(points, MIN2).tolist() == [0, 1, 2, 4]


def test_pareto_front_mixed_directions() -> None:
    # (accuracy: maximize, macs: minimize)
    points = np.array([[0.9, 10.0], [0.8, 5.0], [0.85, 12.0], [0.9, 10.0], [0.7, 5.0], [0.95, 30.0]])
    assert pareto_front(points, ("maximize", "minimize")).tolist() == [0, 1, 3, 5]
    # Flipping both directions turns the front around.
    assert pareto_front(points, ("minimize", "maximize")).tolist() == [2, 4, 5]


def test_pareto_front_weak_domination_and_single_objective() -> None:
    assert pareto_front([(1, 2), (1, 3)], MIN2).tolist() == [0]
    assert pareto_front([[0.5], [0.9], [0.9], [0.1]], ("maximize",)).tolist() == [1, 2]


def test_pareto_front_matches_brute_force_on_random_points() -> None:
    rng = np.random.default_rng(0)
    points = rng.integers(0, 6, size=(60, 3)).astype(float)
    dirs = ("minimize", "maximize", "minimize")
    signed = points * np.array([1, -1, 1])
    expected = [
        i
        for i in range(len(points))
        if not any(np.all(signed[j] <= signed[i]) and np.any(signed[j] < signed[i]) for j in range(len(points)))
    ]
    assert pareto_front(points, dirs).tolist() == expected


def test_pareto_front_empty_and_bad_input() -> None:
    assert pareto_front(np.zeros((0, 2)), MIN2).tolist() == []
    with pytest.raises(ConfigError, match="3 directions"):
        pareto_front([(1, 2)], ("minimize",) * 3)
    with pytest.raises(ConfigError, match="'up'"):
        pareto_front([(1, 2)], ("minimize", "up"))
    with pytest.raises(ConfigError, match="NaN"):
        pareto_front([(1, float("nan"))], MIN2)


def test_hypervolume_staircase() -> None:
    # Strips of width 1 at heights 1, 2, 3 below the reference (4, 4).
    assert hypervolume_2d([(1, 3), (2, 2), (3, 1)], MIN2, (4, 4)) == pytest.approx(6.0)
    # Dominated points, duplicates and points beyond the reference add nothing.
    extra = [(1, 3), (2, 2), (3, 1), (3, 3), (2, 2), (5, 0), (0, 4)]
    assert hypervolume_2d(extra, MIN2, (4, 4)) == pytest.approx(6.0)


def test_hypervolume_single_point_and_maximize() -> None:
    assert hypervolume_2d([(1.0, 2.0)], MIN2, (3.0, 5.0)) == pytest.approx(2.0 * 3.0)
    # accuracy (max) vs macs (min): area between accuracy 0.5..0.9 and macs 4..10 plus 0.5..0.7 and 2..4.
    points = [(0.9, 4.0), (0.7, 2.0)]
    expected = (0.9 - 0.5) * (10 - 4) + (0.7 - 0.5) * (4 - 2)
    assert hypervolume_2d(points, ("maximize", "minimize"), (0.5, 10.0)) == pytest.approx(expected)
    assert hypervolume_2d([], MIN2, (1.0, 1.0)) == 0.0


def test_hypervolume_matches_cell_count_on_integer_grid() -> None:
    rng = np.random.default_rng(1)
    points = rng.integers(0, 10, size=(12, 2))
    cells = sum(
        1 for i, j in itertools.product(range(10), range(10)) if np.any((points[:, 0] <= i) & (points[:, 1] <= j))
    )
    assert hypervolume_2d(points, MIN2, (10, 10)) == pytest.approx(float(cells))


def test_hypervolume_bad_input() -> None:
    with pytest.raises(ConfigError, match="exactly 2"):
        hypervolume_2d([(1, 2, 3)], ("minimize",) * 3, (4, 4, 4))
    with pytest.raises(ConfigError, match="reference"):
        hypervolume_2d([(1, 2)], MIN2, (4,))
