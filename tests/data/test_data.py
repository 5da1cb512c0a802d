"""Tests of nasforge.data: specs, the registry, the four built-in datasets and Split.batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nasforge.data import (
    DatasetRequest,
    DataSplits,
    RawDataset,
    Split,
    _registry,
    list_datasets,
    load_data,
    parse_spec,
    register_dataset,
)
from nasforge.data._registry import get_dataset
from nasforge.data._shapes import SHAPE_NAMES, generate_shapes
from nasforge.errors import DataError

BUILTIN = ("cifar10", "digits", "folder", "shapes")
CIFAR_RECORD = 3073


# --------------------------------------------------------------------------- helpers and fixtures


def denormalise(data: DataSplits, x: torch.Tensor) -> torch.Tensor:
    """Undo the per-channel normalisation: back to [0, 1] pixel values."""
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    return x * std + mean


def all_labels(data: DataSplits) -> torch.Tensor:
    return torch.cat([data.train.y, data.val.y, data.test.y])


def write_cifar_batch(path: Path, labels: np.ndarray, pixels: np.ndarray) -> None:
    """Write records in the CIFAR-10 binary layout: label byte, then R, G, B planes of 32x32."""
    records = np.concatenate([labels.astype(np.uint8)[:, None], pixels.reshape(len(labels), -1)], axis=1)
    records.astype(np.uint8).tofile(path)


PLANTED_LABEL = 7


def planted_image() -> np.ndarray:
    """A [3, 32, 32] uint8 image whose planes tell R, G, B and rows/columns apart."""
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    return np.stack([rows * 4, cols * 8 % 256, np.full((32, 32), 200)]).astype(np.uint8)


def make_cifar(folder: Path, *, per_batch: int = 40, test: int = 50, meta: bool = True) -> Path:
    """A tiny fake CIFAR-10 binary release; test record 0 is :func:`planted_image`."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        labels = rng.permutation(np.arange(per_batch) % 10)
        write_cifar_batch(
            folder / f"data_batch_{i}.bin", labels, rng.integers(0, 256, (per_batch, 3, 32, 32))
        )
    labels = rng.permutation(np.arange(test) % 10)
    labels[0] = PLANTED_LABEL
    pixels = rng.integers(0, 256, (test, 3, 32, 32))
    pixels[0] = planted_image()
    write_cifar_batch(folder / "test_batch.bin", labels, pixels)
    if meta:
        (folder / "batches.meta.txt").write_text("".join(f"kind{i}\n" for i in range(10)) + "\n")
    return folder


FOLDER_COLOURS = {"cat": (220, 20, 20), "dog": (20, 220, 20), "fish": (20, 20, 220)}


def make_folder(root: Path, *, per_class: int = 8) -> Path:
    """Three class folders of small solid-colour images (red cat, green dog, blue fish), mixed formats."""
    for name, colour in FOLDER_COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            suffix = (".png", ".jpg", ".bmp")[i % 3]
            jitter = tuple(min(255, c + 3 * i) for c in colour)
            Image.new("RGB", (12, 10), jitter).save(root / name / f"img{i}{suffix}")
    return root


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_data("digits", seed=0)


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    return make_cifar(tmp_path / "cifar")


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "images")


# --------------------------------------------------------------------------- contract over every dataset


def spec_for(name: str, tmp_path: Path) -> str:
    if name == "digits":
        return "digits"
    if name == "shapes":
        return "shapes?n=240&classes=4"
    if name == "cifar10":
        return f"cifar10:{make_cifar(tmp_path / 'cifar')}"
    if name == "folder":
        return f"folder:{make_folder(tmp_path / 'images')}"
    raise AssertionError(f"no test spec for dataset {name!r}; add one to spec_for")


def test_builtin_datasets_are_registered() -> None:
    assert set(BUILTIN) <= set(list_datasets())
    assert list_datasets() == sorted(list_datasets())


