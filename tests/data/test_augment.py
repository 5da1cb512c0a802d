"""Tests of nasforge.data._augment (decoding, crops, colour jitter) and nasforge.data._synthetic."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nasforge.data import _augment
from nasforge.data._augment import (
    AugmentRecipe,
    BadImageError,
    decoder_name,
    eval_sample,
    finish_batch,
    read_image,
    train_sample,
)
from nasforge.data._synthetic import make_image_folder
from nasforge.errors import ConfigError, DataError

HAS_SIMPLEJPEG = _augment._simplejpeg() is not None
DECODERS = ["simplejpeg", "pillow"]


# --------------------------------------------------------------------------- helpers and fixtures


def smooth_image(width: int, height: int, blur: float = 1.0) -> np.ndarray:
    """uint8 [h, w, 3]: gradients, waves and a soft disc, smooth at the scale of ``blur`` times 20 pixels,
    so that resampling methods agree closely."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    red = 255 * xx / (width - 1)
    green = 127.5 + 100 * np.sin(yy / (23.0 * blur)) * np.cos(xx / (31.0 * blur))
    disc = np.clip((np.hypot(xx - width * 0.4, yy - height * 0.6) - height * 0.25) / (6.0 * blur), 0, 1)
    blue = 40 + 180 * disc
    return np.stack([red, green, blue], -1).round().astype(np.uint8)


def encode(pixels: np.ndarray, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **options)
    return buf.getvalue()


