"""A PNG of all trials with the Pareto front drawn on top (matplotlib, Agg canvas; pyplot is not touched)."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasforge.errors import ConfigError
from nasforge.io import atomic_write_bytes

__all__ = ["PlotSeries", "plot_pareto"]


@dataclass(frozen=True)
class PlotSeries:
    """Points drawn apart from the trials and the front, as hollow markers with their own legend entry.

    For another measurement of some of the same architectures (an export-time latency re-measure, say): it is
    never merged into the trials or the front, whose points must all come from one measurement.

    Attributes:
        points: metrics of the points; ones lacking a finite ``x`` or ``y`` are skipped.
        label: the legend entry, e.g. ``"export re-measure (200 runs)"``.
        annotate: one label per point (same order as ``points``), written next to it.
        color: marker edge colour.
    """

    points: Sequence[Mapping[str, float]]
    label: str
    annotate: Sequence[str] | None = None
    color: str = "tab:blue"


def _xy(points: Sequence[Mapping[str, float]], x: str, y: str) -> tuple[list[float], list[float]]:
    """Coordinates of the points that have finite ``x`` and ``y`` values."""
    xs, ys = [], []
    for p in points:
        if x in p and y in p and math.isfinite(float(p[x])) and math.isfinite(float(p[y])):
            xs.append(float(p[x]))
            ys.append(float(p[y]))
    return xs, ys


def _annotate(ax: Any, labels: Sequence[str], xs: Sequence[float], ys: Sequence[float],
              offset: tuple[int, int] = (5, 4)) -> None:
    for label, xi, yi in zip(labels, xs, ys, strict=True):
        if label:
            ax.annotate(str(label), (xi, yi), textcoords="offset points", xytext=offset, fontsize=7)


def _draw_series(ax: Any, series: PlotSeries, x: str, y: str) -> None:
    """One :class:`PlotSeries` as hollow markers (annotated where it has labels)."""
    if series.annotate is not None and len(series.annotate) != len(series.points):
        raise ConfigError(f"series {series.label!r} has {len(series.annotate)} labels for {len(series.points)} "
                          "points; give one label per point")
    kept = [i for i, p in enumerate(series.points) if _xy([p], x, y)[0]]
    xs, ys = _xy([series.points[i] for i in kept], x, y)
    ax.scatter(xs, ys, s=36, facecolors="none", edgecolors=series.color, linewidths=1.2, label=series.label,
               zorder=3)
    if series.annotate is not None:
        _annotate(ax, [series.annotate[i] for i in kept], xs, ys, offset=(5, -10))


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
    trials_label: str = "trials",
    front_label: str = "Pareto front",
    extra: Sequence[PlotSeries] = (),
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
        trials_label: legend entry of the grey trials.
        front_label: legend entry of the front.
        extra: further series (:class:`PlotSeries`), each drawn apart as hollow markers with its own label.

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
    ax.scatter(*_xy(records_all, x, y), s=14, color="0.65", label=trials_label, zorder=1)
    _draw_front(ax, front, x, y, annotate, front_label)
    for series in extra:
        _draw_series(ax, series, x, y)
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


def _draw_front(ax: Any, front: Sequence[Mapping[str, float]], x: str, y: str, annotate: Sequence[str] | None,
                label: str) -> None:
    """The front as a step line with markers, in order of ``x`` (annotated where labels are given)."""
    order = sorted(range(len(front)), key=lambda i: (float(front[i][x]), float(front[i][y])))
    fx = [float(front[i][x]) for i in order]
    fy = [float(front[i][y]) for i in order]
    ax.step(fx, fy, where="post", color="tab:red", marker="o", markersize=5, label=label, zorder=2)
    if annotate is not None:
        _annotate(ax, [annotate[i] for i in order], fx, fy)
