"""WebDataset tar shards (``nasforge data pack``, ``shards:DIR``): index, plain-tar compatibility, the same splits
and streamed batches as the folder they were packed from, damaged packs, the CLI."""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nasforge.data import EpochPlan, LoaderOptions, load_data, make_image_folder
from nasforge.data._shards import ShardTable, load_shards, pack_shards
from nasforge.errors import DataError, MissingDependencyError, NasforgeError


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An imagenet-layout folder of 60 JPEGs (3 classes x (16 train + 4 val)) packed into tiny shards."""
    pytest.importorskip("webdataset", reason="packing needs webdataset: pip install 'nasforge[shards]'")
    tmp = tmp_path_factory.mktemp("shards")
    src = make_image_folder(tmp / "src", classes=3, per_class=16, val_per_class=4, size=(32, 24),
                            layout="imagenet", seed=2)
    calls: list[tuple[int, int]] = []
    summary = pack_shards(src, tmp / "out", shard_mb=0.01, seed=3, progress=lambda d, t: calls.append((d, t)))
    return {"src": src, "out": tmp / "out", "summary": summary, "calls": calls}


def _index(out: Path) -> dict[str, Any]:
    return json.loads((out / "index.json").read_text())


def _samples(index: dict[str, Any], split: str) -> list[tuple[str, str, int, int, int, int]]:
    """(file, member, label, offset, size, position) of every sample of ``split``, in shard order."""
    return [(s["file"], f"{k}.{e}", lab, off, size, pos) for s in index["splits"][split]["shards"]
            for k, e, lab, off, size, pos in zip(*(s["samples"][c] for c in ("key", "ext", "label", "offset",
                                                                             "size", "position")), strict=True)]


def test_the_index_covers_every_image_exactly_once(packed: dict[str, Any]) -> None:
    src, index, summary = packed["src"], _index(packed["out"]), packed["summary"]
    assert index["format"] == "nasforge-shards" and index["version"] == 1 and index["layout"] == "imagenet"
    assert index["classes"] == ["n0000", "n0001", "n0002"]
    assert len(index["splits"]["train"]["shards"]) >= 3 and summary["splits"]["train"] >= 3
    for split, folder in (("train", "train"), ("val", "val")):
        samples = _samples(index, split)
        on_disk = sorted(str(p.relative_to(src / folder)) for p in (src / folder).rglob("*.jpg"))
        assert sorted(m for _, m, *_ in samples) == on_disk, f"{split}: every image once"
        assert all(index["classes"][lab] == m.split("/")[0] for _, m, lab, *_ in samples)
        assert sorted(pos for *_, pos in samples) == list(range(len(on_disk)))
    train = [m for _, m, *_ in _samples(index, "train")]
    assert train != sorted(train), "samples are shuffled across shards"
    assert (summary["images"], summary["classes"], summary["shards"]) == (60, 3, len(list(packed["out"].glob("*.tar"))))
    assert packed["calls"][-1] == (60, 60) and len(packed["calls"]) == 60


def test_shards_are_plain_webdataset_tars_with_the_original_bytes(packed: dict[str, Any]) -> None:
    src, out, index = packed["src"], packed["out"], _index(packed["out"])
    for file, member, _, offset, size, _ in _samples(index, "train"):
        raw = (out / file).read_bytes()
        assert raw[offset : offset + size] == (src / "train" / member).read_bytes()
    with tarfile.open(out / "train-000001.tar") as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert len(names) % 2 == 0 and names[0::2] == [n[: -len("jpg")] + "cls" for n in names[1::2]]
        assert all(n.endswith(".jpg") for n in names[1::2])
        label = int(tar.extractfile(members[0]).read().decode())  # type: ignore[union-attr]
        assert index["classes"][label] == names[0].split("/")[0]
    import webdataset as wds

    dataset = wds.WebDataset(str(out / "train-000001.tar"), shardshuffle=False)
    seen = [(s["__key__"], s["jpg"], int(s["cls"])) for s in dataset]
    assert [key + ".jpg" for key, _, _ in seen] == names[1::2]
    assert all(data == (src / "train" / f"{key}.jpg").read_bytes() for key, data, _ in seen)


def test_shards_split_and_decode_exactly_like_the_folder(packed: dict[str, Any]) -> None:
    shards = load_data(f"shards:{packed['out']}", image_size=16, seed=4)
    folder = load_data(f"imagenet:{packed['src']}", image_size=16, seed=4)
    assert shards.classes == folder.classes and shards.num_classes == 3
    assert shards.describe()["sizes"] == folder.describe()["sizes"] == {"train": 38, "val": 10, "test": 12}
    for a, b in ((shards.train, folder.train), (shards.val, folder.val), (shards.test, folder.test)):
        assert isinstance(a.files, ShardTable)
        assert [a.files.relative(i) for i in range(len(a))] == [b.files.relative(i) for i in range(len(b))]
        assert torch.equal(a.y, b.y)
    assert torch.equal(shards.val.x, folder.val.x) and torch.equal(shards.test.x, folder.test.x)
    assert shards.train.files.source(0)[:2] == b"\xff\xd8", "the forked workers inherit an open shard handle"
    batches = []
    for data in (shards, folder):
        split = type(data.train)(data.train.files, data.train.labels, 16, data.train.recipe, LoaderOptions(workers=2))
        plan = EpochPlan(len(split), 8, seed=7, start=1, resolution_of=lambda b: 12)
        batches.append([(b, x, y) for b, x, y in split.epoch_stream(plan)])
    assert [b for b, _, _ in batches[0]] == [1, 2, 3] == [b for b, _, _ in batches[1]]
    assert all(torch.equal(x0, x1) and torch.equal(y0, y1)
               for (_, x0, y0), (_, x1, y1) in zip(*batches, strict=True))


def test_a_table_reads_after_pickling_and_take(packed: dict[str, Any]) -> None:
    table = load_shards(packed["out"]).files
    assert isinstance(table, ShardTable) and len(table) == 48
    first = table.source(0)
    copy = pickle.loads(pickle.dumps(table))
    assert copy.source(0) == first and first[:2] == b"\xff\xd8", "JPEG bytes"
    sub = copy.take(np.array([5, 0]))
    assert sub.source(1) == first and sub.relative(0) == table.relative(5)
    assert sub.path(1).startswith(str(packed["out"])) and sub.path(1).endswith(".tar:" + table.relative(0))


def _damaged(packed: dict[str, Any], tmp_path: Path) -> Path:
    out = tmp_path / "pack"
    shutil.copytree(packed["out"], out)
    return out


def _expect_one_line(out: Path, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern) as info:
        load_data(f"shards:{out}", image_size=16)
    assert "\n" not in str(info.value) and "nasforge data pack" in str(info.value)


def test_damaged_packs_fail_with_one_line_that_says_to_repack(packed: dict[str, Any], tmp_path: Path) -> None:
    out = _damaged(packed, tmp_path)
    shard = out / "train-000001.tar"
    shard.write_bytes(shard.read_bytes()[:-1024])
    _expect_one_line(out, r"train-000001\.tar has \d+ bytes, the index expects")
    shard.unlink()
    _expect_one_line(out, r"train-000001\.tar is missing")
    shutil.copy(packed["out"] / shard.name, shard)
    index = _index(out)
    index["splits"]["val"]["shards"][0]["samples"]["offset"][0] += 7
    (out / "index.json").write_text(json.dumps(index))
    _expect_one_line(out, "split 'val' has offsets outside their shard")
    del index["splits"]["train"]["shards"][0]["samples"]["size"]
    (out / "index.json").write_text(json.dumps(index))
    _expect_one_line(out, "index.json is malformed in split 'train'")
    (out / "index.json").write_text('{"format": "nasforge-shards", "vers')
    _expect_one_line(out, "index.json is unreadable")
    (out / "index.json").unlink()
    _expect_one_line(out, "index.json is missing")


def test_packing_refuses_a_foreign_folder_and_repacks_its_own(packed: dict[str, Any], tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match=r"is not empty and holds \['notes.txt'\]"):
        pack_shards(packed["src"], foreign)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    other = make_image_folder(tmp_path / "other", classes=2, per_class=3, size=(16, 16))
    with pytest.raises(DataError, match="is a pack of .*src"):
        pack_shards(other, _damaged(packed, tmp_path))
    out = _damaged(packed, tmp_path / "again")
    summary = pack_shards(packed["src"], out, shard_mb=1.0)
    assert summary["splits"] == {"train": 1, "val": 1}
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "train-000000.tar", "val-000000.tar"]
    assert len(load_shards(out).files) == 48


def test_packing_without_webdataset_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_image_folder(tmp_path / "src", classes=2, per_class=2, size=(16, 16))
    monkeypatch.setitem(sys.modules, "webdataset", None)  # makes `import webdataset` raise ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install \"nasforge\[shards\]\""):
        pack_shards(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _cli(argv: list[str]) -> int:
    """``nasforge.cli.main`` once ``data`` is wired into it; until then the same parse and error handling."""
    from nasforge import cli
    from nasforge.cli_data import add_commands

    choices = next(a.choices for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    if "data" in choices:
        return cli.main(argv)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true")
    parser = argparse.ArgumentParser(prog="nasforge", parents=[common])
    add_commands(parser.add_subparsers(dest="command"), common)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except NasforgeError as exc:
        print(f"nasforge: error: {exc}", file=sys.stderr)
        return 2


def test_cli_packs_describes_and_refuses(packed: dict[str, Any], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert _cli(["data", "pack", str(packed["src"]), "--out", str(out), "--shard-mb", "0.02", "--quiet"]) == 0
    assert "packed 60 images of 3 classes" in capsys.readouterr().out
    assert _index(out)["shard_mb"] == 0.02 and len(load_shards(out).test_files or ()) == 12
    assert _cli(["data", "describe", f"shards:{out}", "--image-size", "16"]) == 0
    assert json.loads(capsys.readouterr().out)["sizes"] == {"train": 38, "val": 10, "test": 12}
    assert _cli(["data", "pack", str(packed["src"]), "--out", str(packed["src"] / "train"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nasforge: error:") and "inside the source" in err and err.count("\n") == 1
    assert _cli(["data", "pack", str(packed["src"]), "--out", str(out), "--shard-mb", "0", "--quiet"]) == 2
    assert "--shard-mb 0 is invalid" in capsys.readouterr().err

