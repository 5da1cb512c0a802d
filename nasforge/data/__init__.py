"""Image classification datasets split into train/val/test: in memory (float32 tensors) or streamed from files.

Load one with a spec string ``NAME[:PATH][?key=value&...]``::

    from nasforge.data import load_data

    data = load_data("shapes?n=1000&classes=4&difficulty=0.3", seed=1)
    for x, y in data.train.batches(64, shuffle=True):
        ...

Built-in datasets (see :func:`list_datasets`):

- ``digits``: scikit-learn's bundled 8x8 digits, 1 channel, default ``image_size`` 16.
- ``shapes``: seeded procedural RGB shapes; options ``n``, ``classes``, ``difficulty``; default 32.
- ``cifar10:DIR``: the CIFAR-10 binary release; option ``limit``; default 32 (native).
- ``folder:DIR``: one sub-folder per class, streamed (decoded on demand by DataLoader workers, augmented with
  Once-for-All's ImageNet recipe); option ``mode`` (``RGB``/``L``); default 32.
- ``imagenet:DIR``: ``DIR/train/<class>/`` and ``DIR/val/<class>/`` (the test split), streamed; option ``val``
  (training images held out for validation, default 10,000); default 224.
- ``shards:DIR``: WebDataset tar shards written by ``nasforge data pack`` (or :func:`pack_shards`), streamed with
  random access (the same samples, order and splits as the folder they were packed from); option ``val``; 224.

Add a dataset with :func:`register_dataset`: a loader takes a :class:`DatasetRequest` and returns a
:class:`RawDataset`; :func:`load_data` does the splitting, resizing and normalisation.
"""

from __future__ import annotations

# Importing these modules registers the built-in datasets (a dict insert each; no data is read).
from nasforge.data import _cifar, _digits, _folders, _shapes, _shards  # noqa: F401
from nasforge.data._augment import IMAGENET_MEAN, IMAGENET_STD, AugmentRecipe, BadImageError, decoder_name
from nasforge.data._order import EpochPlan, StreamStats
from nasforge.data._pipeline import check_spec, load_data
from nasforge.data._registry import DatasetRequest, RawDataset, list_datasets, register_dataset
from nasforge.data._shards import ShardTable, load_shards, pack_shards
from nasforge.data._spec import parse_spec
from nasforge.data._splits import DataSplits, Split, resize_batch
from nasforge.data._stream import FileSplit, LoaderOptions
from nasforge.data._synthetic import make_image_folder

__all__ = [
    "Split",
    "FileSplit",
    "EpochPlan",
    "StreamStats",
    "LoaderOptions",
    "AugmentRecipe",
    "BadImageError",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "make_image_folder",
    "pack_shards",
    "load_shards",
    "ShardTable",
    "resize_batch",
    "DataSplits",
    "load_data",
    "check_spec",
    "register_dataset",
    "list_datasets",
    "parse_spec",
    "DatasetRequest",
    "RawDataset",
    "decoder_name",
]
