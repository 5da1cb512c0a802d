"""Image folders packed into WebDataset tar shards with an index for random access: ``shards:DIR``.

Many-machine training reads a few large files faster than a million small ones. :func:`pack_shards` writes
``DIR/train-000000.tar, ...`` (and ``DIR/val-*.tar`` for the ImageNet layout) in the WebDataset format: every
sample is ``KEY.cls`` (the label as text) followed by ``KEY.jpg`` (the original bytes, not re-encoded), samples
in a seeded random order, so any shard is a class-balanced slice and the tars stream with ``webdataset`` as
they are. ``DIR/index.json`` records where each image's bytes lie inside its shard, so :class:`ShardTable`
reads any sample with one seek: the streamed-split machinery (exact epoch permutation, per-process shares,
per-sample seeds, resume mid-epoch) works on shards unchanged, and the samples, listed in the source folder's
order, split exactly as the folder itself does.

Index format (``format: "nasforge-shards"``, ``version: 1``)::

    {"format", "version", "source", "layout": "folder" | "imagenet", "seed", "shard_mb", "classes": [...],
     "splits": {"train": {"images": N, "shards": [{"file": "train-000000.tar", "bytes": SIZE_OF_THE_TAR,
         "samples": {"key": [...], "ext": [...], "label": [...], "offset": [...], "size": [...], "position": [...]}},
         ...]}, "val": {...}}}

Per shard, sample ``j`` is the member ``key[j] + "." + ext[j]``, its data ``size[j]`` bytes at byte ``offset[j]``
of the tar; ``position[j]`` is its place in the source folder's listing (class, then file name).
"""

from __future__ import annotations

import json
import math
import os
import re
import tarfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from nasforge.data._files import FileListing, PathTable, list_class_folders, list_imagenet
from nasforge.data._registry import DatasetRequest, register_dataset
from nasforge.errors import ConfigError, DataError, MissingDependencyError
from nasforge.io import atomic_write_json

__all__ = ["FORMAT", "VERSION", "ShardTable", "pack_shards", "load_shards", "load_shards_dataset"]

FORMAT = "nasforge-shards"
VERSION = 1
INDEX = "index.json"
_SHARD_RE = re.compile(r"(train|val)-\d{6}\.tar")
_PARTIAL_RE = re.compile(r"\.(train|val)-\d{6}\.tar\.partial")
_TAR_BLOCK = 512
_MTIME = 946_684_800  # 2000-01-01: a fixed member mtime, so the same folder packs into the same bytes
_MAX_OPEN = 32  # shard files one process keeps open
Progress = Callable[[int, int], None]


# -- writing ---------------------------------------------------------------------------------------------------
def _import_webdataset() -> Any:
    try:
        import webdataset
    except ImportError:
        raise MissingDependencyError('packing shards needs webdataset: pip install "nasforge[shards]"') from None
    return webdataset


def pack_shards(source: str | Path, out: str | Path, *, shard_mb: float = 256.0, seed: int = 0,
                progress: Progress | None = None) -> dict[str, Any]:
    """Pack an image folder into WebDataset tar shards plus ``out/index.json`` (see the module docstring).

    Args:
        source: a ``folder:`` layout (``SOURCE/<class>/``) or an ``imagenet:`` layout (``SOURCE/train/<class>/``
            and optionally ``SOURCE/val/<class>/``, packed as the ``val-*.tar`` shards).
        out: the output folder: new, empty, or a previous pack of the same source (overwritten).
        shard_mb: image bytes per shard (MiB); a shard closes after the sample that reaches it.
        seed: the order of the samples across shards.
        progress: called as ``progress(images_done, images_total)`` after every image.

    Returns:
        ``{"out", "images", "shards", "bytes", "classes", "splits": {split: number of shards}}``.

    Raises:
        ConfigError: a bad ``shard_mb``.
        DataError: a bad source layout, or ``out`` holds something else than a pack of ``source``.
        MissingDependencyError: ``webdataset`` is not installed.
    """
    if isinstance(shard_mb, bool) or not isinstance(shard_mb, (int, float)) or not 0 < shard_mb < math.inf:
        raise ConfigError(f"shard_mb={shard_mb!r} is invalid; use a size in MiB > 0 (e.g. 256)")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed={seed!r} is invalid; use an integer >= 0")
    wds = _import_webdataset()
    src, out = Path(source).resolve(), Path(out)
    layout = "imagenet" if (src / "train").is_dir() else "folder"
    listing = list_imagenet(src) if layout == "imagenet" else list_class_folders(src)
    if out.resolve().is_relative_to(src):
        raise DataError(f"--out {str(out)!r} lies inside the source {str(src)!r}; write the shards elsewhere")
    _prepare_out(out, src)
    parts = [("train", listing.files, listing.labels)]
    if listing.test_files is not None and listing.test_labels is not None:
        parts.append(("val", listing.test_files, listing.test_labels))
    total, done = sum(len(t) for _, t, _ in parts), [0]

    def tick() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    splits = {name: _pack_split(wds, out, name, table, labels, int(shard_mb * 2**20), seed, tick)
              for name, table, labels in parts}
    atomic_write_json(out / INDEX, {"format": FORMAT, "version": VERSION, "source": str(src), "layout": layout,
                                    "seed": seed, "shard_mb": shard_mb, "classes": list(listing.classes),
                                    "splits": splits})
    _remove_stale(out, {s["file"] for split in splits.values() for s in split["shards"]})
    shards = [s for split in splits.values() for s in split["shards"]]
    return {"out": str(out), "images": total, "shards": len(shards), "bytes": sum(s["bytes"] for s in shards),
            "classes": len(listing.classes), "splits": {k: len(v["shards"]) for k, v in splits.items()}}


