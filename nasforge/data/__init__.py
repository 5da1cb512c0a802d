"""In-memory image classification datasets, split into train/val/test as float32 torch tensors.

Load one with a spec string ``NAME[:PATH][?key=value&...]``::

    from nasforge.data import load_data

    data = load_data("shapes?n=1000&classes=4&difficulty=0.3", seed=1)
    for x, y in data.train.batches(64, shuffle=True):
        ...

Built-in datasets (see :func:`list_datasets`):

- ``digits``: scikit-learn's bundled 8x8 digits, 1 channel, default ``image_size`` 16.
- ``shapes``: seeded procedural RGB shapes; options ``n``, ``classes``, ``difficulty``; default 32.
- ``cifar10:DIR``: the CIFAR-10 binary release; option ``limit``; default 32 (native).
- ``folder:DIR``: one sub-folder per class, read with Pillow; option ``mode`` (``RGB``/``L``); default 32.

Add a dataset with :func:`register_dataset`: a loader takes a :class:`DatasetRequest` and returns a
:class:`RawDataset`; :func:`load_data` does the splitting, resizing and normalisation.
"""

from __future__ import annotations

# Importing these modules registers the built-in datasets (a dict insert each; no data is read).
from nasforge.data import _cifar, _digits, _folder, _shapes  # noqa: F401
from nasforge.data._pipeline import load_data
from nasforge.data._registry import DatasetRequest, RawDataset, list_datasets, register_dataset
from nasforge.data._spec import parse_spec
from nasforge.data._splits import DataSplits, Split

__all__ = [
    "Split",
    "DataSplits",
    "load_data",
    "register_dataset",
    "list_datasets",
    "parse_spec",
    "DatasetRequest",
    "RawDataset",
]
