"""Datasets as in-memory tensors, read from their standard on-disk formats.

>>> from bioplausible.data import load_dataset
>>> bundle = load_dataset("mnist", val_size=5000)        # doctest: +SKIP
>>> for x, y in bundle.train.batches(128, shuffle=True):  # doctest: +SKIP
...     ...

Files are looked up under :func:`resolve_root` (argument, then ``$BIOPLAUSIBLE_DATA``, then
``~/.cache/bioplausible``), each dataset in its usual folder (``mnist/``, ``fashion-mnist/``,
``cifar-10-batches-py/``, ``cifar-100-python/``, ``svhn/``,
``stl10_binary/``, ``medmnist/``). Missing files are downloaded and checksum-verified when allowed;
see :mod:`bioplausible.data.datasets` for the sources and :mod:`.formats` for the formats.
"""

from .adapt import as_bundle
from .api import dataset_status, fetch, list_datasets, load_dataset, verify
from .core import DataBundle, DatasetInfo, RawData, Split, resolve_root
from .download import Remote
from .metrics import multilabel_metrics
from .registry import DATASETS, DatasetSpec, FileSpec, register

__all__ = [
    "DATASETS",
    "DataBundle",
    "DatasetInfo",
    "DatasetSpec",
    "FileSpec",
    "RawData",
    "Remote",
    "Split",
    "as_bundle",
    "dataset_status",
    "fetch",
    "list_datasets",
    "load_dataset",
    "multilabel_metrics",
    "register",
    "resolve_root",
    "verify",
]