@pytest.mark.parametrize("name", BUILTIN)
def test_dataset_contract(name: str, tmp_path: Path) -> None:
    data = load_data(spec_for(name, tmp_path), image_size=12, seed=1)
    assert data.name == name
    assert data.num_classes == len(data.classes) >= 2
    for split in (data.train, data.val, data.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert tuple(split.x.shape[1:]) == (data.in_channels, 12, 12)
        assert len(split) == len(split.x) == len(split.y) > 0
        assert torch.isfinite(split.x).all()
        assert set(split.y.tolist()) == set(range(data.num_classes)), "every class in every split"
    if get_dataset(name).kind == "memory":  # streamed datasets use their recipe's fixed (ImageNet) constants
        mean = data.train.x.mean(dim=(0, 2, 3))
        std = data.train.x.std(dim=(0, 2, 3), correction=0)
        assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-4)
        assert torch.allclose(std, torch.ones_like(std), atol=1e-3)
    assert len(data.mean) == len(data.std) == data.in_channels
    summary = json.loads(json.dumps(data.describe()))
    assert summary["sizes"] == {"train": len(data.train), "val": len(data.val), "test": len(data.test)}
    assert sum(summary["class_counts"]["train"]) == len(data.train)


# --------------------------------------------------------------------------- digits


def test_digits_shapes_and_sizes(digits: DataSplits) -> None:
    assert (digits.in_channels, digits.image_size, digits.num_classes) == (1, 16, 10)
    assert digits.classes == tuple("0123456789")
    assert tuple(digits.train.x.shape[1:]) == (1, 16, 16)
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    assert len(digits.val) == pytest.approx(0.2 * 1797, abs=2)
    assert len(digits.test) == pytest.approx(0.2 * 1797, abs=2)


def test_digits_split_is_stratified(digits: DataSplits) -> None:
    totals = torch.bincount(all_labels(digits), minlength=10).double()
    for split, share in ((digits.val, 0.2), (digits.test, 0.2), (digits.train, 0.6)):
        counts = torch.bincount(split.y, minlength=10).double()
        assert (counts - share * totals).abs().max() <= 1.5


def test_digits_splits_are_disjoint_and_complete() -> None:
    data = load_data("digits", image_size=8)
    pixels = torch.cat([denormalise(data, s.x) for s in (data.train, data.val, data.test)]) * 16
    assert torch.allclose(pixels, pixels.round(), atol=1e-3), "8x8 keeps the original 0..16 levels"
    assert pixels.min() == pytest.approx(0, abs=1e-3) and pixels.max() == pytest.approx(16, abs=1e-3)
    from sklearn.datasets import load_digits

    original = torch.from_numpy(load_digits().images).float().flatten(1)
    ours = pixels.round().flatten(1)
    assert sorted(map(tuple, ours.tolist())) == sorted(map(tuple, original.tolist()))


def test_digits_val_and_test_use_train_statistics(digits: DataSplits) -> None:
    assert abs(float(digits.val.x.mean())) < 0.1
    assert float(digits.val.x.mean()) != pytest.approx(0.0, abs=1e-6)


def test_digits_same_seed_same_split_and_other_seed_differs(digits: DataSplits) -> None:
    again = load_data("digits", seed=0)
    other = load_data("digits", seed=1)
    assert torch.equal(again.train.x, digits.train.x) and torch.equal(again.test.y, digits.test.y)
    assert not torch.equal(other.train.x, digits.train.x)


def test_digits_image_size_is_respected() -> None:
    data = load_data("digits", image_size=28)
    assert data.image_size == 28 and tuple(data.test.x.shape[1:]) == (1, 28, 28)


@pytest.mark.parametrize("size", [3, 0, -8, 8.0, True, "16"])
def test_bad_image_size_raises(size: object) -> None:
    with pytest.raises(DataError, match="image_size"):
        load_data("digits", image_size=size)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- shapes


SMALL_SHAPES = "shapes?n=200&classes=4&difficulty=0.2"


def test_shapes_options_are_parsed() -> None:
    data = load_data(SMALL_SHAPES)
    assert data.classes == SHAPE_NAMES[:4] and data.num_classes == 4
    assert (data.in_channels, data.image_size) == (3, 32)
    assert len(all_labels(data)) == 200
    assert torch.bincount(all_labels(data)).tolist() == [50, 50, 50, 50]


