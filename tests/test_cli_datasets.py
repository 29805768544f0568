"""Every dataset of the papers through the CLI: one epoch from a synthetic file in its own
canonical format, the missing-data line without the files, and ChestMNIST's multi-label metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_data import write_cifar10, write_mnist
from test_data_more import write_cifar100, write_medmnist, write_stl10, write_svhn

from bioplausible.cli import main


def _write(name: str, root):
    if name in ("mnist", "fashion-mnist"):
        write_mnist(root, folder=name, n=(30, 12))
    elif name == "cifar10":
        write_cifar10(root, n=6)
    elif name == "cifar100":
        write_cifar100(root, n_train=30, n_test=12)
    elif name == "svhn":
        write_svhn(root, "train_32x32.mat", 30)
        write_svhn(root, "test_32x32.mat", 12)
    elif name == "stl10":
        rng = np.random.default_rng(0)
        for split, n in (("train", 20), ("test", 8)):
            write_stl10(root, split, rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8),
                        (np.arange(n) % 10 + 1))
    elif name == "pathmnist":
        write_medmnist(root / "medmnist" / "pathmnist.npz", rgb=True, label_shape=1, n=(30, 6, 12))
    elif name == "chestmnist":
        write_medmnist(root / "medmnist" / "chestmnist.npz", rgb=False, label_shape=14, n=(30, 6, 12))


@pytest.mark.parametrize("name,model", [
    ("mnist", "mlp:784-16-10"), ("fashion-mnist", "mlp:784-16-10"), ("cifar10", "lenet"),
    ("cifar100", "mlp:3072-16-100"), ("svhn", "mlp:3072-16-10"), ("stl10", "mlp:27648-8-10"),
    ("pathmnist", "mlp:2352-16-9"), ("chestmnist", "mlp:784-16-14"),
])
def test_one_epoch_from_each_canonical_format(tmp_path, monkeypatch, capsys, name, model):
    root = tmp_path / "data"
    _write(name, root)
    monkeypatch.setenv("BIOPLAUSIBLE_DATA", str(root))
    out = tmp_path / "run"
    code = main(["train", "--rule", "bp", "--dataset", name, "--model", model, "--epochs", "1",
                 "--batch-size", "8", "--quiet", "--out", str(out), "--set", "dataset.download=false"])
    assert code == 0, capsys.readouterr().err
    final = json.loads((out / "summary.json").read_text())["final"]
    assert 0.0 <= final["test_accuracy"] <= 100.0
    if name == "chestmnist":
        cfg = (out / "config.yaml").read_text()
        assert "loss: auto" in cfg
        assert 0.0 <= final["test_auc"] <= 1.0  # AUC beside the per-label accuracy
        assert "val_accuracy" in final           # MedMNIST's own validation split


def test_chestmnist_loss_is_the_multilabel_one(tmp_path, monkeypatch, capsys):
    from bioplausible.data import load_dataset
    from bioplausible.engine.task import resolve_loss

    root = tmp_path / "data"
    _write("chestmnist", root)
    data = load_dataset("chestmnist", root, download=False)
    assert data.info.task == "multilabel" and data.train.y.shape[1] == 14
    assert resolve_loss("auto", data.info.task).name == "bce"
    monkeypatch.setenv("BIOPLAUSIBLE_DATA", str(root))
    code = main(["train", "--rule", "bp", "--dataset", "chestmnist", "--model", "mlp:784-16-14",
                 "--loss", "cross_entropy", "--quiet", "--out", str(tmp_path / "r")])
    assert code == 2 and "multi-label" in capsys.readouterr().err


def test_missing_svhn_gives_the_missing_data_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BIOPLAUSIBLE_DATA", str(tmp_path / "empty"))
    out = tmp_path / "run"
    code = main(["train", "--rule", "bp", "--dataset", "svhn", "--model", "mlp:3072-16-10",
                 "--quiet", "--out", str(out), "--set", "dataset.download=false"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train_32x32.mat" in err
    assert not out.exists()


def test_data_list_names_all_eight(tmp_path, monkeypatch, capsys):
    root = tmp_path / "data"
    _write("mnist", root)
    assert main(["data", "list", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    for name in ("mnist", "fashion-mnist", "cifar10", "cifar100", "svhn", "stl10", "pathmnist", "chestmnist"):
        assert name in out
    mnist_line = next(ln for ln in out.splitlines() if ln.startswith("mnist "))
    assert "present" in mnist_line
    assert "missing" in next(ln for ln in out.splitlines() if ln.startswith("svhn"))
