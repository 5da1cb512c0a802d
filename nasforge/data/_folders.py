"""The image-file datasets ``folder:DIR`` and ``imagenet:DIR`` (decoded on demand, see :mod:`._stream`)."""

from __future__ import annotations

from nasforge.data._files import FileListing, list_class_folders, list_imagenet
from nasforge.data._registry import DatasetRequest, register_dataset

__all__ = ["load_folder", "load_imagenet"]


@register_dataset("folder", options=("mode",), path="required", default_image_size=32, kind="files")
def load_folder(request: DatasetRequest) -> FileListing:
    """Images in DIR/<class>/, streamed; option mode=RGB (default) or L (grayscale)."""
    assert request.path is not None  # guaranteed by path="required"
    return list_class_folders(request.path)


@register_dataset("imagenet", options=("mode", "val"), path="required", default_image_size=224, kind="files")
def load_imagenet(request: DatasetRequest) -> FileListing:
    """DIR/train/<class>/ and DIR/val/<class>/ (the test split), streamed; val=N training images held out."""
    assert request.path is not None
    return list_imagenet(request.path)
