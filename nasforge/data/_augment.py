"""Image decoding and the Once-for-All ImageNet augmentation recipe, split for a DataLoader.

Worker processes call :func:`train_sample` or :func:`eval_sample` per file: decode, crop, resize and flip on the
CPU, returning uint8 ``[C, r, r]`` arrays (4x smaller than float to ship between processes). The float work,
colour jitter and normalisation, runs once per batch on the training device in :func:`finish_batch`.

Decoding: JPEG goes through simplejpeg (libjpeg-turbo) when it is installed, else through Pillow; both decode
JPEGs at 1/2, 1/4 or 1/8 scale in the DCT domain when the result still covers the requested size. Only those
power-of-two factors are used: libjpeg-turbo's other M/8 factors measured slower than a full decode and blurrier.
Resizing is ``torch.nn.functional.interpolate(mode="bilinear", antialias=True)`` on uint8, which matches Pillow's
antialiased bilinear resize within one grey level and is about 3x faster than it on one core.
"""

from __future__ import annotations

import functools
import io
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from nasforge.errors import ConfigError, DataError

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "AugmentRecipe", "BadImageError", "decoder_name", "read_image",
    "train_sample", "eval_sample", "finish_batch",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_MODES = {"RGB": 3, "L": 1}
_GREY_WEIGHTS = (0.299, 0.587, 0.114)
_DCT_FACTORS = (8, 4, 2, 1)
# what Pillow raises on broken files (plugins raise SyntaxError, struct.error, ... on bad headers)
_PIL_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error, Image.DecompressionBombError)


class BadImageError(DataError):
    """An image file that cannot be decoded (corrupt, truncated, not an image). The message names the file."""


def _pair(name: str, value: Any) -> tuple[float, float]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ConfigError(f"AugmentRecipe.{name} {value!r} must be a pair (min, max)")
    lo, hi = (_number(name, v) for v in value)
    if lo > hi:
        raise ConfigError(f"AugmentRecipe.{name} {value!r} has min > max; write it as ({hi}, {lo})")
    return lo, hi


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"AugmentRecipe.{name}: {value!r} is not a finite number")
    return float(value)