def test_shapes_defaults() -> None:
    data = load_data("shapes?n=120", image_size=8)
    assert data.classes == ("circle", "square", "triangle", "cross", "ring", "horizontal_bar")
    assert torch.bincount(all_labels(data)).tolist() == [20] * 6


def test_shapes_are_deterministic_per_seed() -> None:
    a, b = load_data(SMALL_SHAPES, seed=3), load_data(SMALL_SHAPES, seed=3)
    c = load_data(SMALL_SHAPES, seed=4)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.y, b.val.y)
    assert not torch.equal(a.train.x, c.train.x)


def test_generate_shapes_is_balanced_in_range() -> None:
    x, y = generate_shapes(3000, 8, 32, 1.0, seed=0)
    assert x.shape == (3000, 3, 32, 32) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert np.bincount(y).tolist() == [375] * 8


@pytest.mark.parametrize(
    ("spec", "key"),
    [
        ("shapes?n=abc", "n"),
        ("shapes?n=0", "n"),
        ("shapes?n=2.5", "n"),
        ("shapes?classes=9", "classes"),
        ("shapes?classes=1", "classes"),
        ("shapes?difficulty=1.5", "difficulty"),
        ("shapes?difficulty=nan", "difficulty"),
        ("shapes?difficulty=easy", "difficulty"),
        ("shapes?colour=red", "colour"),
    ],
)
def test_shapes_bad_options_raise(spec: str, key: str) -> None:
    with pytest.raises(DataError, match=key) as info:
        load_data(spec)
    assert spec.split("?")[1].split("=")[1] in str(info.value), "the message quotes the bad value"


def test_unknown_option_lists_allowed_keys() -> None:
    with pytest.raises(DataError, match="allowed keys: n, classes, difficulty"):
        load_data("shapes?size=3")


def test_shapes_easy_is_learnable_and_hard_is_harder() -> None:
    from sklearn.linear_model import LogisticRegression

    def val_accuracy(difficulty: float) -> float:
        data = load_data(f"shapes?n=600&difficulty={difficulty}", image_size=8, seed=0)
        model = LogisticRegression(max_iter=500)
        model.fit(data.train.x.flatten(1).numpy(), data.train.y.numpy())
        return float(model.score(data.val.x.flatten(1).numpy(), data.val.y.numpy()))

    easy, hard = val_accuracy(0.0), val_accuracy(1.0)
    assert easy > 0.8, f"easy shapes val accuracy {easy:.2f} (chance is 0.17)"
    assert hard < easy


def test_too_small_dataset_suggests_a_fix() -> None:
    with pytest.raises(DataError, match="more images per class"):
        load_data("shapes?n=12&classes=6")


# --------------------------------------------------------------------------- cifar10


def test_cifar_parses_sizes_and_class_names(cifar_dir: Path) -> None:
    data = load_data(f"cifar10:{cifar_dir}", val_fraction=0.25)
    assert data.classes == tuple(f"kind{i}" for i in range(10))
    assert (data.in_channels, data.image_size) == (3, 32)
    assert len(data.train) + len(data.val) == 200 and len(data.val) == 50
    assert len(data.test) == 50


def test_cifar_pixel_and_label_order(cifar_dir: Path) -> None:
    data = load_data(f"cifar10:{cifar_dir}")
    assert int(data.test.y[0]) == PLANTED_LABEL
    restored = (denormalise(data, data.test.x[:1])[0] * 255).round().to(torch.uint8)
    assert torch.equal(restored, torch.from_numpy(planted_image()))


def test_cifar_labels_follow_the_file(cifar_dir: Path) -> None:
    data = load_data(f"cifar10:{cifar_dir}")
    records = np.fromfile(cifar_dir / "test_batch.bin", dtype=np.uint8).reshape(-1, CIFAR_RECORD)
    assert data.test.y.tolist() == records[:, 0].tolist()


def test_cifar_subfolder_default_names_limit_and_resize(tmp_path: Path) -> None:
    make_cifar(tmp_path / "cifar-10-batches-bin", meta=False)
    data = load_data(f"cifar10:{tmp_path}?limit=100", image_size=16)
    assert data.classes[:2] == ("airplane", "automobile")
    assert len(data.train) + len(data.val) == 100
    assert tuple(data.train.x.shape[1:]) == (3, 16, 16)


