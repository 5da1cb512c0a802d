"""Image files on disk, listed once and read lazily: ``folder:DIR`` and ``imagenet:DIR``.

``folder:DIR`` holds one sub-folder per class; ``imagenet:DIR`` holds ``train/`` and ``val/``, each with one
sub-folder per class (the usual layout of the ImageNet release), ``val/`` being the test split. Listing checks
the layout before any training starts (missing or empty class folders, ``val/`` classes that differ from
``train/``'s); images are decoded only when a batch needs them, so a corrupt file is found (and skipped) then.

Paths are kept in one contiguous byte buffer (:class:`PathTable`) rather than a list of Python strings, so that
DataLoader worker processes share it without copying (a list of a million strings is copied page by page into
every forked worker as reference counts change).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nasforge.errors import DataError

__all__ = ["IMAGE_SUFFIXES", "PathTable", "FileListing", "list_class_folders", "list_imagenet"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})


@dataclass(frozen=True, eq=False)
class PathTable:
    """File paths relative to ``root``, UTF-8 encoded back to back in ``blob`` (path ``i`` is
    ``blob[offsets[i]:offsets[i + 1]]``)."""

    root: str
    blob: np.ndarray
    offsets: np.ndarray

    @classmethod
    def from_paths(cls, root: str | os.PathLike[str], relative: Sequence[str]) -> PathTable:
        encoded = [p.encode("utf-8") for p in relative]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        blob = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
        return cls(str(root), blob, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def relative(self, index: int) -> str:
        """Path ``index`` relative to the root."""
        start, stop = int(self.offsets[index]), int(self.offsets[index + 1])
        return self.blob[start:stop].tobytes().decode("utf-8")

    def path(self, index: int) -> str:
        """Full path of file ``index``."""
        return os.path.join(self.root, self.relative(index))

    def source(self, index: int) -> str:
        """What the decoder reads for sample ``index`` (here: its path)."""
        return self.path(index)

    def take(self, indices: np.ndarray) -> PathTable:
        """A table of the files at ``indices``, in that order."""
        return PathTable.from_paths(self.root, [self.relative(int(i)) for i in indices])


@dataclass(frozen=True, eq=False)
class FileListing:
    """What listing a folder found: files with labels, an optional official test set, class names."""

    files: PathTable
    labels: np.ndarray
    classes: tuple[str, ...]
    test_files: PathTable | None = None
    test_labels: np.ndarray | None = None


def _check_dir(root: Path, what: str) -> None:
    if not root.exists():
        raise DataError(f"{what}: {str(root)!r} does not exist; pass a folder with one sub-folder per class")
    if not root.is_dir():
        raise DataError(f"{what}: {str(root)!r} is not a directory; pass a folder with one sub-folder per class")


def _class_names(root: Path, what: str) -> list[str]:
    _check_dir(root, what)
    names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise DataError(f"{what}: {str(root)!r} has no class sub-folders; put each class's images in DIR/<class>/")
    if len(names) < 2:
        raise DataError(f"{what}: {str(root)!r} has only one class folder ({names[0]!r}); a classifier needs at least 2")
    return names


def _image_names(class_dir: Path, what: str) -> list[str]:
    names = sorted(
        e.name for e in os.scandir(class_dir)
        if not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES and e.is_file()
    )
    if not names:
        raise DataError(f"{what}: class folder {str(class_dir)!r} has no images; add files ending in "
                        f"{', '.join(sorted(IMAGE_SUFFIXES))} or remove the folder")
    return names


def _list(root: Path, classes: Sequence[str], what: str) -> tuple[PathTable, np.ndarray]:
    relative: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = _image_names(root / name, what)
        relative.extend(f"{name}/{f}" for f in files)
        labels.extend([label] * len(files))
    return PathTable.from_paths(root, relative), np.asarray(labels, dtype=np.int64)


def list_class_folders(root: str | os.PathLike[str]) -> FileListing:
    """List ``root/<class>/<image>`` (``folder:DIR``); raises :class:`DataError` on a bad layout."""
    path = Path(root)
    classes = _class_names(path, "folder")
    files, labels = _list(path, classes, "folder")
    return FileListing(files, labels, tuple(classes))


def list_imagenet(root: str | os.PathLike[str]) -> FileListing:
    """List ``root/train/<class>/`` (training) and ``root/val/<class>/`` (the test split) for ``imagenet:DIR``.

    Raises:
        DataError: a missing ``train/``, a class folder without images, or ``val/`` classes that are not
            ``train/``'s (a mislabelled copy would silently score zero).
    """
    path = Path(root)
    _check_dir(path, "imagenet")
    if not (path / "train").is_dir():
        raise DataError(f"imagenet: {str(path)!r} has no train/ folder; expected DIR/train/<class>/ and "
                        "DIR/val/<class>/ (use folder:DIR for a single folder of class sub-folders)")
    classes = _class_names(path / "train", "imagenet")
    files, labels = _list(path / "train", classes, "imagenet")
    if not (path / "val").is_dir():
        return FileListing(files, labels, tuple(classes))
    val_classes = _class_names(path / "val", "imagenet")
    if val_classes != classes:
        missing = sorted(set(classes) - set(val_classes))[:3]
        extra = sorted(set(val_classes) - set(classes))[:3]
        raise DataError(f"imagenet: val/ has other classes than train/ ({len(val_classes)} vs {len(classes)}; "
                        f"missing {missing}, unknown {extra}); give val/ the same class folders as train/")
    test_files, test_labels = _list(path / "val", classes, "imagenet")
    return FileListing(files, labels, tuple(classes), test_files, test_labels)
