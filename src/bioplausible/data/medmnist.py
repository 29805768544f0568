"""MedMNIST v3 datasets (PathMNIST, ChestMNIST) from the published ``.npz`` files.

Files: ``medmnist/<name>.npz`` for 28x28 or ``medmnist/<name>_<size>.npz`` for ``size=64``,
``128`` or ``224`` (also accepted directly in the root). Each holds uint8 arrays
``{train,val,test}_images`` and ``{train,val,test}_labels``; the file's own validation split
becomes ``bundle.val``. Sources and md5 sums: Zenodo record 10519652, as listed in
``medmnist/info.py`` of MedMNIST 3.0.2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, CorruptDataError
from . import formats
from .core import RawData
from .download import Remote
from .registry import DatasetSpec, FileSpec, register

MEDMNIST_URL = "https://zenodo.org/records/10519652/files/"
#: md5 of the published .npz per image size (MedMNIST 3.0.2, medmnist/info.py)
MEDMNIST_MD5 = {
    "pathmnist": {
        28: "a8b06965200029087d5bd730944a56c1",
        64: "55aa9c1e0525abe5a6b9d8343a507616",
        128: "ac42d08fb904d92c244187169d1fd1d9",
        224: "2c51a510bcdc9cf8ddb2af93af1eadec",
    },
    "chestmnist": {
        28: "02c8a6516a18b556561a56cbdd36c4a8",
        64: "9de6cd0b934ebb5b7426cfba5efbae16",
        128: "db107e5590b27930b62dbaf558aebee3",
        224: "45bd33e6f06c3e8cdb481c74a89152aa",
    },
}
PATHMNIST_CLASSES = [
    "adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
    "normal colon mucosa", "cancer-associated stroma", "colorectal adenocarcinoma epithelium",
]  # fmt: skip
CHESTMNIST_LABELS = [
    "atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia",
    "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural", "hernia",
]  # fmt: skip


def _medmnist(name: str, class_names: list[str], multilabel: bool, summary: str) -> DatasetSpec:
    def filename(size: int) -> str:
        return f"{name}.npz" if size == 28 else f"{name}_{size}.npz"

    def files(options: dict[str, Any]) -> list[FileSpec]:
        fname, size = filename(options["size"]), options["size"]
        remote = Remote(f"{MEDMNIST_URL}{fname}?download=1", md5=MEDMNIST_MD5[name][size])
        return [FileSpec("npz", (f"medmnist/{fname}", fname), remote)]

    def load(paths: dict[str, Path], options: dict[str, Any]) -> RawData:
        path, k = paths["npz"], len(class_names)
        arrays = formats.read_medmnist(path, options["size"])
        splits = {}
        for split in ("train", "val", "test"):
            x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
            if multilabel:
                if y.shape[1] != k or not np.isin(y, (0, 1)).all():
                    raise CorruptDataError(f"{path}: {split}_labels should be 0/1 (N, {k})")
            else:
                if y.shape[1] != 1:
                    raise CorruptDataError(f"{path}: {split}_labels should be (N, 1)")
                y = formats.check_labels(path, y[:, 0].astype(np.int64), k)
            splits[split] = (x, y)
        return RawData(
            train=splits["train"], val=splits["val"], test=splits["test"], num_classes=k,
            task="multilabel" if multilabel else "multiclass", class_names=list(class_names),
        )  # fmt: skip

    def check(options: dict[str, Any]) -> None:
        if options["size"] not in MEDMNIST_MD5[name]:
            raise ConfigError(
                f"{name} size must be one of {sorted(MEDMNIST_MD5[name])}, got {options['size']!r}"
            )

    return DatasetSpec(
        name=name, folder="medmnist", files=files, load=load, options={"size": 28},
        check_options=check, summary=summary,
    )  # fmt: skip


register(
    _medmnist("pathmnist", PATHMNIST_CLASSES, False,
              "MedMNIST colon pathology, 9 classes, 90k/10k/7k, RGB 28x28 (size= 64/128/224)")
)  # fmt: skip
register(
    _medmnist("chestmnist", CHESTMNIST_LABELS, True,
              "MedMNIST chest X-ray, 14 binary labels, 78k/11k/22k, grey 28x28 (size= 64/128/224)")
)  # fmt: skip