def test_cifar_missing_file(cifar_dir: Path) -> None:
    (cifar_dir / "data_batch_4.bin").unlink()
    with pytest.raises(DataError, match="data_batch_4.bin"):
        load_data(f"cifar10:{cifar_dir}")


def test_cifar_bad_file_size(cifar_dir: Path) -> None:
    with open(cifar_dir / "data_batch_2.bin", "ab") as fh:
        fh.write(b"\x00" * 5)
    with pytest.raises(DataError, match=r"data_batch_2\.bin.*multiple of 3073"):
        load_data(f"cifar10:{cifar_dir}")


def test_cifar_missing_dir_and_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere' does not exist"):
        load_data(f"cifar10:{tmp_path / 'nowhere'}")
    (tmp_path / "file.bin").write_bytes(b"")
    with pytest.raises(DataError, match="not a directory"):
        load_data(f"cifar10:{tmp_path / 'file.bin'}")
    with pytest.raises(DataError, match="no CIFAR-10 binary files"):
        load_data(f"cifar10:{tmp_path}")
    with pytest.raises(DataError, match="needs a path"):
        load_data("cifar10")


# --------------------------------------------------------------------------- folder


def test_folder_classes_and_labels(image_dir: Path) -> None:
    (image_dir / "cat" / "notes.txt").write_text("not an image, skipped")
    data = load_data(f"folder:{image_dir}", image_size=8)
    assert data.classes == ("cat", "dog", "fish")
    assert (data.in_channels, data.image_size) == (3, 8)
    assert len(all_labels(data)) == 24
    for split in (data.train, data.val, data.test):
        brightest = denormalise(data, split.x).mean(dim=(2, 3)).argmax(dim=1)
        assert torch.equal(brightest, split.y), "red cat -> 0, green dog -> 1, blue fish -> 2"


def test_folder_grayscale_mode(image_dir: Path) -> None:
    data = load_data(f"folder:{image_dir}?mode=L", image_size=6)
    assert data.in_channels == 1 and tuple(data.train.x.shape[1:]) == (1, 6, 6)
    with pytest.raises(DataError, match="mode"):
        load_data(f"folder:{image_dir}?mode=CMYK")


def test_folder_empty_or_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no class sub-folders"):
        load_data(f"folder:{tmp_path}")
    with pytest.raises(DataError, match="does not exist"):
        load_data(f"folder:{tmp_path / 'nowhere'}")


def test_folder_class_without_images(image_dir: Path) -> None:
    (image_dir / "empty").mkdir()
    (image_dir / "empty" / "readme.md").write_text("hi")
    with pytest.raises(DataError, match="empty.*has no images"):
        load_data(f"folder:{image_dir}")


def test_folder_unreadable_image(image_dir: Path) -> None:
    """Listing does not decode; a step that needs a whole split in memory names the unreadable file."""
    (image_dir / "dog" / "broken.png").write_text("this is not a PNG")
    data = load_data(f"folder:{image_dir}", seed=0)
    with pytest.raises(DataError, match="broken.png"):
        for split in (data.train, data.val, data.test):
            split.x  # noqa: B018


def test_folder_single_class(tmp_path: Path) -> None:
    (tmp_path / "only").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "only" / "a.png")
    with pytest.raises(DataError, match="only one class"):
        load_data(f"folder:{tmp_path}")


# --------------------------------------------------------------------------- specs, registry, arguments


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("digits", ("digits", None, {})),
        (" shapes?n=5&classes=3 ", ("shapes", None, {"n": "5", "classes": "3"})),
        ("folder:/a/b c?mode=L", ("folder", "/a/b c", {"mode": "L"})),
        ("folder:C:/data/x", ("folder", "C:/data/x", {})),
    ],
)
def test_parse_spec(spec: str, expected: tuple[str, str | None, dict[str, str]]) -> None:
    assert parse_spec(spec) == expected


@pytest.mark.parametrize(
    "spec",
    ["", "   ", "?n=1", ":x", "3d", "digits:", "shapes?", "shapes?n", "shapes?=3", "shapes?n=1&n=2", 42],
)
def test_malformed_spec_raises(spec: object) -> None:
    with pytest.raises(DataError):
        parse_spec(spec)  # type: ignore[arg-type]