@pytest.fixture(params=DECODERS)
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs the test once with simplejpeg (skipped when absent) and once with Pillow alone."""
    if request.param == "simplejpeg" and not HAS_SIMPLEJPEG:
        pytest.skip("simplejpeg is not installed: pip install simplejpeg")
    if request.param == "pillow":
        monkeypatch.setattr(_augment, "_simplejpeg", lambda: None)
    assert decoder_name() == request.param
    return request.param


@pytest.fixture(scope="module")
def landscape_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "landscape.jpg"
    path.write_bytes(encode(smooth_image(500, 375), "JPEG", quality=95))
    return path


# --------------------------------------------------------------------------- read_image


def test_read_jpeg_png_and_grayscale(decoder: str, tmp_path: Path) -> None:
    pixels = smooth_image(120, 90)
    (tmp_path / "a.png").write_bytes(encode(pixels, "PNG"))
    (tmp_path / "a.jpg").write_bytes(encode(pixels, "JPEG", quality=95))
    png, jpeg = read_image(tmp_path / "a.png"), read_image(str(tmp_path / "a.jpg"))
    assert png.dtype == np.uint8 and png.shape == (90, 120, 3) and np.array_equal(png, pixels)
    assert jpeg.shape == (90, 120, 3) and np.abs(jpeg.astype(float) - pixels).mean() < 2.0
    grey_ref = np.asarray(Image.fromarray(pixels).convert("L"), dtype=float)
    grey_png = read_image((tmp_path / "a.png").read_bytes(), "L")
    assert grey_png.shape == (90, 120, 1) and np.abs(grey_png[..., 0] - grey_ref).max() <= 1
    grey_jpeg = read_image(tmp_path / "a.jpg", "L")
    assert grey_jpeg.shape == (90, 120, 1) and np.abs(grey_jpeg[..., 0] - grey_ref).mean() < 2.0
    palette = Image.fromarray(pixels).convert("P")
    palette.info["transparency"] = bytes(range(256))
    buf = io.BytesIO()
    palette.save(buf, format="PNG")
    assert read_image(buf.getvalue()).shape == (90, 120, 3)


def test_corrupt_and_truncated_files_raise_bad_image_error(decoder: str, tmp_path: Path) -> None:
    with pytest.raises(BadImageError, match="<bytes>"):
        read_image(b"definitely not an image")
    data = encode(smooth_image(200, 150), "JPEG", quality=90)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImageError, match="truncated.jpg"):
        read_image(truncated)
    with pytest.raises(BadImageError, match="truncated.jpg"):
        train_sample(truncated, 32, np.random.default_rng(0), AugmentRecipe())
    (tmp_path / "text.jpg").write_bytes(b"\xff\xd8\xff" + b"garbage" * 10)
    with pytest.raises(BadImageError, match="text.jpg"):
        eval_sample(tmp_path / "text.jpg", 32, AugmentRecipe())
    with pytest.raises(DataError, match="missing.jpg"):
        read_image(tmp_path / "missing.jpg")
    with pytest.raises(ConfigError, match="CMYK"):
        read_image(truncated, "CMYK")


def test_simplejpeg_and_pillow_decodes_agree(landscape_jpeg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not HAS_SIMPLEJPEG:
        pytest.skip("simplejpeg is not installed: pip install simplejpeg")
    fast = read_image(landscape_jpeg).astype(np.float64)
    monkeypatch.setattr(_augment, "_simplejpeg", lambda: None)
    slow = read_image(landscape_jpeg).astype(np.float64)
    assert fast.shape == slow.shape == (375, 500, 3)
    assert np.abs(fast - slow).mean() < 0.5


@pytest.mark.parametrize(("min_size", "expected"), [((100, 70), (75, 100)), ((101, 10), (150, 200)),
                                                     ((300, 10), (300, 400)), ((10, 10), (38, 50))])
def test_downscaled_decode_honours_min_size(decoder: str, min_size: tuple[int, int], expected: tuple[int, int],
                                            tmp_path: Path) -> None:
    pixels = smooth_image(400, 300)
    (tmp_path / "a.jpg").write_bytes(encode(pixels, "JPEG", quality=95))
    out = read_image(tmp_path / "a.jpg", min_size=min_size)
    assert out.shape[:2] == expected
    assert out.shape[1] >= min_size[0] and out.shape[0] >= min_size[1]
    reference = np.asarray(Image.fromarray(pixels).resize(out.shape[1::-1], Image.BILINEAR, reducing_gap=None))
    assert np.abs(out.astype(float) - reference).mean() < 3.0  # same content, not only the same size
    png = tmp_path / "a.png"
    png.write_bytes(encode(pixels, "PNG"))
    assert read_image(png, min_size=min_size).shape == (300, 400, 3)  # only JPEG decodes downscaled


# --------------------------------------------------------------------------- train_sample and eval_sample


def test_train_sample_shape_dtype_and_determinism(decoder: str, landscape_jpeg: Path) -> None:
    recipe = AugmentRecipe()
    first, jitter = train_sample(landscape_jpeg, 64, np.random.default_rng(5), recipe)
    again, jitter_again = train_sample(landscape_jpeg.read_bytes(), 64, np.random.default_rng(5), recipe)
    other, jitter_other = train_sample(landscape_jpeg, 64, np.random.default_rng(6), recipe)
    assert first.shape == (3, 64, 64) and first.dtype == np.uint8 and first.flags.c_contiguous
    assert jitter.shape == (3,) and jitter.dtype == np.float32
    assert np.array_equal(first, again) and np.array_equal(jitter, jitter_again)
    assert not np.array_equal(first, other) and not np.array_equal(jitter, jitter_other)
    b, s, order = jitter
    assert 1 - 32 / 255 <= b <= 1 + 32 / 255 and 0.5 <= s <= 1.5 and order in (0.0, 1.0)
    grey, grey_jitter = train_sample(landscape_jpeg, 48, np.random.default_rng(5), AugmentRecipe.preset("light"))
    assert grey.shape == (3, 48, 48) and grey_jitter.tolist() == [1.0, 1.0, 0.0]


def test_random_resized_crop_boxes() -> None:
    rng, recipe = np.random.default_rng(0), AugmentRecipe()
    fractions, aspects = [], []
    for _ in range(3000):
        left, top, w, h = _augment._random_resized_crop(300, 200, recipe, rng)
        assert 0 <= left and left + w <= 300 and 0 <= top and top + h <= 200
        fractions.append(w * h / 60000)
        aspects.append(w / h)
    assert 0.077 <= min(fractions) < 0.1 and 0.85 < max(fractions) <= 266 * 200 / 60000  # widest 4:3 crop
    assert 0.74 <= min(aspects) < 0.78 and 1.29 < max(aspects) <= 1.35
    # nothing fits (a full-area crop of a 4:1 image with aspect <= 4/3): the centre crop clamped to the ratio
    fallback = AugmentRecipe(scale=(1.0, 1.0))
    assert _augment._random_resized_crop(400, 100, fallback, rng) == (133, 0, 133, 100)
    assert _augment._random_resized_crop(100, 400, fallback, rng) == (0, 133, 100, 133)


def test_train_crop_statistics_on_a_coordinate_image() -> None:
    """R = 2x and G = 2y: the output's value range tells the crop box, its row direction the flip."""
    yy, xx = np.mgrid[0:128, 0:128] * 2
    pattern = encode(np.stack([xx, yy, np.full_like(xx, 128)], -1).astype(np.uint8), "PNG")
    rng, recipe, r = np.random.default_rng(1), AugmentRecipe(scale=(0.2, 0.9)), 32
    fractions, flipped = [], []
    for _ in range(250):
        sample = train_sample(pattern, r, rng, recipe)[0].astype(np.float64) / 2
        width = (sample[0].max() - sample[0].min()) * r / (r - 1)
        height = (sample[1].max() - sample[1].min()) * r / (r - 1)
        fractions.append(width * height / 128**2)
        flipped.append(sample[0, :, 0].mean() > sample[0, :, -1].mean())
    assert 0.17 < min(fractions) < 0.25 and 0.85 < max(fractions) < 0.93
    assert 0.4 < np.mean(fractions) < 0.7
    assert 0.4 < np.mean(flipped) < 0.6


