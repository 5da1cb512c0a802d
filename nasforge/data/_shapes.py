"""``shapes``: seeded procedural RGB images of geometric shapes on noisy gradient backgrounds.

Each image is one anti-aliased shape drawn from a signed distance function (negative inside) in the
shape's own coordinates ``(u, v)``, where the shape spans roughly ``[-1, 1]``. ``difficulty`` in
``[0, 1]`` scales every nuisance together: size, position and rotation jitter, lower and sometimes
inverted contrast, background gradient and noise, and small distractor blobs. Rotation stays within
+-20 degrees so that a square never turns into a diamond, nor a horizontal bar into a diagonal line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from nasforge.data._registry import DatasetRequest, RawDataset, register_dataset

__all__ = ["SHAPE_NAMES", "generate_shapes", "load_shapes"]

_SQRT2 = float(np.sqrt(2.0))
_CHUNK = 1024  # images rendered at a time; bounds memory, and fixed so output never depends on it


def _circle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.hypot(u, v) - 1.0


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) - 0.8


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # equilateral, apex up (v grows downwards): base v = 0.5, sides through (0, -1)
    return np.maximum(v - 0.5, 0.866 * np.abs(u) - 0.5 * v - 0.5)


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    return np.minimum(np.maximum(au - 0.95, av - 0.28), np.maximum(au - 0.28, av - 0.95))


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.abs(np.hypot(u, v) - 0.72) - 0.22


def _horizontal_bar(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u) - 1.0, np.abs(v) - 0.3)


def _diagonal_line(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # "\" in image coordinates; the per-image random mirror also makes "/"
    along, across = (u + v) / _SQRT2, (v - u) / _SQRT2
    return np.maximum(np.abs(along) - 1.1, np.abs(across) - 0.16)


def _diamond(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.abs(u) + np.abs(v) - 1.0) / _SQRT2


_SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "cross": _cross,
    "ring": _ring,
    "horizontal_bar": _horizontal_bar,
    "diagonal_line": _diagonal_line,
    "diamond": _diamond,
}
SHAPE_NAMES: tuple[str, ...] = tuple(_SHAPES)


@dataclass(frozen=True, eq=False)
class _Params:
    """Per-image random parameters (arrays of length N, colours [N, 3])."""

    labels: np.ndarray
    radius: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    angle: np.ndarray
    mirror: np.ndarray
    fg: np.ndarray
    bg: np.ndarray
    grad_dir: np.ndarray
    grad_amp: float
    noise: float


def _draw_params(rng: np.random.Generator, n: int, num_classes: int, size: int, difficulty: float) -> _Params:
    """Draw every per-image parameter up front, so rendering in chunks changes nothing."""
    labels = rng.permutation(np.arange(n) % num_classes)
    radius = size * 0.3 * (1.0 + 0.35 * difficulty * rng.uniform(-1, 1, n))
    room = np.maximum(size / 2 - 1.15 * radius - 1.0, 0.0) * difficulty
    centre = size / 2 + room[:, None] * rng.uniform(-1, 1, (n, 2))
    fg, bg = _draw_colours(rng, n, difficulty)
    f32 = np.float32
    return _Params(
        labels=labels,
        radius=radius.astype(f32),
        cx=centre[:, 0].astype(f32),
        cy=centre[:, 1].astype(f32),
        angle=(np.deg2rad(20.0) * difficulty * rng.uniform(-1, 1, n)).astype(f32),
        mirror=rng.choice(np.array([-1.0, 1.0], dtype=f32), n),
        fg=fg.astype(f32),
        bg=bg.astype(f32),
        grad_dir=rng.uniform(0, 2 * np.pi, n).astype(f32),
        grad_amp=0.1 + 0.4 * difficulty,
        noise=0.02 + 0.13 * difficulty,
    )


def _draw_colours(rng: np.random.Generator, n: int, difficulty: float) -> tuple[np.ndarray, np.ndarray]:
    """Foreground/background colours whose brightness differs by ``1 - 0.75 * difficulty``."""
    contrast = 1.0 - 0.75 * difficulty
    dark = rng.uniform(0.0, 1.0 - contrast, n)
    bright = dark + contrast
    invert = rng.random(n) < 0.5 * difficulty  # hard data also has dark shapes on bright ground
    fg_level, bg_level = np.where(invert, dark, bright), np.where(invert, bright, dark)
    tint = 0.35 * (rng.random((n, 3)) - 0.5)
    return np.clip(fg_level[:, None] + tint, 0, 1), np.clip(bg_level[:, None] - tint, 0, 1)


def _shape_alpha(p: _Params, sl: slice, size: int) -> np.ndarray:
    """Anti-aliased coverage [n, 1, S, S] of each image's shape."""
    coords = np.arange(size, dtype=np.float32) + 0.5
    dx = coords[None, None, :] - p.cx[sl, None, None]
    dy = coords[None, :, None] - p.cy[sl, None, None]
    cos, sin = np.cos(p.angle[sl])[:, None, None], np.sin(p.angle[sl])[:, None, None]
    radius = p.radius[sl, None, None]
    u = (cos * dx + sin * dy) / radius * p.mirror[sl, None, None]
    v = (cos * dy - sin * dx) / radius
    alpha = np.empty(u.shape, dtype=np.float32)
    labels = p.labels[sl]
    for k, sdf in enumerate(_SHAPES.values()):
        hit = labels == k
        if hit.any():
            alpha[hit] = np.clip(0.5 - sdf(u[hit], v[hit]) * radius[hit], 0.0, 1.0)
    return alpha[:, None]


