"""A PNG of all trials with the Pareto front drawn on top (matplotlib, Agg canvas; pyplot is not touched)."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from nasforge.errors import ConfigError
from nasforge.io import atomic_write_bytes

__all__ = ["plot_pareto"]


def _xy(points: Sequence[Mapping[str, float]], x: str, y: str) -> tuple[list[float], list[float]]:
    """Coordinates of the points that have finite ``x`` and ``y`` values."""
    xs, ys = [], []
    for p in points:
        if x in p and y in p and math.isfinite(float(p[x])) and math.isfinite(float(p[y])):
            xs.append(float(p[x]))
            ys.append(float(p[y]))
    return xs, ys


def _check_front(front: Sequence[Mapping[str, float]], x: str, y: str, annotate: Sequence[str] | None) -> None:
    for i, p in enumerate(front):
        missing = [k for k in (x, y) if k not in p]
        if missing:
            raise ConfigError(
                f"front point {i} has no {' or '.join(map(repr, missing))} (it has {sorted(p)}); plot metrics it has"
            )
    if annotate is not None and len(annotate) != len(front):
        raise ConfigError(
            f"annotate has {len(annotate)} labels for {len(front)} front points; give one label per front point"
        )


def plot_pareto(
    records_all: Sequence[Mapping[str, float]],
    front: Sequence[Mapping[str, float]],
    x: str,
    y: str,
    path: str | os.PathLike[str],
    *,
    title: str = "",
    xlabel: str | None = None,
    ylabel: str | None = None,
    annotate: Sequence[str] | None = None,
) -> Path:
    """Scatter every trial in grey and draw the front as a step line with markers; save a PNG atomically.

    Args:
        records_all: metrics of all trials; ones lacking ``x`` or ``y`` (failed trials) are skipped.
        front: metrics of the front members.
        x: metric on the horizontal axis, e.g. ``"macs"``.
        y: metric on the vertical axis, e.g. ``"accuracy"``.
        path: where to write the PNG.
        title: figure title.
        xlabel: axis label; defaults to ``x``.
        ylabel: axis label; defaults to ``y``.
        annotate: one label per front point (same order as ``front``), written next to it.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: if a front point lacks ``x`` or ``y``, or ``annotate`` has the wrong length.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    _check_front(front, x, y, annotate)
    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(*_xy(records_all, x, y), s=14, color="0.65", label="trials", zorder=1)
    order = sorted(range(len(front)), key=lambda i: (float(front[i][x]), float(front[i][y])))
    fx = [float(front[i][x]) for i in order]
    fy = [float(front[i][y]) for i in order]
    ax.step(fx, fy, where="post", color="tab:red", marker="o", markersize=5, label="Pareto front", zorder=2)
    if annotate is not None:
        for i, xi, yi in zip(order, fx, fy, strict=True):
            ax.annotate(str(annotate[i]), (xi, yi), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set_xlabel(xlabel if xlabel is not None else x)
    ax.set_ylabel(ylabel if ylabel is not None else y)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())
