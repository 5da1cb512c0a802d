"""Image folders streamed through DataLoader workers: listing checks, epoch order, sharding, resume, bad images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nasforge.data import EpochPlan, FileSplit, LoaderOptions, StreamStats, load_data, make_image_folder
from nasforge.errors import DataError


def index_folder(root: Path, n: int = 48, classes: int = 3) -> Path:
    """PNGs of one solid colour each that encodes the image's number (R = k % 256, G = k // 256, B = class)."""
    for k in range(n):
        folder = root / f"c{k % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (10 + k % 5, 9), (k % 256, k // 256, 40 * (k % classes))).save(folder / f"{k:04d}.png")
    return root


def decode_numbers(data, x: torch.Tensor) -> list[int]:
    """The image numbers of a batch of solid-colour images (after normalisation)."""
    mean, std = torch.tensor(data.mean).view(1, -1, 1, 1), torch.tensor(data.std).view(1, -1, 1, 1)
    pixels = ((x.cpu() * std + mean) * 255).round()[:, :, 0, 0]
    return [int(r) + 256 * int(g) for r, g in pixels[:, :2].tolist()]


@pytest.fixture(scope="module")
def numbered(tmp_path_factory: pytest.TempPathFactory):
    root = index_folder(tmp_path_factory.mktemp("numbered"))
    return load_data(f"folder:{root}", image_size=8, seed=0, augment={"preset": "none"},
                     loading=LoaderOptions(workers=0))


def test_folder_lists_and_splits_without_decoding(numbered) -> None:
    assert isinstance(numbered.train, FileSplit)
    assert numbered.classes == ("c0", "c1", "c2")
    sizes = [len(numbered.train), len(numbered.val), len(numbered.test)]
    assert sum(sizes) == 48 and min(sizes) >= 3
    names = {numbered.train.files.relative(i) for i in range(len(numbered.train))}
    assert not names & {numbered.test.files.relative(i) for i in range(len(numbered.test))}
    assert numbered.in_channels == 3 and len(numbered.mean) == 3


@pytest.mark.parametrize("world", [1, 2, 4])
def test_each_process_reads_its_share_and_the_epoch_covers_every_sample_once(world: int) -> None:
    plans = [EpochPlan(40, 8, seed=5, rank=r, world=world) for r in range(world)]
    seen = [int(i) for plan in plans for _, index, _ in plan for i in index]
    one = [int(i) for _, index, _ in EpochPlan(40, 8, seed=5) for i in index]
    assert sorted(seen) == list(range(40)) and len(seen) == 40
    per_batch = [[int(i) for plan in plans for b, index, _ in plan if b == k for i in index] for k in range(5)]
    assert per_batch == [one[k * 8 : (k + 1) * 8] for k in range(5)], "ranks split each global batch in order"


def test_augmentation_seeds_do_not_depend_on_the_process() -> None:
    seeds = {int(i): s for r in range(2) for _, index, ss in EpochPlan(32, 8, 3, r, 2) for i, s in zip(index, ss, strict=True)}
    assert seeds == {int(i): s for _, index, ss in EpochPlan(32, 8, 3) for i, s in zip(index, ss, strict=True)}
    assert EpochPlan(32, 8, 4).order().tolist() != EpochPlan(32, 8, 3).order().tolist()


