"""``folder:DIR``: one sub-folder per class, images read with Pillow.

Class names are the sub-folder names, sorted. Files whose suffix is not an image suffix, hidden files
and hidden folders are skipped; a file with an image suffix that Pillow cannot read is an error. Each
image is converted to RGB (or grayscale with ``mode=L``) and resized to ``image_size`` x
``image_size`` with bilinear filtering, without keeping the aspect ratio.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nasforge.data._registry import DatasetRequest, RawDataset, register_dataset
from nasforge.errors import DataError

__all__ = ["IMAGE_SUFFIXES", "load_folder"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})


def _class_dirs(root: Path) -> list[Path]:
    if not root.exists():
        raise DataError(f"folder: {str(root)!r} does not exist; pass a folder with one sub-folder per class")
    if not root.is_dir():
        raise DataError(
            f"folder: {str(root)!r} is not a directory; pass a folder with one sub-folder per class"
        )
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise DataError(
            f"folder: {str(root)!r} has no class sub-folders; put each class's images in DIR/<class>/"
        )
    if len(dirs) < 2:
        raise DataError(
            f"folder: {str(root)!r} has only one class folder ({dirs[0].name!r}); a classifier needs at least 2"
        )
    return dirs


def _image_files(class_dir: Path) -> list[Path]:
    files = sorted(
        p
        for p in class_dir.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise DataError(
            f"folder: class folder {str(class_dir)!r} has no images; add files ending in "
            f"{', '.join(sorted(IMAGE_SUFFIXES))} or remove the folder"
        )
    return files


def _read_image(path: Path, mode: str, size: int) -> np.ndarray:
    """Read one image as uint8 ``[C, size, size]``."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.uint8)
    except (OSError, Image.DecompressionBombError) as err:  # UnidentifiedImageError is an OSError
        raise DataError(
            f"folder: cannot read image {str(path)!r} ({err}); replace or delete the file"
        ) from None
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


@register_dataset("folder", options=("mode",), path="required", default_image_size=32)
def load_folder(request: DatasetRequest) -> RawDataset:
    """Images in DIR/<class>/ read with Pillow; option mode=RGB (default) or L (grayscale)."""
    assert request.path is not None  # guaranteed by path="required"
    mode = request.choice_option("mode", "RGB", ("RGB", "L"))
    images: list[np.ndarray] = []
    labels: list[int] = []
    class_dirs = _class_dirs(request.path)
    # list (and so check) every class folder before reading any image
    files_by_class = [_image_files(class_dir) for class_dir in class_dirs]
    for label, files in enumerate(files_by_class):
        for path in files:
            images.append(_read_image(path, mode, request.image_size))
            labels.append(label)
    return RawDataset(
        x=np.stack(images), y=np.asarray(labels, dtype=np.int64), classes=tuple(d.name for d in class_dirs)
    )
