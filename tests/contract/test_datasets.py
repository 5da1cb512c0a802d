"""Contract of every registered dataset: it loads, yields batches as declared, is seeded, and refuses bad options.

Each dataset that needs a path gets a tiny generated folder (real JPEGs in ``folder``/``imagenet`` layout, a fake
CIFAR-10 binary release, shards packed from a folder) written once per module. A dataset registered without an
entry in :data:`SPECS` fails :func:`test_every_registered_dataset_has_a_contract_spec`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from nasforge.data import DataSplits, LoaderOptions, list_datasets, load_data, make_image_folder, pack_shards
from nasforge.data._registry import get_dataset
from nasforge.errors import ConfigError, DataError

IMAGE_SIZE = 12
NO_WORKERS = LoaderOptions(workers=0)


def _write_cifar(root: Path) -> Path:
    """A tiny CIFAR-10 binary release: 5 training batches of 20 records and a test batch of 20."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for name in names:
        labels = rng.permutation(np.arange(20) % 10).astype(np.uint8)
        pixels = rng.integers(0, 256, (20, 3 * 32 * 32), dtype=np.uint8)
        np.concatenate([labels[:, None], pixels], axis=1).tofile(root / name)
    return root


def _jpeg_folder(root: Path) -> Path:
    return make_image_folder(root, classes=3, per_class=6, size=(20, 16), seed=3)


def _imagenet_folder(root: Path) -> Path:
    return make_image_folder(root, classes=3, per_class=6, val_per_class=2, size=(20, 16), layout="imagenet", seed=4)


def _shards(root: Path) -> Path:
    pytest.importorskip("webdataset", reason="packing shards needs webdataset: pip install 'nasforge[shards]'")
    pack_shards(_imagenet_folder(root / "source"), root / "packed", shard_mb=0.01)
    return root / "packed"


#: name -> (writes what the spec needs under a folder and returns the spec, a bad value of one declared option).
SPECS: dict[str, tuple[Callable[[Path], str], str]] = {
    "digits": (lambda root: "digits", ""),
    "shapes": (lambda root: "shapes?n=120&classes=3", "n=lots"),
    "cifar10": (lambda root: f"cifar10:{_write_cifar(root / 'cifar')}", "limit=-5"),
    "folder": (lambda root: f"folder:{_jpeg_folder(root)}", "mode=CMYK"),
    "imagenet": (lambda root: f"imagenet:{_imagenet_folder(root)}?val=3", "val=many"),
    "shards": (lambda root: f"shards:{_shards(root)}?val=3", "val=many"),
}


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], str]:
    """``spec(name)``: the dataset's spec, its files written on first use and shared by the module's tests."""
    made: dict[str, str] = {}

    def spec(name: str) -> str:
        if name not in made:
            made[name] = SPECS[name][0](tmp_path_factory.mktemp(name))
        return made[name]

    return spec


def _load(spec: str, seed: int = 1) -> DataSplits:
    return load_data(spec, image_size=IMAGE_SIZE, seed=seed, loading=NO_WORKERS)


def _with_option(spec: str, option: str) -> str:
    return f"{spec}{'&' if '?' in spec else '?'}{option}"


def _assert_one_line(err: pytest.ExceptionInfo[Exception]) -> None:
    message = str(err.value)
    assert message and "\n" not in message, message


def test_every_registered_dataset_has_a_contract_spec() -> None:
    assert sorted(SPECS) == list_datasets(), "add a spec for each new dataset to SPECS"


@pytest.mark.parametrize("name", list_datasets())
def test_loads_and_yields_batches_of_the_declared_shape(name: str, specs: Callable[[str], str]) -> None:
    data = _load(specs(name))
    assert data.name == name and data.image_size == IMAGE_SIZE
    assert data.num_classes == len(data.classes) >= 2
    for split in (data.train, data.val, data.test):
        assert len(split) > 0
        x, y = next(iter(split.batches(4)))
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert tuple(x.shape) == (min(4, len(split)), data.in_channels, IMAGE_SIZE, IMAGE_SIZE)
        assert y.shape == (x.shape[0],) and torch.isfinite(x).all()
        assert 0 <= int(y.min()) and int(y.max()) < data.num_classes
    assert len(data.mean) == len(data.std) == data.in_channels


@pytest.mark.parametrize("name", list_datasets())
def test_no_image_size_means_the_declared_default(name: str, specs: Callable[[str], str]) -> None:
    declared = get_dataset(name).default_image_size
    data = load_data(specs(name), seed=1, loading=NO_WORKERS)
    x, _ = next(iter(data.train.batches(2)))
    assert data.image_size == declared and tuple(x.shape[-2:]) == (declared, declared)


@pytest.mark.parametrize("name", list_datasets())
def test_a_fixed_seed_gives_the_same_data(name: str, specs: Callable[[str], str]) -> None:
    first, again = _load(specs(name)), _load(specs(name))
    for a, b in ((first.train, again.train), (first.val, again.val), (first.test, again.test)):
        assert torch.equal(a.y, b.y)
        assert torch.equal(a.head(6), b.head(6))
    assert (first.mean, first.std, first.classes) == (again.mean, again.std, again.classes)


@pytest.mark.parametrize("name", list_datasets())
def test_an_unknown_option_is_one_line(name: str, specs: Callable[[str], str]) -> None:
    with pytest.raises(DataError) as err:
        _load(_with_option(specs(name), "bogus=1"))
    _assert_one_line(err)
    assert "bogus" in str(err.value)


@pytest.mark.parametrize("name", [n for n in list_datasets() if SPECS.get(n, ("", ""))[1]])
def test_a_bad_option_value_is_one_line(name: str, specs: Callable[[str], str]) -> None:
    option = SPECS[name][1]
    with pytest.raises((DataError, ConfigError)) as err:
        _load(_with_option(specs(name), option))
    _assert_one_line(err)
    assert option.split("=")[0] in str(err.value)


@pytest.mark.parametrize("name", list_datasets())
def test_a_wrong_path_is_one_line(name: str, specs: Callable[[str], str], tmp_path: Path) -> None:
    spec = specs(name)
    bare = spec.split("?")[0].split(":")[0]
    wrong = f"{bare}:{tmp_path / 'missing'}" if ":" in spec else f"{bare}:{tmp_path}"  # no path / a path it refuses
    with pytest.raises(DataError) as err:
        _load(wrong)
    _assert_one_line(err)