def test_streamed_batches_are_the_planned_images_at_the_planned_resolution(numbered) -> None:
    order = EpochPlan(len(numbered.train), 4, seed=9).order()
    expected = [int(numbered.train.files.relative(int(i)).split("/")[1][:4]) for i in order]
    plan = EpochPlan(len(numbered.train), 4, seed=9, resolution_of=lambda b: 6 + 2 * (b % 2))
    got, sizes = [], []
    for b, x, y in numbered.train.epoch_stream(plan):
        got.extend(decode_numbers(numbered, x))
        sizes.append((b, x.shape[-1]))
        assert torch.equal(y, torch.tensor([n % 3 for n in decode_numbers(numbered, x)]))
    assert got == expected[: len(got)] and len(got) == (len(numbered.train) // 4) * 4
    assert all(size == 6 + 2 * (b % 2) for b, size in sizes)


def test_a_resumed_epoch_sees_exactly_the_remaining_batches(numbered) -> None:
    n = len(numbered.train)
    full = [(b, decode_numbers(numbered, x)) for b, x, _ in numbered.train.epoch_stream(EpochPlan(n, 4, 2))]
    rest = [(b, decode_numbers(numbered, x)) for b, x, _ in numbered.train.epoch_stream(EpochPlan(n, 4, 2, start=3))]
    assert rest == full[3:] and len(rest) == n // 4 - 3 > 0


def test_workers_and_training_transforms_are_deterministic(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "imgs", classes=2, per_class=12, size=(40, 30), seed=1)
    batches = {}
    for workers in (0, 2):
        data = load_data(f"folder:{root}", image_size=16, seed=0, loading=LoaderOptions(workers=workers))
        plan = EpochPlan(len(data.train), 4, seed=1, resolution_of=lambda b: 12)
        batches[workers] = [(b, x) for b, x, _ in data.train.epoch_stream(plan)]
    assert [b for b, _ in batches[0]] == [b for b, _ in batches[2]]
    assert all(torch.equal(x0, x2) for (_, x0), (_, x2) in zip(batches[0], batches[2], strict=True))
    assert batches[0][0][1].shape[1:] == (3, 12, 12) and batches[0][0][1].dtype == torch.float32


def test_corrupt_images_are_skipped_counted_and_bounded(tmp_path: Path) -> None:
    root = index_folder(tmp_path / "imgs", n=24)
    (root / "c0" / "0000.png").write_bytes(b"not a png at all")
    truncated = (root / "c1" / "0001.png").read_bytes()
    (root / "c1" / "0001.png").write_bytes(truncated[: len(truncated) // 2])
    data = load_data(f"folder:{root}", image_size=8, seed=0, augment={"preset": "none"},
                     loading=LoaderOptions(workers=0, max_bad_images=5))
    split = FileSplit(data.train.files, data.train.labels, 8, data.train.recipe, data.train.loading)
    everything = _whole(data)
    stats = StreamStats()
    seen = [n for _, x, _ in everything.epoch_stream(EpochPlan(24, 8, 0), stats=stats) for n in decode_numbers(data, x)]
    assert sorted(Path(p).name for p in stats.bad) == ["0000.png", "0001.png"]
    assert len(seen) == 24 and 0 not in seen and 1 not in seen, "a bad image is replaced by a readable one"
    strict = FileSplit(everything.files, everything.labels, 8, everything.recipe, LoaderOptions(workers=0, max_bad_images=1))
    with pytest.raises(DataError, match=r"2 unreadable image\(s\).*000[01]\.png.*--max-bad-images"):
        list(strict.epoch_stream(EpochPlan(24, 24, 0)))
    assert len(split) == len(data.train)


def _whole(data) -> FileSplit:
    """One split holding every file of the dataset (train + val + test)."""
    from nasforge.data._files import PathTable

    parts = [data.train, data.val, data.test]
    table = PathTable.from_paths(parts[0].files.root, [p.files.relative(i) for p in parts for i in range(len(p))])
    return FileSplit(table, np.concatenate([p.labels for p in parts]), 8, data.train.recipe, data.train.loading)


def test_empty_and_mislabelled_folders_are_refused_before_training(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "inet", classes=3, per_class=4, val_per_class=2, layout="imagenet",
                             size=(20, 16))
    data = load_data(f"imagenet:{root}?val=3", image_size=16)
    assert (len(data.val), len(data.test), len(data.train)) == (3, 6, 9)
    (root / "train" / "n0002").rename(root / "train" / "n0009")
    with pytest.raises(DataError, match="val/ has other classes"):
        load_data(f"imagenet:{root}")
    (root / "train" / "n0099").mkdir()
    with pytest.raises(DataError, match="n0099.*has no images"):
        load_data(f"imagenet:{root}")
    with pytest.raises(DataError, match="no train/ folder"):
        load_data(f"imagenet:{root / 'train'}")


def test_whole_split_in_memory_for_small_data(numbered) -> None:
    x = numbered.val.x
    assert x.shape == (len(numbered.val), 3, 8, 8) and x.dtype == torch.float32
    assert torch.equal(numbered.val.head(2), x[:2])
    assert [n % 3 for n in decode_numbers(numbered, x)] == numbered.val.y.tolist()
