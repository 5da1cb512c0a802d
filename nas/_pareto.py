"""Pareto fronts and exact 2-D hypervolume over objective vectors with mixed directions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nasforge.errors import ConfigError

__all__ = ["hypervolume_2d", "pareto_front", "to_minimization"]

_SIGNS = {"minimize": 1.0, "min": 1.0, "maximize": -1.0, "max": -1.0}


def to_minimization(points: np.ndarray | Sequence[Sequence[float]], directions: Sequence[str]) -> np.ndarray:
    """Return ``points`` as a float ``(n, m)`` array with maximised columns negated.

    Raises:
        ConfigError: if the shape does not match ``directions``, a direction is unknown, or a value is NaN.
    """
    directions = tuple(directions)
    bad = [d for d in directions if d not in _SIGNS]
    if bad:
        raise ConfigError(f"directions {bad} are not 'maximize' or 'minimize'; use one of those per column")
    arr = np.asarray(points, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, len(directions))
    if arr.ndim != 2 or arr.shape[1] != len(directions):
        raise ConfigError(
            f"points of shape {arr.shape} do not match {len(directions)} directions {directions}; "
            "pass one row per point and one column per direction"
        )
    if np.isnan(arr).any():
        raise ConfigError("points contain NaN; drop failed or unmeasured points first")
    return arr * np.array([_SIGNS[d] for d in directions])


def pareto_front(points: np.ndarray | Sequence[Sequence[float]], directions: Sequence[str]) -> np.ndarray:
    """Indices (ascending) of the rows that no other row dominates.

    Row ``a`` dominates row ``b`` when ``a`` is at least as good in every column and strictly better in one,
    so identical rows never dominate each other and are all kept.

    Args:
        points: ``(n, m)`` objective values.
        directions: ``"maximize"`` or ``"minimize"`` per column.

    Returns:
        An ``int64`` array of row indices.
    """
    loss = to_minimization(points, directions)
    keep = np.ones(len(loss), dtype=bool)
    for i, row in enumerate(loss):
        dominated_by = np.all(loss <= row, axis=1) & np.any(loss < row, axis=1)
        keep[i] = not dominated_by.any()
    return np.flatnonzero(keep).astype(np.int64)


def hypervolume_2d(
    points: np.ndarray | Sequence[Sequence[float]],
    directions: Sequence[str],
    reference: Sequence[float],
) -> float:
    """Exact area that ``points`` dominate up to ``reference`` (2 objectives).

    Points that are not strictly better than the reference in both objectives add nothing.

    Args:
        points: ``(n, 2)`` objective values.
        directions: two of ``"maximize"`` / ``"minimize"``.
        reference: the reference point in the same units and directions as ``points`` (a "worst" point).

    Raises:
        ConfigError: if there are not exactly two objectives or the reference is not a finite pair.
    """
    if len(tuple(directions)) != 2:
        raise ConfigError(f"hypervolume_2d needs exactly 2 directions, got {tuple(directions)}")
    ref_arr = np.asarray(reference, dtype=np.float64)
    if ref_arr.shape != (2,) or not np.isfinite(ref_arr).all():
        raise ConfigError(f"reference {reference!r} must be two finite numbers")
    loss = to_minimization(points, directions)
    ref = to_minimization(ref_arr[None, :], directions)[0]
    loss = loss[np.all(loss < ref, axis=1)]
    if len(loss) == 0:
        return 0.0
    front = loss[pareto_front(loss, ("minimize", "minimize"))]
    front = front[np.lexsort((front[:, 1], front[:, 0]))]
    xs = np.append(front[:, 0], ref[0])
    heights = ref[1] - np.minimum.accumulate(front[:, 1])
    return float(np.sum(np.diff(xs) * heights))