def _background(p: _Params, sl: slice, size: int) -> np.ndarray:
    """Colour plus a linear brightness gradient, [n, 3, S, S]."""
    ramp = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    gx, gy = np.cos(p.grad_dir[sl])[:, None, None], np.sin(p.grad_dir[sl])[:, None, None]
    gradient = p.grad_amp * (gx * ramp[None, None, :] + gy * ramp[None, :, None])
    return p.bg[sl, :, None, None] + gradient[:, None]


def _add_clutter(rng: np.random.Generator, img: np.ndarray, difficulty: float) -> None:
    """Paint up to ``round(5 * difficulty)`` small random discs or squares into ``img`` in place."""
    n, _, size, _ = img.shape
    coords = np.arange(size, dtype=np.float32) + 0.5
    for _slot in range(int(round(5 * difficulty))):
        centre = rng.uniform(0, size, (n, 2)).astype(np.float32)
        radius = (size * rng.uniform(0.04, 0.09, n)).astype(np.float32)
        present = rng.random(n) < 0.7
        square = rng.random(n) < 0.5
        colour = rng.random((n, 3), dtype=np.float32)
        dx = np.abs(coords[None, None, :] - centre[:, 0, None, None])
        dy = np.abs(coords[None, :, None] - centre[:, 1, None, None])
        dist = np.where(square[:, None, None], np.maximum(dx, dy), np.hypot(dx, dy))
        alpha = (np.clip(0.5 - (dist - radius[:, None, None]), 0, 1) * present[:, None, None])[:, None]
        img *= 1 - alpha
        img += alpha * colour[:, :, None, None]


def _render(rng: np.random.Generator, p: _Params, sl: slice, size: int, difficulty: float) -> np.ndarray:
    img = _background(p, sl, size).astype(np.float32)
    _add_clutter(rng, img, difficulty)
    alpha = _shape_alpha(p, sl, size)
    img = img * (1 - alpha) + alpha * p.fg[sl, :, None, None]
    img += p.noise * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img, 0.0, 1.0, out=img).astype(np.float32, copy=False)


def generate_shapes(
    n: int, num_classes: int, size: int, difficulty: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``n`` balanced images of the first ``num_classes`` shapes in :data:`SHAPE_NAMES`.

    Returns:
        ``(x, y)``: float32 ``[n, 3, size, size]`` in ``[0, 1]`` and int64 ``[n]`` labels. The result
        depends only on the arguments.
    """
    rng = np.random.default_rng(seed)
    params = _draw_params(rng, n, num_classes, size, difficulty)
    chunks = [_render(rng, params, slice(i, i + _CHUNK), size, difficulty) for i in range(0, n, _CHUNK)]
    return np.concatenate(chunks), params.labels.astype(np.int64)


@register_dataset("shapes", options=("n", "classes", "difficulty"), default_image_size=32)
def load_shapes(request: DatasetRequest) -> RawDataset:
    """Seeded procedural RGB shapes; options n (default 3000), classes (2..8, default 6), difficulty (0..1, 0.5)."""
    n = request.int_option("n", 3000, low=1, high=1_000_000)
    num_classes = request.int_option("classes", 6, low=2, high=len(SHAPE_NAMES))
    difficulty = request.float_option("difficulty", 0.5, low=0.0, high=1.0)
    x, y = generate_shapes(n, num_classes, request.image_size, difficulty, request.seed)
    return RawDataset(x=x, y=y, classes=SHAPE_NAMES[:num_classes])