def test_train_sample_downscaled_decode_matches_full_decode(decoder: str, tmp_path: Path) -> None:
    """A 1280x960 JPEG cropped to 24 px decodes at 1/2 .. 1/8 scale; compare with Pillow at full size."""
    path = tmp_path / "big.jpg"
    path.write_bytes(encode(smooth_image(1280, 960, blur=4.0), "JPEG", quality=95))
    full = Image.open(path).convert("RGB")
    recipe = AugmentRecipe(hflip=False)
    for seed in range(8):
        box = _augment._random_resized_crop(1280, 960, recipe, np.random.default_rng(seed))
        sample = train_sample(path, 24, np.random.default_rng(seed), recipe)[0]
        left, top, w, h = box
        reference = np.asarray(full.resize((24, 24), Image.BILINEAR, box=(left, top, left + w, top + h)))
        assert np.abs(sample.transpose(1, 2, 0).astype(float) - reference).mean() < 1.5


def eval_reference(path: Path, r: int) -> np.ndarray:
    """Pillow at full size: shorter side to ceil(r / 0.875), centre crop r (torchvision's Resize + CenterCrop)."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    short = math.ceil(r / 0.875)
    size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    resized = image.resize(size, Image.BILINEAR)
    left, top = int(round((size[0] - r) / 2)), int(round((size[1] - r) / 2))
    return np.asarray(resized.crop((left, top, left + r, top + r))).transpose(2, 0, 1)


@pytest.mark.parametrize("r", [224, 64])
def test_eval_sample_matches_pillow_reference(decoder: str, landscape_jpeg: Path, tmp_path: Path, r: int) -> None:
    portrait = tmp_path / "portrait.png"
    portrait.write_bytes(encode(smooth_image(180, 260), "PNG"))
    for path in (landscape_jpeg, portrait):
        sample = eval_sample(path, r, AugmentRecipe())
        assert sample.shape == (3, r, r) and sample.dtype == np.uint8
        assert np.abs(sample.astype(float) - eval_reference(path, r)).mean() < 1.0


def test_preset_none_trains_with_the_eval_transform(landscape_jpeg: Path) -> None:
    recipe = AugmentRecipe.preset("none")
    sample, jitter = train_sample(landscape_jpeg, 96, np.random.default_rng(3), recipe)
    assert np.array_equal(sample, eval_sample(landscape_jpeg, 96, recipe))
    assert jitter.tolist() == [1.0, 1.0, 0.0]
    grey = AugmentRecipe(mode="L", mean=(0.5,), std=(0.25,))
    assert eval_sample(landscape_jpeg, 40, grey).shape == (1, 40, 40)
    assert train_sample(landscape_jpeg, 40, np.random.default_rng(0), grey)[0].shape == (1, 40, 40)


# --------------------------------------------------------------------------- finish_batch


def reference_jitter(image: np.ndarray, b: float, s: float, order: float) -> np.ndarray:
    """Brightness then saturation (order 0) or the reverse, on one float64 [C, H, W] image in [0, 1]."""
    for step in ("b" if image.shape[0] == 1 else "bs" if order == 0 else "sb"):
        if step == "b":
            image = np.clip(image * b, 0, 1)
        else:
            grey = 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]
            image = np.clip(s * image + (1 - s) * grey, 0, 1)
    return image


def reference_finish(x: np.ndarray, jitter: np.ndarray | None, recipe: AugmentRecipe) -> np.ndarray:
    """One sample at a time in float64, straight from the formulas."""
    mean, std = np.array(recipe.mean).reshape(-1, 1, 1), np.array(recipe.std).reshape(-1, 1, 1)
    out = []
    for i, image in enumerate(x.astype(np.float64) / 255.0):
        if jitter is not None:
            image = reference_jitter(image, *jitter[i].astype(np.float64))
        out.append((image - mean) / std)
    return np.stack(out)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_finish_batch_matches_per_sample_formula(mode: str) -> None:
    recipe = AugmentRecipe(mode=mode, mean=(0.5,), std=(0.3,)) if mode == "L" else AugmentRecipe()
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (8, recipe.channels, 12, 10), dtype=torch.uint8, generator=gen)
    jitter = torch.tensor([[1.4, 0.3, 0], [1.4, 0.3, 1], [0.7, 1.5, 0], [0.7, 1.5, 1],
                           [1, 1, 0], [1, 1, 1], [0.0, 0.0, 0], [1.1, 1.4, 1]], dtype=torch.float32)
    out = finish_batch(x, jitter, recipe)
    assert out.dtype == torch.float32 and out.shape == x.shape
    expected = reference_finish(x.numpy(), jitter.numpy(), recipe)
    assert np.abs(out.numpy() - expected).max() < 1e-5
    plain = finish_batch(x, None, recipe)
    assert np.abs(plain.numpy() - reference_finish(x.numpy(), None, recipe)).max() < 1e-5
    assert torch.allclose(out[4], plain[4], atol=1e-6) and torch.allclose(out[5], plain[5], atol=1e-6)
    assert not torch.allclose(out[0], plain[0], atol=1e-2)


def test_finish_batch_keeps_channels_last_and_checks_input() -> None:
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    jitter = torch.tensor([[1.1, 0.8, 0], [0.9, 1.2, 1]] * 2)
    out = finish_batch(x, jitter, AugmentRecipe())
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, finish_batch(x.contiguous(), jitter, AugmentRecipe()), atol=1e-6)
    with pytest.raises(DataError, match="uint8"):
        finish_batch(x.float(), jitter, AugmentRecipe())
    with pytest.raises(DataError, match=r"\[4, 3\]"):
        finish_batch(x, jitter[:3], AugmentRecipe())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_finish_batch_on_cuda_matches_cpu() -> None:
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    jitter = torch.rand(16, 3) + torch.tensor([0.5, 0.5, 0.0])
    jitter[:, 2] = torch.arange(16) % 2
    cpu = finish_batch(x, jitter, AugmentRecipe())
    gpu = finish_batch(x.cuda(), jitter.cuda(), AugmentRecipe())
    assert gpu.is_cuda and (gpu.cpu() - cpu).abs().max() < 1e-5


# --------------------------------------------------------------------------- AugmentRecipe


def test_recipe_presets_and_round_trip() -> None:
    assert AugmentRecipe.preset("ofa") == AugmentRecipe()
    light, none = AugmentRecipe.preset("light"), AugmentRecipe.preset("none")
    assert light.scale == (0.35, 1.0) and light.brightness == light.saturation == 0 and light.random_crop
    assert not none.random_crop and not none.hflip and AugmentRecipe().random_crop
    recipe = AugmentRecipe.from_dict({"preset": "light", "scale": [0.5, 1], "mode": "L", "mean": [0.4], "std": [0.2]})
    assert recipe.scale == (0.5, 1.0) and recipe.brightness == 0 and recipe.channels == 1
    assert AugmentRecipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    assert recipe.to_dict()["scale"] == [0.5, 1.0]
    with pytest.raises(ConfigError, match="'heavy'.*light"):
        AugmentRecipe.preset("heavy")


@pytest.mark.parametrize(("data", "message"), [
    ({"scales": [0.1, 1]}, r"unknown augmentation key.*'scales'.*allowed keys.*'scale'"),
    ({"scale": [0.5, 0.2]}, "min > max"),
    ({"scale": [0.0, 1.0]}, "0 < min"),
    ({"scale": [0.5]}, "pair"),
    ({"ratio": [-1, 1]}, "positive"),
    ({"brightness": -0.1}, ">= 0"),
    ({"saturation": "high"}, "not a finite number"),
    ({"crop_fraction": 1.5}, r"\(0, 1\]"),
    ({"mode": "CMYK"}, "'RGB' or 'L'"),
    ({"mode": "L"}, "needs 1 value"),
    ({"std": [0.2, 0.0, 0.2]}, "positive"),
    ({"hflip": "yes"}, "true or false"),
])
def test_recipe_rejects_bad_input(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AugmentRecipe.from_dict(data)


# --------------------------------------------------------------------------- make_image_folder


def test_make_image_folder_layouts_and_determinism(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "a", classes=3, per_class=4, size=(64, 48), seed=7)
    again = make_image_folder(tmp_path / "b", classes=3, per_class=4, size=(64, 48), seed=7)
    assert sorted(p.name for p in root.iterdir()) == ["n0000", "n0001", "n0002"]
    files = sorted(root.rglob("*.jpg"))
    assert len(files) == 12
    assert all(f.read_bytes() == (again / f.relative_to(root)).read_bytes() for f in files)
    other = make_image_folder(tmp_path / "c", classes=3, per_class=4, size=(64, 48), seed=8)
    assert (other / "n0000" / files[0].name).read_bytes() != files[0].read_bytes()
    sizes = {read_image(f).shape[1::-1] for f in files}
    assert len(sizes) > 1 and all(48 <= w <= 80 and 36 <= h <= 60 for w, h in sizes)
    net = make_image_folder(tmp_path / "net", classes=2, per_class=3, val_per_class=2, layout="imagenet",
                            fmt="png", size_jitter=0.0)
    assert sorted(p.name for p in (net / "val").iterdir()) == ["n0000", "n0001"]
    assert len(list((net / "train").rglob("*.png"))) == 6 and len(list((net / "val").rglob("*.png"))) == 4
    assert read_image(next((net / "val").rglob("*.png"))).shape == (72, 96, 3)
    with pytest.raises(ConfigError, match="layout='imagenet'"):
        make_image_folder(tmp_path / "d", val_per_class=1)

