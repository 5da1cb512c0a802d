"""A procedural image folder on disk, for testing and benchmarking file-based data pipelines.

Class ``k`` is a family: one of six shapes (``k % 6``) filled with one of three textures (``k // 6 % 3``) in a
hue band around a class hue. Position, size, rotation, colour, background gradient, noise and a distractor
blob are random per image, so a small CNN learns the classes but not from one pixel. Every image is drawn
from its own seed ``(seed, split, class, index)``: the output does not depend on the order of drawing.
"""

from __future__ import annotations

import colorsys
import io
from pathlib import Path

import numpy as np
from PIL import Image

from nasforge.errors import ConfigError

__all__ = ["make_image_folder"]

_LAYOUTS = ("folder", "imagenet")
_FORMATS = {"jpeg": ".jpg", "png": ".png"}
_N_SHAPES = 6
_GOLDEN = 0.618033988749895


def _sdf(kind: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) of shape ``kind`` spanning about [-1, 1] in (u, v)."""
    au, av = np.abs(u), np.abs(v)
    if kind == 0:  # disc
        return np.hypot(u, v) - 1.0
    if kind == 1:  # square
        return np.maximum(au, av) - 0.8
    if kind == 2:  # triangle, apex up
        return np.maximum(v - 0.6, 0.866 * au - 0.5 * v - 0.55)
    if kind == 3:  # plus
        return np.minimum(np.maximum(au - 0.95, av - 0.3), np.maximum(au - 0.3, av - 0.95))
    if kind == 4:  # ring
        return np.abs(np.hypot(u, v) - 0.72) - 0.22
    return (au + av - 1.0) * 0.7071  # diamond


def _texture(kind: int, u: np.ndarray, v: np.ndarray, phase: float) -> np.ndarray:
    """Brightness multiplier in [0.55, 1] for texture ``kind`` (0 flat, 1 stripes, 2 dots)."""
    if kind == 0:
        return np.ones_like(u)
    if kind == 1:
        return 0.775 + 0.225 * np.sin(9.0 * v + phase)
    return 0.775 + 0.225 * np.sin(8.0 * u + phase) * np.sin(8.0 * v + phase)


def _colour(hue: float, rng: np.random.Generator) -> np.ndarray:
    """An RGB colour in [0, 255] around ``hue`` (fraction of the colour wheel) with random lightness."""
    rgb = colorsys.hsv_to_rgb((hue + rng.uniform(-0.12, 0.12)) % 1.0, rng.uniform(0.45, 1.0), rng.uniform(0.5, 1.0))
    return np.asarray(rgb, dtype=np.float32) * 255.0


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A random two-colour linear gradient plus per-pixel noise, float32 [h, w, 3]."""
    angle = rng.uniform(0.0, 2.0 * np.pi)
    tx = (np.arange(w, dtype=np.float32) / w - 0.5) * np.float32(np.cos(angle))
    ty = (np.arange(h, dtype=np.float32) / h - 0.5) * np.float32(np.sin(angle)) + np.float32(0.5)
    c0, c1 = (rng.uniform(0.0, 255.0, 3).astype(np.float32) for _ in range(2))
    img = rng.random((h, w, 3), dtype=np.float32)
    img -= 0.5
    img *= rng.uniform(10.0, 50.0)
    img += (ty[:, None] + tx[None, :])[..., None] * (c1 - c0)
    img += c0
    return img


def _paint(img: np.ndarray, kind: int, texture: int, colour: np.ndarray, radius: float,
           rng: np.random.Generator) -> None:
    """Blend one anti-aliased, rotated, textured shape of ``radius`` pixels at a random place into ``img``."""
    h, w = img.shape[:2]
    cx, cy = rng.uniform(radius * 0.6, w - radius * 0.6), rng.uniform(radius * 0.6, h - radius * 0.6)
    angle, phase = rng.uniform(-0.35, 0.35), rng.uniform(0.0, 2.0 * np.pi)  # +-20 deg: a square never looks like a diamond
    reach = 1.45 * radius + 2.0  # every shape lies within 1.42 radii of its centre
    x0, x1 = max(0, int(cx - reach)), min(w, int(cx + reach) + 1)
    y0, y1 = max(0, int(cy - reach)), min(h, int(cy + reach) + 1)
    dx = (np.arange(x0, x1, dtype=np.float32) - np.float32(cx)) / np.float32(radius)
    dy = (np.arange(y0, y1, dtype=np.float32) - np.float32(cy)) / np.float32(radius)
    cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    u = dx[None, :] * cos + dy[:, None] * sin
    v = dy[:, None] * cos - dx[None, :] * sin
    alpha = np.clip(0.5 - _sdf(kind, u, v) * np.float32(radius), 0.0, 1.0)[..., None]
    fill = colour * _texture(texture, u, v, phase)[..., None]
    patch = img[y0:y1, x0:x1]
    patch += alpha * (fill - patch)