@dataclass(frozen=True)
class AugmentRecipe:
    """The training augmentation and evaluation transform, Once-for-All's ImageNet recipe by default.

    Training: RandomResizedCrop(``scale``, ``ratio``), horizontal flip with p=0.5 when ``hflip``, then colour
    jitter in random order: brightness factor ~ U[max(0, 1-b), 1+b], saturation factor ~ U[max(0, 1-s), 1+s].
    Evaluation: resize the shorter side to ``ceil(r / crop_fraction)``, centre crop ``r x r``. ``scale ==
    ratio == (1, 1)`` means "no random crop": training uses the evaluation transform (preset ``"none"``).
    ``mode`` is ``"RGB"`` (3 channels) or ``"L"`` (grayscale, 1); ``mean`` and ``std`` have one value per channel.

    Raises:
        ConfigError: a value out of range; the message names the field and what it accepts.
    """

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = True
    brightness: float = 32 / 255
    saturation: float = 0.5
    crop_fraction: float = 0.875
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    mode: str = "RGB"

    def __post_init__(self) -> None:
        scale, ratio = _pair("scale", self.scale), _pair("ratio", self.ratio)
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ConfigError(f"AugmentRecipe.scale {self.scale!r} must satisfy 0 < min <= max <= 1, e.g. (0.08, 1.0)")
        if ratio[0] <= 0.0:
            raise ConfigError(f"AugmentRecipe.ratio {self.ratio!r} must be positive, e.g. (0.75, 1.3333)")
        if not isinstance(self.hflip, bool):
            raise ConfigError(f"AugmentRecipe.hflip {self.hflip!r} must be true or false")
        if not isinstance(self.mode, str) or self.mode not in _MODES:
            raise ConfigError(f"AugmentRecipe.mode {self.mode!r} is unknown; use 'RGB' or 'L' (grayscale)")
        numbers = {name: _number(name, getattr(self, name)) for name in ("brightness", "saturation", "crop_fraction")}
        if min(numbers["brightness"], numbers["saturation"]) < 0.0:
            raise ConfigError(f"AugmentRecipe brightness {self.brightness!r} and saturation {self.saturation!r} "
                              "must be >= 0 (0 turns that jitter off)")
        if not 0.0 < numbers["crop_fraction"] <= 1.0:
            raise ConfigError(f"AugmentRecipe.crop_fraction {self.crop_fraction!r} must be in (0, 1], e.g. 0.875")
        for name, value in {"scale": scale, "ratio": ratio, **numbers}.items():
            object.__setattr__(self, name, value)
        for name, default in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)):
            object.__setattr__(self, name, self._per_channel(name, getattr(self, name), default))
        if min(self.std) <= 0.0:
            raise ConfigError(f"AugmentRecipe.std {self.std!r} must be positive")

    def _per_channel(self, name: str, value: Any, default: tuple[float, ...]) -> tuple[float, ...]:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != self.channels:
            example = [round(sum(default) / 3, 3)] if self.channels == 1 else list(default)
            raise ConfigError(f"AugmentRecipe.{name} {value!r} needs {self.channels} value(s), one per channel of "
                              f"mode {self.mode!r}, e.g. {example}")
        return tuple(_number(name, v) for v in value)

    @property
    def channels(self) -> int:
        """Channels of the decoded images: 3 for ``"RGB"``, 1 for ``"L"``."""
        return _MODES[self.mode]

    @property
    def random_crop(self) -> bool:
        """False when ``scale == ratio == (1, 1)``: training then uses the evaluation transform."""
        return not (self.scale == (1.0, 1.0) and self.ratio == (1.0, 1.0))

    @classmethod
    def preset(cls, name: str) -> AugmentRecipe:
        """A named recipe: ``"ofa"`` (the defaults), ``"light"`` (scale (0.35, 1), no colour jitter) or
        ``"none"`` (evaluation transform, no flip, no jitter).

        Raises:
            ConfigError: an unknown name; the message lists the presets.
        """
        presets = {
            "ofa": {},
            "light": {"scale": (0.35, 1.0), "brightness": 0.0, "saturation": 0.0},
            "none": {"scale": (1.0, 1.0), "ratio": (1.0, 1.0), "hflip": False, "brightness": 0.0, "saturation": 0.0},
        }
        if name not in presets:
            raise ConfigError(f"augmentation preset {name!r} is unknown; choose one of {sorted(presets)}")
        return cls(**presets[name])

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AugmentRecipe:
        """Build a recipe from plain data (lists accepted for tuples); an optional ``"preset"`` key picks the
        starting recipe and the other keys override it.

        Raises:
            ConfigError: an unknown key (the message lists the allowed ones) or a bad value.
        """
        values = dict(data)
        base = cls.preset(values.pop("preset")) if "preset" in values else cls()
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(allowed), key=str)
        if unknown:
            raise ConfigError(f"unknown augmentation key(s) {unknown}; allowed keys: {['preset', *allowed]}")
        return replace(base, **values)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (tuples as lists) that :meth:`from_dict` turns back into this recipe."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@functools.cache
def _simplejpeg() -> ModuleType | None:
    """The simplejpeg module, or None when it is not installed (imported once, on first use)."""
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


def decoder_name() -> str:
    """The JPEG decoder in use: ``"simplejpeg"`` when that package imports, else ``"pillow"``."""
    return "pillow" if _simplejpeg() is None else "simplejpeg"


