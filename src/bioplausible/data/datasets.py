"""Built-in dataset specs: file layouts, canonical sources and checksums, and loaders.

Checksums are the md5 sums published for the upstream files (as listed by torchvision's
dataset sources). They are checked on download only: files placed by hand are accepted
without checksum (they are still parsed and validated), because faithful re-creations of a
dataset are often not byte-identical to the upstream archives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorruptDataError
from . import formats
from .core import RawData
from .download import Remote
from .registry import DatasetSpec, FileSpec, fixed, register

# --------------------------------------------------------------------------- MNIST family

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

#: (file stem, md5 of the upstream .gz, size of the upstream .gz in bytes)
MNIST_FILES = {
    "train_images": ("train-images-idx3-ubyte", "f68b3c2dcbeaaa9fbdd348bbdeb94873", 9912422),
    "train_labels": ("train-labels-idx1-ubyte", "d53e105ee54ea40749a09fcbcd1e9432", 28881),
    "test_images": ("t10k-images-idx3-ubyte", "9fb629c4189551a2d022fa330f9573f3", 1648877),
    "test_labels": ("t10k-labels-idx1-ubyte", "ec29112dd5afa0611ce80d1b7f02629c", 4542),
}
FASHION_FILES = {
    "train_images": ("train-images-idx3-ubyte", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", 26421880),
    "train_labels": ("train-labels-idx1-ubyte", "25c81989df183df01b3e8a0aad5dffbe", 29515),
    "test_images": ("t10k-images-idx3-ubyte", "bef4ecab320f06d8554ea6380940ec79", 4422102),
    "test_labels": ("t10k-labels-idx1-ubyte", "bb300cfdad3c16e7a12a480ee83cd310", 5148),
}
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def _idx_files(folder: str, base: str, table: dict[str, tuple[str, str, int]]) -> list[FileSpec]:
    return [
        FileSpec(
            key,
            (f"{folder}/{stem}.gz", f"{folder}/{stem}"),
            Remote(f"{base}{stem}.gz", md5=md5, size=size),
        )
        for key, (stem, md5, size) in table.items()
    ]


def _idx_split(paths: dict[str, Path], which: str) -> tuple[np.ndarray, np.ndarray]:
    images_path, labels_path = paths[f"{which}_images"], paths[f"{which}_labels"]
    images = formats.read_idx(images_path, 0x00000803)
    labels = formats.read_idx(labels_path, 0x00000801)
    if images.dtype != np.uint8:
        raise CorruptDataError(f"{images_path}: expected uint8 pixels, found {images.dtype}")
    if len(images) != len(labels):
        raise CorruptDataError(
            f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path.name}; "
            "the files do not belong together, replace them"
        )
    formats.check_labels(labels_path, labels, 10)
    return images[:, None, :, :], labels


def _idx_loader(class_names: list[str]):
    def load(paths: dict[str, Path], _options: dict[str, Any]) -> RawData:
        return RawData(
            train=_idx_split(paths, "train"),
            test=_idx_split(paths, "test"),
            num_classes=10,
            class_names=list(class_names),
        )

    return load


register(
    DatasetSpec(
        name="mnist",
        folder="mnist",
        files=fixed(*_idx_files("mnist", MNIST_URL, MNIST_FILES)),
        load=_idx_loader([str(i) for i in range(10)]),
        summary="handwritten digits, 60k/10k, 1x28x28, IDX files (gzipped or raw)",
    )
)
register(
    DatasetSpec(
        name="fashion-mnist",
        folder="fashion-mnist",
        files=fixed(*_idx_files("fashion-mnist", FASHION_URL, FASHION_FILES)),
        load=_idx_loader(FASHION_CLASSES),
        summary="Zalando clothing images, 60k/10k, 1x28x28, IDX files (gzipped or raw)",
    )
)

# --------------------------------------------------------------------------- CIFAR-10

CIFAR10_ARCHIVE = Remote(
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
    size=170498071,
    archive=True,
)
CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
_C10 = "cifar-10-batches-py"
_C10_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _load_cifar10(paths: dict[str, Path], _options: dict[str, Any]) -> RawData:
    train = [formats.cifar_batch(paths[b]) for b in _C10_BATCHES[:5]]
    test = formats.cifar_batch(paths["test_batch"])
    x = np.concatenate([t[0] for t in train])
    y = np.concatenate([t[1] for t in train])
    for key in _C10_BATCHES[:5]:
        formats.check_labels(paths[key], train[_C10_BATCHES.index(key)][1], 10)
    formats.check_labels(paths["test_batch"], test[1], 10)
    names = CIFAR10_CLASSES
    if "meta" in paths:
        meta = formats.read_pickle(paths["meta"])
        names = [formats.text(n) for n in formats.pickle_field(paths["meta"], meta, "label_names")]
    return RawData(train=(x, y), test=(test[0], test[1]), num_classes=10, class_names=names)


register(
    DatasetSpec(
        name="cifar10",
        folder=_C10,
        files=fixed(
            *[FileSpec(b, (f"{_C10}/{b}",), CIFAR10_ARCHIVE) for b in _C10_BATCHES],
            FileSpec("meta", (f"{_C10}/batches.meta",), CIFAR10_ARCHIVE, optional=True),
        ),
        load=_load_cifar10,
        summary="10 object classes, 50k/10k, 3x32x32, python pickle batches",
    )
)