def _draw(label: int, size: tuple[int, int], size_jitter: float, seed: tuple[int, ...]) -> np.ndarray:
    """One uint8 [h, w, 3] image of class ``label``, fully determined by ``seed``."""
    rng = np.random.default_rng(seed)
    w, h = (max(8, round(s * (1.0 + rng.uniform(-size_jitter, size_jitter)))) for s in size)
    img = _background(h, w, rng)
    short = min(h, w)
    distractor = int(rng.integers(_N_SHAPES))
    _paint(img, distractor, 0, rng.uniform(0.0, 255.0, 3).astype(np.float32), short * rng.uniform(0.06, 0.14), rng)
    colour = _colour((label * _GOLDEN) % 1.0, rng)
    texture = (label // _N_SHAPES) % 3
    _paint(img, label % _N_SHAPES, texture, colour, short * rng.uniform(0.18, 0.4), rng)
    return np.clip(img + 0.5, 0.0, 255.0).astype(np.uint8)


def _encode(pixels: np.ndarray, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpeg":
        Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    else:
        Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _check(classes: int, per_class: int, val_per_class: int, size: tuple[int, int], size_jitter: float,
           layout: str, fmt: str, quality: int) -> None:
    if layout not in _LAYOUTS:
        raise ConfigError(f"layout {layout!r} is unknown; use one of {_LAYOUTS}")
    if fmt not in _FORMATS:
        raise ConfigError(f"fmt {fmt!r} is unknown; use one of {tuple(_FORMATS)}")
    if classes < 1 or per_class < 1 or val_per_class < 0:
        raise ConfigError(f"classes={classes}, per_class={per_class}, val_per_class={val_per_class}: "
                          "use classes >= 1, per_class >= 1 and val_per_class >= 0")
    if val_per_class and layout != "imagenet":
        raise ConfigError(f"val_per_class={val_per_class} needs layout='imagenet' (the 'folder' layout has no "
                          "val split); pass layout='imagenet' or val_per_class=0")
    if len(size) != 2 or min(size) < 8:
        raise ConfigError(f"size {size!r} must be (width, height), both >= 8 pixels")
    if not 0.0 <= size_jitter < 1.0:
        raise ConfigError(f"size_jitter {size_jitter!r} must be in [0, 1)")
    if not 1 <= quality <= 100:
        raise ConfigError(f"quality {quality!r} must be in [1, 100]")


def make_image_folder(root: str | Path, *, classes: int = 4, per_class: int = 20, val_per_class: int = 0,
                      size: tuple[int, int] = (96, 72), size_jitter: float = 0.25, layout: str = "folder",
                      fmt: str = "jpeg", quality: int = 90, seed: int = 0) -> Path:
    """Write a folder of procedurally drawn, class-dependent RGB images.

    Args:
        root: output folder (created; existing files of the same names are overwritten).
        classes: number of classes, named ``n0000``, ``n0001``, ... like ImageNet's WordNet ids.
        per_class: images per class (in ``train/`` for the ``imagenet`` layout).
        val_per_class: images per class in ``val/``; needs ``layout="imagenet"``.
        size: nominal ``(width, height)``; each side varies independently by ``+-size_jitter`` (a fraction).
        layout: ``"folder"`` writes ``root/<class>/<index>.jpg``; ``"imagenet"`` writes
            ``root/train/<class>/...`` and ``root/val/<class>/...``.
        fmt: ``"jpeg"`` (``.jpg``, at ``quality``) or ``"png"``.
        seed: the same seed writes the same bytes (for the same Pillow build).

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: a bad option; the message names it and the allowed values.
    """
    _check(classes, per_class, val_per_class, size, size_jitter, layout, fmt, quality)
    root = Path(root)
    splits = [("train", per_class), ("val", val_per_class)] if layout == "imagenet" else [("", per_class)]
    for split_id, (split, count) in enumerate(splits):
        for label in range(classes):
            folder = root / split / f"n{label:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                pixels = _draw(label, size, size_jitter, (seed, split_id, label, index))
                (folder / f"{index:05d}{_FORMATS[fmt]}").write_bytes(_encode(pixels, fmt, quality))
    return root