def _load(source: Any) -> tuple[bytes, str]:
    """The encoded bytes of ``source`` and a name for messages."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "<bytes>"
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"image source {source!r} must be a path or bytes, not {type(source).__name__}")
    name = os.fspath(source)
    try:
        with open(name, "rb") as f:
            return f.read(), str(name)
    except OSError as exc:
        raise DataError(f"cannot read image file {name!r}: {exc.strerror or exc}; check the path") from exc


def _bad(name: str, data: bytes, exc: BaseException) -> BadImageError:
    reason = "not a known image format" if isinstance(exc, UnidentifiedImageError) else str(exc)
    return BadImageError(f"cannot decode image {name} ({len(data)} bytes): {reason}; the file is corrupt, "
                         "truncated or not an image: replace it or leave it out of the dataset")


def _is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def _image_size(data: bytes, name: str) -> tuple[int, int]:
    """``(width, height)`` from the file header."""
    sj = _simplejpeg() if _is_jpeg(data) else None
    if sj is not None:
        try:
            height, width, _, _ = sj.decode_jpeg_header(data)
            return width, height
        except ValueError:
            pass  # Pillow may still read it, or says why not
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except _PIL_ERRORS as exc:
        raise _bad(name, data, exc) from exc


def _dct_factor(size: tuple[int, int], min_size: tuple[int, int] | None) -> int:
    """The largest of 8, 4, 2, 1 that shrinks ``size`` (ceil division, like libjpeg) to at least ``min_size``."""
    if min_size is None:
        return 1
    (w, h), (min_w, min_h) = size, min_size
    return next(f for f in _DCT_FACTORS if f == 1 or (-(-w // f) >= min_w and -(-h // f) >= min_h))


def _decode_simplejpeg(sj: ModuleType, data: bytes, mode: str, size: tuple[int, int], factor: int) -> np.ndarray | None:
    """HxWxC uint8 from simplejpeg, or None when it cannot decode this JPEG (truncated, odd, ...)."""
    min_w, min_h = (-(-size[0] // factor), -(-size[1] // factor)) if factor > 1 else (0, 0)
    try:
        return sj.decode_jpeg(data, colorspace="GRAY" if mode == "L" else "RGB", min_width=min_w, min_height=min_h)
    except ValueError:
        return None


def _decode_pillow(data: bytes, name: str, mode: str, size: tuple[int, int], factor: int) -> np.ndarray:
    """HxWxC uint8 (writable) from Pillow, JPEGs decoded at ``1 / factor`` scale."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if factor > 1:
                im.draft(mode, (size[0] // factor, size[1] // factor))  # Pillow picks exactly `factor` for this
            if im.mode == "P":
                im = im.convert("RGBA")  # a palette with transparency would warn on a direct convert
            pixels = np.array(im.convert(mode) if im.mode != mode else im)
    except _PIL_ERRORS as exc:
        raise _bad(name, data, exc) from exc
    return pixels[..., None] if pixels.ndim == 2 else pixels


def _decode(data: bytes, name: str, mode: str, size: tuple[int, int], factor: int) -> np.ndarray:
    sj = _simplejpeg() if _is_jpeg(data) else None
    pixels = None if sj is None else _decode_simplejpeg(sj, data, mode, size, factor)
    return _decode_pillow(data, name, mode, size, factor) if pixels is None else pixels


def read_image(source: str | os.PathLike[str] | bytes, mode: str = "RGB", *,
               min_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode an image file to a uint8 ``HxWxC`` array (C = 3 for ``"RGB"``, 1 for ``"L"``).

    Args:
        source: a path, or the encoded bytes (named ``<bytes>`` in messages).
        mode: ``"RGB"`` or ``"L"``.
        min_size: ``(min_width, min_height)``: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (the smallest
            that is still at least this size in both dimensions). Other formats decode at full size.

    Raises:
        BadImageError: the file is corrupt, truncated or not an image.
        DataError: the file cannot be read.
    """
    if not isinstance(mode, str) or mode not in _MODES:
        raise ConfigError(f"image mode {mode!r} is unknown; use 'RGB' or 'L' (grayscale)")
    if min_size is not None and (len(min_size) != 2 or not all(isinstance(v, int) and v >= 0 for v in min_size)):
        raise ConfigError(f"min_size {min_size!r} must be (min_width, min_height) in pixels, or None")
    data, name = _load(source)
    size = _image_size(data, name)
    return _decode(data, name, mode, size, _dct_factor(size, min_size) if _is_jpeg(data) else 1)


def _random_resized_crop(width: int, height: int, recipe: AugmentRecipe,
                         rng: np.random.Generator) -> tuple[int, int, int, int]:
    """``(left, top, w, h)`` of a crop whose area fraction ~ U(scale) and log aspect ratio ~ U(log ratio);
    after 10 misses, the largest centred crop whose aspect ratio is clamped into ``ratio``."""
    area = width * height
    log_lo, log_hi = math.log(recipe.ratio[0]), math.log(recipe.ratio[1])
    for _ in range(10):
        target = area * rng.uniform(*recipe.scale)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    aspect = width / height
    w, h = width, height
    if aspect < recipe.ratio[0]:
        h = round(w / recipe.ratio[0])
    elif aspect > recipe.ratio[1]:
        w = round(h * recipe.ratio[1])
    return (width - w) // 2, (height - h) // 2, w, h


def _resize(pixels: np.ndarray, box: tuple[int, int, int, int], out: tuple[int, int]) -> torch.Tensor:
    """Crop ``box = (left, top, right, bottom)`` of HxWxC ``pixels`` and resize it to ``out = (h, w)``
    (bilinear, antialiased when shrinking); returns uint8 ``[C, h, w]``."""
    left, top, right, bottom = box
    crop = torch.from_numpy(pixels[top:bottom, left:right]).permute(2, 0, 1)
    if crop.shape[1:] == out:
        return crop
    return F.interpolate(crop[None], size=out, mode="bilinear", antialias=True, align_corners=False)[0]


def _eval_tensor(data: bytes, name: str, size: tuple[int, int], resolution: int, recipe: AugmentRecipe) -> torch.Tensor:
    """The evaluation transform as uint8 ``[C, r, r]``: shorter side to ceil(r / crop_fraction), centre crop."""
    width, height = size
    short = math.ceil(resolution / recipe.crop_fraction - 1e-9)  # the epsilon absorbs float error in the ratio
    new_w, new_h = (short, int(short * height / width)) if width <= height else (int(short * width / height), short)
    factor = _dct_factor(size, (new_w, new_h)) if _is_jpeg(data) else 1
    pixels = _decode(data, name, recipe.mode, size, factor)
    resized = _resize(pixels, (0, 0, pixels.shape[1], pixels.shape[0]), (new_h, new_w))
    top, left = int(round((new_h - resolution) / 2.0)), int(round((new_w - resolution) / 2.0))
    return resized[:, top:top + resolution, left:left + resolution]


def _train_tensor(data: bytes, name: str, size: tuple[int, int], resolution: int, recipe: AugmentRecipe,
                  rng: np.random.Generator) -> torch.Tensor:
    """A RandomResizedCrop of the image as uint8 ``[C, r, r]``, decoded at the smallest DCT scale that keeps
    the crop at least ``r`` pixels on each side."""
    left, top, w, h = _random_resized_crop(size[0], size[1], recipe, rng)
    limit = min(w, h) / resolution
    factor = next(f for f in _DCT_FACTORS if f <= limit or f == 1) if _is_jpeg(data) else 1
    pixels = _decode(data, name, recipe.mode, size, factor)
    sx, sy = pixels.shape[1] / size[0], pixels.shape[0] / size[1]
    x0, y0 = round(left * sx), round(top * sy)
    box = (x0, y0, max(x0 + 1, round((left + w) * sx)), max(y0 + 1, round((top + h) * sy)))
    return _resize(pixels, box, (resolution, resolution))


def _jitter_params(recipe: AugmentRecipe, rng: np.random.Generator) -> np.ndarray:
    """float32 ``[brightness factor, saturation factor, order]``; order 1 means saturation first."""
    b, s = recipe.brightness, recipe.saturation
    brightness = rng.uniform(max(0.0, 1.0 - b), 1.0 + b) if b > 0 else 1.0
    saturation = rng.uniform(max(0.0, 1.0 - s), 1.0 + s) if s > 0 else 1.0
    order = float(rng.integers(2)) if b > 0 and s > 0 else 0.0
    return np.array([brightness, saturation, order], dtype=np.float32)


def _check_resolution(resolution: int, rng: np.random.Generator | None = None) -> None:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ConfigError(f"resolution {resolution!r} must be a positive int, e.g. 224")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng {rng!r} must be a numpy Generator, e.g. np.random.default_rng(seed)")


def train_sample(source: str | os.PathLike[str] | bytes, resolution: int, rng: np.random.Generator,
                 recipe: AugmentRecipe) -> tuple[np.ndarray, np.ndarray]:
    """One training sample: decode, RandomResizedCrop to ``resolution``, random horizontal flip.

    The random draws, in order: the crop (as torchvision's RandomResizedCrop), the flip (when
    ``recipe.hflip``), then the colour jitter parameters that :func:`finish_batch` applies. The result depends
    only on the file, ``resolution``, the state of ``rng`` and ``recipe`` (and on the decoder: simplejpeg and
    Pillow differ by well under one grey level).

    Returns:
        ``(pixels, jitter)``: uint8 ``[C, r, r]`` and float32 ``[3]`` = (brightness factor, saturation factor,
        order flag: 0 brightness first, 1 saturation first); ``(1, 1, 0)`` when the recipe has no jitter.

    Raises:
        BadImageError: the file is corrupt, truncated or not an image.
    """
    _check_resolution(resolution, rng)
    data, name = _load(source)
    size = _image_size(data, name)
    if recipe.random_crop:
        sample = _train_tensor(data, name, size, resolution, recipe, rng)
    else:
        sample = _eval_tensor(data, name, size, resolution, recipe)
    if recipe.hflip and rng.random() < 0.5:
        sample = sample.flip(-1)
    return sample.contiguous().numpy(), _jitter_params(recipe, rng)


def eval_sample(source: str | os.PathLike[str] | bytes, resolution: int, recipe: AugmentRecipe) -> np.ndarray:
    """One evaluation sample, uint8 ``[C, r, r]``: the shorter side resized to ``ceil(r / crop_fraction)``
    (bilinear, antialiased), then the centre ``r x r`` crop.

    Raises:
        BadImageError: the file is corrupt, truncated or not an image.
    """
    _check_resolution(resolution)
    data, name = _load(source)
    return _eval_tensor(data, name, _image_size(data, name), resolution, recipe).contiguous().numpy()


def _blend(y: torch.Tensor, factor: torch.Tensor, grey_mask: torch.Tensor | None) -> torch.Tensor:
    """clamp(factor * y + (1 - factor) * base, 0, 255) with base = grey(y) where ``grey_mask`` is 1, else 0."""
    if grey_mask is None:
        return y.mul_(factor).clamp_(0.0, 255.0)
    red, green, blue = _GREY_WEIGHTS
    grey = y[:, 0:1] * red + y[:, 1:2] * green + y[:, 2:3] * blue
    return torch.lerp(grey.mul_(grey_mask), y, factor).clamp_(0.0, 255.0)


def _colour_jitter(y: torch.Tensor, jitter: torch.Tensor) -> torch.Tensor:
    """Each sample's brightness and saturation change, in its order, on float ``y`` in [0, 255]."""
    brightness, saturation, order = (jitter[:, i].view(-1, 1, 1, 1) for i in range(3))
    if y.shape[1] == 1:
        return _blend(y, brightness, None)
    saturation_first = order > 0.5
    first = _blend(y, torch.where(saturation_first, saturation, brightness), saturation_first.to(y.dtype))
    return _blend(first, torch.where(saturation_first, brightness, saturation), (~saturation_first).to(y.dtype))


def _check_batch(x: torch.Tensor, jitter: torch.Tensor | None, recipe: AugmentRecipe) -> None:
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != recipe.channels:
        raise DataError(f"finish_batch needs uint8 [B, {recipe.channels}, r, r] images for mode {recipe.mode!r}; "
                        f"got {x.dtype} {tuple(x.shape)}")
    if jitter is not None and tuple(jitter.shape) != (x.shape[0], 3):
        raise DataError(f"jitter must be [{x.shape[0]}, 3] (one row per image from train_sample); "
                        f"got {tuple(jitter.shape)}")


def finish_batch(x: torch.Tensor, jitter: torch.Tensor | None, recipe: AugmentRecipe) -> torch.Tensor:
    """Turn a batch of uint8 samples into the network's float32 input, on the batch's device.

    Scales to [0, 1], applies each sample's colour jitter (brightness: ``clamp(x * b)``; saturation:
    ``clamp(s * x + (1 - s) * grey(x))`` with grey = 0.299 R + 0.587 G + 0.114 B, skipped for 1 channel; in
    the sample's order), then normalises ``(x - mean) / std``. Vectorised over the batch; a channels_last
    input gives a channels_last output.

    Args:
        x: uint8 ``[B, C, r, r]``, any device.
        jitter: float32 ``[B, 3]`` rows from :func:`train_sample`, or None for no jitter (evaluation).

    Raises:
        DataError: wrong dtype or shape.
    """
    _check_batch(x, jitter, recipe)
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    y = x.to(torch.float32)  # stays in [0, 255] until the end: (y / 255 - mean) / std in one pass
    if jitter is not None:
        y = _colour_jitter(y, jitter.to(device=y.device, dtype=torch.float32))
    mean = torch.tensor(recipe.mean, dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(recipe.std, dtype=torch.float64).view(1, -1, 1, 1)
    scale, shift = (t.to(device=y.device, dtype=torch.float32) for t in (1.0 / (255.0 * std), -mean / std))
    y = torch.addcmul(shift, y, scale)
    return y.contiguous(memory_format=torch.channels_last) if channels_last else y
