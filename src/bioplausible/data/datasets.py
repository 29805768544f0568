"""Built-in dataset specs: file layouts, canonical sources and checksums, and loaders.

Layout under the data root (see :func:`bioplausible.data.resolve_root`):

=============  ==============================================================================
dataset        files
=============  ==============================================================================
mnist          ``mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` (IDX)
fashion-mnist  ``fashion-mnist/`` with the same four IDX names
cifar10        ``cifar-10-batches-py/data_batch_1..5``, ``test_batch`` [, ``batches.meta``]
cifar100       ``cifar-100-python/train``, ``test`` [, ``meta``]; ``label_mode="fine"|"coarse"``
svhn           ``svhn/train_32x32.mat``, ``test_32x32.mat`` [, ``extra_32x32.mat`` if
               ``extra=True``: appended to the training split]
stl10          ``stl10_binary/{train,test}_{X,y}.bin`` [, ``class_names.txt``]
pathmnist      ``medmnist/pathmnist.npz`` (or ``pathmnist.npz`` in the root); ``size=64`` etc.
               reads ``pathmnist_64.npz``; the file's own validation split becomes ``val``
chestmnist     as pathmnist; 14 binary labels -> float (N, 14) targets, task "multilabel"
=============  ==============================================================================

Checksums are the md5 sums published for the upstream files (torchvision's dataset sources
for MNIST, Fashion-MNIST, CIFAR, SVHN and STL-10; ``medmnist/info.py`` of MedMNIST 3.0.2 for
the Zenodo record 10519652). They are checked on download only: files placed by hand are
accepted without a checksum (they are still parsed and validated), because faithful
re-creations of a dataset are often not byte-identical to the upstream archives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, CorruptDataError
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

# --------------------------------------------------------------------------- CIFAR-100

CIFAR100_ARCHIVE = Remote(
    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
    size=169001437,
    archive=True,
)
_C100 = "cifar-100-python"


def _load_cifar100(paths: dict[str, Path], options: dict[str, Any]) -> RawData:
    mode = options["label_mode"]
    k = 100 if mode == "fine" else 20
    x, y = formats.cifar_batch(paths["train"], (f"{mode}_labels",))
    xt, yt = formats.cifar_batch(paths["test"], (f"{mode}_labels",))
    formats.check_labels(paths["train"], y, k)
    formats.check_labels(paths["test"], yt, k)
    names = None
    if "meta" in paths:
        meta = formats.read_pickle(paths["meta"])
        raw_names = formats.pickle_field(paths["meta"], meta, f"{mode}_label_names")
        names = [formats.text(n) for n in raw_names]
    return RawData(train=(x, y), test=(xt, yt), num_classes=k, class_names=names)


def _check_label_mode(options: dict[str, Any]) -> None:
    if options["label_mode"] not in ("fine", "coarse"):
        raise ConfigError(
            f"cifar100 label_mode must be 'fine' (100 classes) or 'coarse' (20 superclasses), "
            f"got {options['label_mode']!r}"
        )


register(
    DatasetSpec(
        name="cifar100",
        folder=_C100,
        files=fixed(
            FileSpec("train", (f"{_C100}/train",), CIFAR100_ARCHIVE),
            FileSpec("test", (f"{_C100}/test",), CIFAR100_ARCHIVE),
            FileSpec("meta", (f"{_C100}/meta",), CIFAR100_ARCHIVE, optional=True),
        ),
        load=_load_cifar100,
        options={"label_mode": "fine"},
        check_options=_check_label_mode,
        summary="100 object classes (20 superclasses), 50k/10k, 3x32x32, python pickles",
    )
)

# --------------------------------------------------------------------------- SVHN

SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
SVHN_FILES = {
    "train": ("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373", 182040794),
    "test": ("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3", 64275384),
    "extra": ("extra_32x32.mat", "a93ce644f1a588dc4d68dda5feec44a7", 1329278602),
}


def _svhn_files(options: dict[str, Any]) -> list[FileSpec]:
    keys = ["train", "test"] + (["extra"] if options["extra"] else [])
    return [
        FileSpec(
            k,
            (f"svhn/{SVHN_FILES[k][0]}",),
            Remote(SVHN_URL + SVHN_FILES[k][0], md5=SVHN_FILES[k][1], size=SVHN_FILES[k][2]),
        )
        for k in keys
    ]


def _load_svhn(paths: dict[str, Path], options: dict[str, Any]) -> RawData:
    x, y = formats.read_svhn_mat(paths["train"])
    if options["extra"]:
        xe, ye = formats.read_svhn_mat(paths["extra"])
        x, y = np.concatenate([x, xe]), np.concatenate([y, ye])
    test = formats.read_svhn_mat(paths["test"])
    return RawData(train=(x, y), test=test, num_classes=10, class_names=[str(i) for i in range(10)])


def _check_extra(options: dict[str, Any]) -> None:
    if not isinstance(options["extra"], bool):
        raise ConfigError(f"svhn extra must be true or false, got {options['extra']!r}")


register(
    DatasetSpec(
        name="svhn",
        folder="svhn",
        files=_svhn_files,
        load=_load_svhn,
        options={"extra": False},
        check_options=_check_extra,
        summary="street-view house-number digits, 73k/26k (+531k extra), 3x32x32, .mat files",
    )
)

# --------------------------------------------------------------------------- STL-10

STL10_ARCHIVE = Remote(
    "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
    md5="91f7769df0f17e558f3565bffb0c7dfb",
    size=2640397119,
    archive=True,
)
STL10_CLASSES = [
    "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck",
]  # fmt: skip
_STL = "stl10_binary"


def _load_stl10(paths: dict[str, Path], _options: dict[str, Any]) -> RawData:
    names = STL10_CLASSES
    if "class_names" in paths:
        lines = paths["class_names"].read_text(errors="replace").split()
        names = lines if len(lines) == 10 else names
    return RawData(
        train=formats.read_stl10(paths["train_X"], paths["train_y"]),
        test=formats.read_stl10(paths["test_X"], paths["test_y"]),
        num_classes=10,
        class_names=list(names),
    )


register(
    DatasetSpec(
        name="stl10",
        folder=_STL,
        files=fixed(
            *[
                FileSpec(f"{s}_{k}", (f"{_STL}/{s}_{k}.bin",), STL10_ARCHIVE)
                for s in ("train", "test")
                for k in ("X", "y")
            ],
            FileSpec("class_names", (f"{_STL}/class_names.txt",), STL10_ARCHIVE, optional=True),
        ),
        load=_load_stl10,
        summary="10 object classes, 5k/8k labelled, 3x96x96, raw binaries (column-major)",
    )
)
