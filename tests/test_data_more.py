"""CIFAR-100, SVHN, STL-10, MedMNIST (PathMNIST, ChestMNIST) and multi-label metrics.

Tiny files are written here in each upstream format: CIFAR-100 pickles (protocol 2, byte
keys), SVHN MATLAB files via scipy.io.savemat, STL-10 raw column-major bytes, MedMNIST .npz.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import os
import pickle
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from bioplausible.data import DATASETS, dataset_status, load_dataset, multilabel_metrics, verify
from bioplausible.data.registry import fixed, get_spec
from bioplausible.errors import ConfigError, CorruptDataError, DataError, MissingDataError

RNG = np.random.default_rng(0)

# --------------------------------------------------------------------------- CIFAR-100


def write_cifar100(root: Path, n_train: int = 10, n_test: int = 4) -> dict:
    d = root / "cifar-100-python"
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, n in (("train", n_train), ("test", n_test)):
        data = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = [(7 * i + 3) % 100 for i in range(n)]
        coarse = [f // 5 for f in fine]
        out[name] = (data, fine, coarse)
        entry = {
            b"filenames": [b"x.png"] * n, b"batch_label": name.encode(),
            b"fine_labels": fine, b"coarse_labels": coarse, b"data": data,
        }  # fmt: skip
        (d / name).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {
        b"fine_label_names": [b"f%d" % i for i in range(100)],
        b"coarse_label_names": [b"c%d" % i for i in range(20)],
    }
    (d / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return out


@pytest.mark.parametrize("mode", ["fine", "coarse"])
def test_cifar100_label_modes(tmp_path, mode):
    ref = write_cifar100(tmp_path)
    b = load_dataset("cifar100", tmp_path, normalize="none", download=False, label_mode=mode)
    assert b.train.x.shape == (10, 3, 32, 32) and b.test.x.shape == (4, 3, 32, 32)
    assert b.train.x[2, 1, 3, 4] == ref["train"][0][2][1024 + 3 * 32 + 4]  # green, row 3, col 4
    labels = ref["train"][1] if mode == "fine" else ref["train"][2]
    assert b.train.y.tolist() == labels
    assert b.info.num_classes == (100 if mode == "fine" else 20)
    assert b.info.class_names[1] == ("f1" if mode == "fine" else "c1")


def test_cifar100_rejects_bad_mode_and_malicious_meta(tmp_path):
    write_cifar100(tmp_path)
    with pytest.raises(ConfigError, match="label_mode"):
        load_dataset("cifar100", tmp_path, download=False, label_mode="medium")
    sentinel = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {sentinel}",))

    blob = pickle.dumps({b"fine_label_names": Exploit()}, protocol=2)
    (tmp_path / "cifar-100-python" / "meta").write_bytes(blob)
    with pytest.raises(CorruptDataError, match="meta"):
        load_dataset("cifar100", tmp_path, download=False)
    assert not sentinel.exists()


# --------------------------------------------------------------------------- SVHN


def write_svhn(root: Path, name: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import savemat

    (root / "svhn").mkdir(parents=True, exist_ok=True)
    x = RNG.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)  # (H, W, C, N) as upstream
    y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1)  # 1..10, 10 means digit 0
    savemat(root / "svhn" / name, {"X": x, "y": y})
    return x, y


def test_svhn_layout_and_label_ten_is_zero(tmp_path):
    pytest.importorskip("scipy")
    x, _ = write_svhn(tmp_path, "train_32x32.mat", 12)
    write_svhn(tmp_path, "test_32x32.mat", 5)
    b = load_dataset("svhn", tmp_path, normalize="none", download=False)
    assert b.train.x.shape == (12, 3, 32, 32)
    assert b.train.x[7, 2, 5, 9] == x[5, 9, 2, 7]  # X[h, w, c, n] -> x[n, c, h, w]
    assert b.train.y.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]
    with pytest.raises(MissingDataError, match="extra_32x32.mat"):
        load_dataset("svhn", tmp_path, download=False, extra=True)
    write_svhn(tmp_path, "extra_32x32.mat", 3)
    assert len(load_dataset("svhn", tmp_path, download=False, extra=True).train) == 15


def test_svhn_corrupt_file_and_missing_scipy(tmp_path, monkeypatch):
    pytest.importorskip("scipy")
    write_svhn(tmp_path, "train_32x32.mat", 4)
    write_svhn(tmp_path, "test_32x32.mat", 4)
    path = tmp_path / "svhn" / "test_32x32.mat"
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CorruptDataError, match="test_32x32.mat"):
        load_dataset("svhn", tmp_path, download=False)
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # as if scipy were not installed
    with pytest.raises(DataError, match=r"pip install 'bioplausible\[mat\]'"):
        load_dataset("svhn", tmp_path, download=False)


# --------------------------------------------------------------------------- STL-10


def write_stl10(root: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    d = root / "stl10_binary"
    d.mkdir(parents=True, exist_ok=True)
    # each image: 3 planes of 96x96, every plane stored column by column (MATLAB order)
    blob = b"".join(img[c].tobytes(order="F") for img in images for c in range(3))
    (d / f"{split}_X.bin").write_bytes(blob)
    (d / f"{split}_y.bin").write_bytes(labels.astype(np.uint8).tobytes())


def test_stl10_column_major_pixels_land_in_place(tmp_path):
    images = np.zeros((3, 3, 96, 96), dtype=np.uint8)  # (N, C, row, col)
    images[1, 2, 5, 70] = 250  # blue, row 5, column 70 of the second image
    images[0, 0, 90, 1] = 17
    write_stl10(tmp_path, "train", images, np.array([1, 10, 4]))
    write_stl10(tmp_path, "test", images[:2], np.array([2, 3]))
    b = load_dataset("stl10", tmp_path, normalize="none", download=False)
    assert b.train.x.shape == (3, 3, 96, 96)
    assert b.train.x[1, 2, 5, 70] == 250 and b.train.x[1, 2, 70, 5] == 0
    assert b.train.x[0, 0, 90, 1] == 17 and float(b.train.x.sum()) == 267
    assert b.train.y.tolist() == [0, 9, 3] and b.test.y.tolist() == [1, 2]
    assert b.info.class_names[2] == "car"


def test_stl10_truncated_and_mismatched(tmp_path):
    images = np.zeros((2, 3, 96, 96), dtype=np.uint8)
    write_stl10(tmp_path, "train", images, np.array([1, 2]))
    write_stl10(tmp_path, "test", images, np.array([1, 2, 3]))
    with pytest.raises(CorruptDataError, match="test_y.bin"):
        load_dataset("stl10", tmp_path, download=False)
    path = tmp_path / "stl10_binary" / "train_X.bin"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CorruptDataError, match="train_X.bin"):
        load_dataset("stl10", tmp_path, download=False)


# --------------------------------------------------------------------------- MedMNIST


def write_medmnist(path: Path, rgb: bool, label_shape: int, size: int = 28, n=(9, 3, 4)) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        shape = (count, size, size, 3) if rgb else (count, size, size)
        arrays[f"{split}_images"] = RNG.integers(0, 256, shape, dtype=np.uint8)
        if label_shape == 1:
            arrays[f"{split}_labels"] = (np.arange(count) % 9).reshape(count, 1).astype(np.uint8)
        else:
            arrays[f"{split}_labels"] = RNG.integers(0, 2, (count, label_shape), dtype=np.uint8)
    np.savez(path, **arrays)
    return arrays


def test_pathmnist_rgb_with_its_own_validation_split(tmp_path):
    ref = write_medmnist(tmp_path / "medmnist" / "pathmnist.npz", rgb=True, label_shape=1)
    b = load_dataset("pathmnist", tmp_path, normalize="none", download=False)
    assert b.train.x.shape == (9, 3, 28, 28) and len(b.val) == 3 and len(b.test) == 4
    assert b.train.x[4, 2, 10, 20] == ref["train_images"][4, 10, 20, 2]  # HWC -> CHW
    assert b.val.y.tolist() == [0, 1, 2] and b.train.y.dtype == torch.int64
    assert b.info.num_classes == 9 and b.info.task == "multiclass"
    with pytest.raises(ConfigError, match="own validation"):
        load_dataset("pathmnist", tmp_path, download=False, val_size=2)


def test_medmnist_sizes(tmp_path):
    with pytest.raises(MissingDataError, match="pathmnist_64.npz"):
        load_dataset("pathmnist", tmp_path, download=False, size=64)
    write_medmnist(tmp_path / "pathmnist_64.npz", rgb=True, label_shape=1, size=64)  # in root
    assert load_dataset("pathmnist", tmp_path, download=False, size=64).info.input_shape == (
        3, 64, 64,
    )  # fmt: skip
    with pytest.raises(ConfigError, match="size"):
        load_dataset("pathmnist", tmp_path, download=False, size=30)
    write_medmnist(tmp_path / "pathmnist_128.npz", rgb=True, label_shape=1, size=64)
    with pytest.raises(CorruptDataError, match="128x128"):
        load_dataset("pathmnist", tmp_path, download=False, size=128)


def test_chestmnist_is_multilabel(tmp_path):
    ref = write_medmnist(tmp_path / "medmnist" / "chestmnist.npz", rgb=False, label_shape=14)
    b = load_dataset("chestmnist", tmp_path, download=False, one_hot=True, flatten=True)
    assert b.info.task == "multilabel" and b.info.num_classes == 14
    assert b.train.x.shape == (9, 784) and b.train.y.shape == (9, 14)
    assert b.train.y.dtype == torch.float32
    assert b.test.y.tolist() == ref["test_labels"].astype(float).tolist()
    assert verify("chestmnist", tmp_path) == []


@pytest.mark.parametrize("damage", ["truncate", "pickled", "missing-key"])
def test_corrupt_npz_is_named(tmp_path, damage):
    path = tmp_path / "medmnist" / "pathmnist.npz"
    arrays = write_medmnist(path, rgb=True, label_shape=1)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:2000])
    elif damage == "pickled":
        arrays["train_labels"] = np.array([object()] * 9, dtype=object)
        np.savez(path, **arrays)
    else:
        del arrays["val_images"]
        np.savez(path, **arrays)
    with pytest.raises(CorruptDataError, match="pathmnist.npz"):
        load_dataset("pathmnist", tmp_path, download=False)


# --------------------------------------------------------------------------- archives, specs


def tar_gz(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, blob in members:
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


@pytest.mark.parametrize("name", ["cifar100", "stl10"])
def test_archive_with_dotdot_member_is_refused(tmp_path, monkeypatch, name):
    spec = get_spec(name)
    remote = spec.files({})[0].remote
    blob = tar_gz([(f"{spec.folder}/ok.bin", b"1"), ("../outside.txt", b"evil")])
    new = dataclasses.replace(remote, md5=hashlib.md5(blob).hexdigest())
    files = [dataclasses.replace(f, remote=new) for f in spec.files(dict(spec.options))]
    monkeypatch.setitem(DATASETS._items, name, dataclasses.replace(spec, files=fixed(*files)))
    root = tmp_path / "root"
    root.mkdir()
    (root / remote.filename).write_bytes(blob)  # hand-placed archive: no network needed
    with pytest.raises(CorruptDataError, match=r"outside\.txt.*\.\."):
        load_dataset(name, root, download=False)
    assert not (tmp_path / "outside.txt").exists()
    assert not (root / spec.folder).exists()


def test_new_specs_name_canonical_sources(tmp_path):
    expected = {
        "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "svhn": "http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
        "stl10": "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
        "pathmnist": "https://zenodo.org/records/10519652/files/pathmnist.npz?download=1",
        "chestmnist": "https://zenodo.org/records/10519652/files/chestmnist.npz?download=1",
    }
    for name, url in expected.items():
        remote = get_spec(name).files(dict(get_spec(name).options))[0].remote
        assert remote.url == url and len(remote.md5) == 32
    assert dataset_status("svhn", tmp_path, extra=True)["download_bytes"] == (
        182040794 + 64275384 + 1329278602
    )


# --------------------------------------------------------------------------- metrics


def test_multilabel_metrics_hand_computed():
    logits = torch.tensor([[0.8, 0.5, 1.0], [-0.2, 0.5, 0.0], [0.3, -0.5, 1.0], [-1.0, 2.0, -1.0]])
    targets = torch.tensor([[1, 1, 0], [0, 0, 0], [0, 0, 0], [1, 1, 0]])
    m = multilabel_metrics(logits, targets)
    # per-label accuracy at logit > 0 (probability > 0.5): 2/4, 3/4, 2/4 (logit 0 -> negative)
    assert m["accuracy"] == pytest.approx((0.5 + 0.75 + 0.5) / 3)
    # AUC label 0: pairs (0.8>-0.2, 0.8>0.3, -1<-0.2, -1<0.3) -> 2/4; label 1: positives
    # {0.5, 2.0}, negatives {0.5, -0.5}: tie counts 1/2 -> 3.5/4; label 2 has no positive.
    assert m["auc"] == pytest.approx((0.5 + 0.875) / 2)
    perfect = multilabel_metrics(torch.tensor([[3.0], [-3.0]]), torch.tensor([[1.0], [0.0]]))
    assert perfect == {"accuracy": 1.0, "auc": 1.0}
    assert math.isnan(multilabel_metrics(torch.zeros(3, 2), torch.zeros(3, 2))["auc"])