def _prepare_out(out: Path, src: Path) -> None:
    """Make ``out`` ready: refuse a foreign non-empty folder; from a previous pack drop the index first (so no
    index ever names shards being rewritten) and any partial shard."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {str(out)!r} is a file; pass a new or empty folder")
    names = sorted(e.name for e in os.scandir(out)) if out.is_dir() else []
    if names:
        foreign = [n for n in names if n != INDEX and not _SHARD_RE.fullmatch(n) and not _PARTIAL_RE.fullmatch(n)]
        try:  # an unreadable index is a broken pack, which may be overwritten
            previous = json.loads((out / INDEX).read_text(encoding="utf-8")).get("source")
        except (OSError, ValueError, AttributeError):
            previous = None
        if foreign or (previous is not None and previous != str(src)):
            what = f"holds {foreign[:3]}" if foreign else f"is a pack of {previous!r}"
            raise DataError(f"--out {str(out)!r} is not empty and {what}, not a pack of {str(src)!r}; pass a new "
                            "or empty folder (or delete this one)")
        for name in names:
            if name == INDEX or _PARTIAL_RE.fullmatch(name):
                (out / name).unlink()
    out.mkdir(parents=True, exist_ok=True)


def _remove_stale(out: Path, keep: set[str]) -> None:
    """Delete shards of an earlier pack that the new index does not name."""
    for entry in os.scandir(out):
        if _SHARD_RE.fullmatch(entry.name) and entry.name not in keep:
            os.unlink(entry.path)


def _sample_names(table: PathTable) -> list[tuple[str, str]]:
    """``(key, extension)`` per file: the relative path without its extension, dots in the file name made
    ``_`` (WebDataset splits a member name at the first dot of its base name), made unique with a suffix."""
    used: set[str] = set()
    names = []
    for i in range(len(table)):
        relative = table.relative(i)
        folder, _, base = relative.rpartition("/")
        stem, ext = os.path.splitext(base)
        key = (folder + "/" if folder else "") + stem.replace(".", "_")
        unique, k = key, 1
        while unique in used:
            unique, k = f"{key}_{k}", k + 1
        used.add(unique)
        names.append((unique, ext[1:].lower()))
    return names


def _pack_split(wds: Any, out: Path, split: str, table: PathTable, labels: np.ndarray, max_bytes: int, seed: int,
                tick: Callable[[], None]) -> dict[str, Any]:
    """Write one split's shards (each under a temporary name, renamed once complete); its index entry."""
    names = _sample_names(table)
    order = np.random.default_rng([seed, 0 if split == "train" else 1]).permutation(len(table))
    written: list[str] = []
    aborted: list[bool] = []

    def finish_shard(partial: str) -> None:
        if aborted:
            os.unlink(partial)
            return
        final = os.path.join(os.path.dirname(partial), os.path.basename(partial)[1:-len(".partial")])
        with open(partial, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(partial, final)
        written.append(os.path.basename(final))

    pattern = os.path.join(str(out).replace("%", "%%"), f".{split}-%06d.tar.partial")
    with wds.ShardWriter(pattern, maxcount=2**62, maxsize=max_bytes, post=finish_shard, verbose=0, encoder=False,
                         mtime=_MTIME, format="PAX_FORMAT") as writer:
        try:
            for i in order.tolist():
                key, ext = names[i]
                data = Path(table.path(i)).read_bytes()
                writer.write({"__key__": key, ext: data, "cls": str(int(labels[i])).encode("ascii")})
                tick()
        except BaseException:
            aborted.append(True)
            raise
    where = {f"{key}.{ext}": i for i, (key, ext) in enumerate(names)}
    shards = [_read_back(out, name, where, labels) for name in written]
    if sum(len(s["samples"]["key"]) for s in shards) != len(table):
        raise DataError(f"{split}: the shards written to {str(out)!r} do not hold every image once; was the folder "
                        "changed while packing? Run nasforge data pack again")
    return {"images": len(table), "shards": shards}


def _read_back(out: Path, name: str, where: dict[str, int], labels: np.ndarray) -> dict[str, Any]:
    """Index entry of one written shard: where every image member's data lies inside the tar."""
    columns: dict[str, list[Any]] = {"key": [], "ext": [], "label": [], "offset": [], "size": [], "position": []}
    with tarfile.open(out / name) as tar:
        for member in tar:
            position = where.get(member.name)
            if position is None:  # the .cls members
                continue
            key, _, ext = member.name.rpartition(".")
            for column, value in zip(columns, (key, ext, int(labels[position]), member.offset_data, member.size,
                                               position), strict=True):
                columns[column].append(value)
    return {"file": name, "bytes": os.path.getsize(out / name), "samples": columns}


# -- reading ---------------------------------------------------------------------------------------------------
class _Handles:
    """The shard files one process has open (at most ``_MAX_OPEN``, least recently used closed first).

    A forked worker starts afresh (sharing its parent's file offsets would race), and pickling (spawned workers)
    carries no handles."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._open: OrderedDict[str, BinaryIO] = OrderedDict()

    def read(self, path: str, offset: int, size: int) -> bytes:
        if self._pid != os.getpid():
            self.close()
            self._pid = os.getpid()
        fh = self._open.pop(path, None)
        if fh is None:
            fh = open(path, "rb", buffering=0)  # kept open across calls
            while len(self._open) >= _MAX_OPEN:
                self._open.popitem(last=False)[1].close()
        self._open[path] = fh
        if hasattr(os, "pread"):
            return os.pread(fh.fileno(), size, offset)
        fh.seek(offset)  # no pread (Windows): this process's own handle, so seeking is safe
        return fh.read(size)

    def close(self) -> None:
        for fh in self._open.values():
            fh.close()  # in a forked child this closes the child's descriptor only
        self._open.clear()

    def __getstate__(self) -> dict[str, Any]:
        return {"fresh": True}  # not empty: pickle skips __setstate__ for a false state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]


@dataclass(frozen=True, eq=False)
class ShardTable:
    """Packed samples with random access: sample ``i`` is ``size[i]`` bytes at ``offset[i]`` of shard file
    ``shards[shard[i]]`` (under ``root``), named ``names.relative(i)`` (``KEY.jpg``) in it.

    The interface of :class:`~nasforge.data._files.PathTable` that streamed splits use: ``len``, ``take``,
    ``source`` (here the image's bytes), ``path`` and ``relative`` (names for messages).
    """

    root: str
    shards: tuple[str, ...]
    shard: np.ndarray
    offset: np.ndarray
    size: np.ndarray
    names: PathTable
    _handles: _Handles = field(default_factory=_Handles, repr=False)

    def __len__(self) -> int:
        return len(self.shard)

    def relative(self, index: int) -> str:
        """The sample's member name inside its shard, e.g. ``n01440764/n01440764_10026.jpg``."""
        return self.names.relative(index)

    def path(self, index: int) -> str:
        """``SHARD_PATH:MEMBER``, naming the sample in messages."""
        return f"{os.path.join(self.root, self.shards[int(self.shard[index])])}:{self.relative(index)}"

    def source(self, index: int) -> bytes:
        """The sample's encoded image bytes, read straight from its shard."""
        path = os.path.join(self.root, self.shards[int(self.shard[index])])
        return self._handles.read(path, int(self.offset[index]), int(self.size[index]))

    def take(self, indices: np.ndarray) -> ShardTable:
        """A table of the samples at ``indices``, in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        return ShardTable(self.root, self.shards, self.shard[indices], self.offset[indices], self.size[indices],
                          self.names.take(indices))


def _bad_index(root: Path, what: str, source: str | None = None) -> DataError:
    again = f"nasforge data pack {source or 'SOURCE'} --out {root}"
    return DataError(f"shards {str(root)!r}: {what}; re-run `{again}`")


def _read_index(root: Path) -> dict[str, Any]:
    if not root.is_dir():
        raise DataError(f"shards: {str(root)!r} is not a folder; pass the --out folder of `nasforge data pack`")
    try:
        index = json.loads((root / INDEX).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _bad_index(root, f"{INDEX} is missing (no pack here, or packing did not finish)") from None
    except (OSError, ValueError) as exc:
        raise _bad_index(root, f"{INDEX} is unreadable ({type(exc).__name__})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise _bad_index(root, f"{INDEX} is not a {FORMAT} index")
    if index.get("version") != VERSION:
        raise _bad_index(root, f"{INDEX} has version {index.get('version')!r}, this nasforge reads {VERSION}",
                         index.get("source"))
    return index


def _shard_columns(root: Path, entry: dict[str, Any], source: str | None) -> tuple[str, int, dict[str, Any]]:
    name, expected = entry["file"], int(entry["bytes"])
    if not isinstance(name, str) or not _SHARD_RE.fullmatch(name):
        raise _bad_index(root, f"{INDEX} names an unexpected shard file {name!r}", source)
    try:
        actual = os.path.getsize(root / name)
    except OSError:
        raise _bad_index(root, f"shard {name} is missing", source) from None
    if actual != expected:
        raise _bad_index(root, f"shard {name} has {actual} bytes, the index expects {expected} (truncated or "
                               "rewritten)", source)
    return name, expected, entry["samples"]


def _columns(root: Path, index: dict[str, Any], split: str) -> tuple[list[str], np.ndarray, dict[str, np.ndarray],
                                                                    list[str]]:
    """Shard names, per-sample shard ids, numeric columns and member names of one split, as the index says."""
    source = index.get("source")
    try:
        entries = [_shard_columns(root, entry, source) for entry in index["splits"][split]["shards"]]
        shard = np.concatenate([np.full(len(c["key"]), k, np.int32) for k, (_, _, c) in enumerate(entries)])
        column = {name: np.concatenate([np.asarray(c[name], np.int64) for _, _, c in entries])
                  for name in ("label", "offset", "size", "position")}
        members = [f"{k}.{e}" for _, _, c in entries for k, e in zip(c["key"], c["ext"], strict=True)]
    except (KeyError, TypeError, ValueError) as exc:
        raise _bad_index(root, f"{INDEX} is malformed in split {split!r} ({type(exc).__name__}: {exc})",
                         source) from None
    if any(len(v) != len(shard) for v in (*column.values(), members)):
        raise _bad_index(root, f"{INDEX} split {split!r} has sample lists of different lengths", source)
    column["limit"] = np.asarray([n for _, n, _ in entries], np.int64)[shard]
    return [name for name, _, _ in entries], shard, column, members


def _split_table(root: Path, index: dict[str, Any], split: str, classes: int) -> tuple[ShardTable, np.ndarray]:
    """The table of one split, in the source folder's listing order; raises DataError on any inconsistency."""
    shards, shard, column, members = _columns(root, index, split)
    n = len(shard)
    label, offset, size, position = (column[k] for k in ("label", "offset", "size", "position"))
    problems = {
        "no samples": n == 0,
        "labels out of range": n and (label.min() < 0 or label.max() >= classes),
        "offsets outside their shard": n and (np.any(offset % _TAR_BLOCK) or np.any(offset < _TAR_BLOCK)
                                              or np.any(size < 0) or np.any(offset + size > column["limit"])),
        "positions that are not a permutation": not np.array_equal(np.sort(position), np.arange(n)),
    }
    bad = [what for what, failed in problems.items() if failed]
    if bad:
        raise _bad_index(root, f"{INDEX} split {split!r} has {', '.join(bad)}", index.get("source"))
    order = np.argsort(position)
    names = PathTable.from_paths(root, [members[int(i)] for i in order])
    table = ShardTable(str(root), tuple(shards), shard[order], offset[order], size[order], names)
    return table, np.ascontiguousarray(label[order])


def load_shards(root: str | Path) -> FileListing:
    """Read ``root/index.json`` (written by :func:`pack_shards`) into a listing of :class:`ShardTable` s.

    ``train`` shards are the listing's files, ``val`` shards (when packed) its official test set, each in the
    source folder's order, so the splits match those of the folder the shards were packed from.

    Raises:
        DataError: the index is missing, corrupt or does not match the shards (a shard missing, or of another
            size than recorded); the message names it and says to re-run ``nasforge data pack``.
    """
    root = Path(root)
    index = _read_index(root)
    classes = index.get("classes")
    splits = index.get("splits")
    if (not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes)
            or not isinstance(splits, dict) or "train" not in splits):
        raise _bad_index(root, f"{INDEX} is malformed (classes or splits)", index.get("source"))
    files, labels = _split_table(root, index, "train", len(classes))
    if "val" not in splits:
        return FileListing(files, labels, tuple(classes))
    test_files, test_labels = _split_table(root, index, "val", len(classes))
    return FileListing(files, labels, tuple(classes), test_files, test_labels)  # type: ignore[arg-type]


@register_dataset("shards", options=("mode", "val"), path="required", default_image_size=224, kind="files")
def load_shards_dataset(request: DatasetRequest) -> FileListing:
    """WebDataset tar shards written by `nasforge data pack` (DIR/index.json), streamed; val=N as imagenet."""
    assert request.path is not None  # guaranteed by path="required"
    return load_shards(request.path)