def test_unknown_dataset_lists_known_ones() -> None:
    with pytest.raises(DataError, match="unknown dataset 'mnist'") as info:
        load_data("mnist")
    assert all(name in str(info.value) for name in BUILTIN)


def test_path_given_to_dataset_without_path() -> None:
    with pytest.raises(DataError, match="takes no path"):
        load_data("digits:/tmp")


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"val_fraction": 0.5}, "val_fraction"),
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"test_fraction": -0.1}, "test_fraction"),
        ({"test_fraction": "0.2"}, "test_fraction"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, object], word: str) -> None:
    with pytest.raises(DataError, match=word):
        load_data("digits", **kwargs)  # type: ignore[arg-type]


def test_register_duplicate_name_raises() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("digits")(
            lambda request: RawDataset(np.zeros((2, 1, 4, 4)), np.arange(2), ("a", "b"))
        )


def test_custom_dataset_with_its_own_test_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_registry, "_REGISTRY", _registry._REGISTRY.copy())  # keep the real registry clean
    seen: list[DatasetRequest] = []

    @register_dataset("tiny", options=("scale",), default_image_size=4)
    def tiny(request: DatasetRequest) -> RawDataset:
        """Two constant classes."""
        seen.append(request)
        scale = request.float_option("scale", 1.0, low=0.0, high=1.0)
        y = np.arange(40) % 2
        x = np.broadcast_to(scale * y[:, None, None, None], (40, 2, 3, 3)).astype(np.float32)
        return RawDataset(x=x, y=y, classes=("off", "on"), test_x=x[:6], test_y=y[:6])

    assert "tiny" in list_datasets()
    data = load_data("tiny?scale=0.5", seed=5)
    assert seen[0].image_size == 4 and seen[0].seed == 5 and seen[0].options == {"scale": "0.5"}
    assert len(data.train) + len(data.val) == 40 and len(data.val) == 8 and len(data.test) == 6
    assert tuple(data.test.x.shape[1:]) == (2, 4, 4)
    assert data.mean == pytest.approx((0.25, 0.25)) and data.std == pytest.approx((0.25, 0.25))


# --------------------------------------------------------------------------- Split


def numbered_split(n: int = 30) -> Split:
    return Split(x=torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1), y=torch.arange(n))


def test_batches_in_order_cover_everything() -> None:
    batches = list(numbered_split().batches(7))
    assert [len(y) for _, y in batches] == [7, 7, 7, 7, 2]
    assert torch.equal(torch.cat([y for _, y in batches]), torch.arange(30))
    assert all(torch.equal(x.view(-1).long(), y) for x, y in batches), "images stay paired with labels"


def test_shuffled_batches_cover_every_sample_once_and_follow_the_seed() -> None:
    split = numbered_split()

    def epoch(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        batches = list(split.batches(8, shuffle=True, generator=generator))
        assert all(torch.equal(x.view(-1).long(), y) for x, y in batches), "images stay paired with labels"
        return torch.cat([y for _, y in batches])

    order = epoch(0)
    assert torch.equal(order.sort().values, torch.arange(30))
    assert not torch.equal(order, torch.arange(30))
    assert torch.equal(order, epoch(0)) and not torch.equal(order, epoch(1))


def test_drop_last_and_bad_batch_size() -> None:
    split = numbered_split()
    assert [len(y) for _, y in split.batches(7, drop_last=True)] == [7, 7, 7, 7]
    for bad in (0, -1, 2.0, True):
        with pytest.raises(DataError, match="batch_size"):
            split.batches(bad)  # type: ignore[arg-type]


def test_split_validates_its_tensors() -> None:
    with pytest.raises(DataError, match="labels"):
        Split(x=torch.zeros(3, 1, 2, 2), y=torch.zeros(2, dtype=torch.int64))
    with pytest.raises(DataError, match="float32"):
        Split(x=torch.zeros(3, 1, 2, 2, dtype=torch.float64), y=torch.zeros(3, dtype=torch.int64))
